"""The model's hyper-parameters: frozen dataclasses, read from GGUF metadata by a family.

Owns the numbers every graph builder and executor needs, including what each decoder
layer computes (`LayerSpec`: norms, attention kind and window, RoPE base, MLP kind), so
the builders, the reference and the workers follow one description; never reads files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class LayerSpec:
    """What one decoder layer computes (the graph builders read nothing else per layer)."""

    attention: str = "global"       # global | sliding
    window: int = 0                 # sliding: a query at position p sees slots p - window < j <= p
    rope_theta: float = 10000.0
    qk_norm: bool = False           # RMSNorm over each query and key head before RoPE (Gemma 3, Qwen3)
    sandwich_norms: bool = False    # RMSNorm on the attention and MLP outputs before each residual add
    mlp: str = "swiglu"             # swiglu: silu(gate) * up | geglu: gelu_tanh(gate) * up
    qkv_bias: bool = False          # biases added to the Q, K and V projections (Qwen2)

    def __post_init__(self) -> None:
        if self.attention not in ("global", "sliding"):
            raise ValueError(f"unknown attention kind {self.attention!r}")
        if self.mlp not in ("swiglu", "geglu"):
            raise ValueError(f"unknown MLP kind {self.mlp!r}")
        if self.attention == "sliding" and self.window < 1:
            raise ValueError("a sliding-window layer needs a window of at least 1")


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
    embedding_scale: float = 1.0    # the embedding is multiplied by this (Gemma: sqrt(hidden))
    layer_specs: tuple[LayerSpec, ...] = field(default=())   # empty: every layer the llama default

    @property
    def kv_width(self) -> int:
        """Width of one position's K (or V) row: kv_heads * head_dim."""
        return self.kv_heads * self.head_dim

    def spec(self, layer: int) -> LayerSpec:
        if self.layer_specs:
            return self.layer_specs[layer]
        return LayerSpec(rope_theta=self.rope_theta)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelConfig:
        specs = tuple(LayerSpec(**spec) for spec in data.get("layer_specs", ()))
        return replace(cls(**{key: value for key, value in data.items() if key != "layer_specs"}),
                       layer_specs=specs)
