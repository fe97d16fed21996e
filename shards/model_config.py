"""The model's hyper-parameters: one frozen dataclass, read from GGUF metadata.

Owns the numbers that every graph builder and executor needs; never reads files itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp_hidden: int
    vocab: int
    context: int
    norm_eps: float
    rope_theta: float
    tied_embeddings: bool

    @property
    def kv_width(self) -> int:
        """Width of one position's K (or V) row: kv_heads * head_dim."""
        return self.kv_heads * self.head_dim

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**data)
