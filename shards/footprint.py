"""What a tab's memory must hold for the layers it runs: pure arithmetic on the model config.

Owns the estimate the planner places layers with, so that no tab is asked for more than it
offered: per layer, the weights its two graphs hold in the compute format (the K/V-only graph
repeats K and V), the graphs' float32 extras (norms, biases, the head-statistics Gram
matrices), and a KV-cache reserve; per tab, a fixed overhead (onnxruntime-web's runtime and
the page) and the largest pass's workspace. Also the rows per prefill pass that keep that
workspace bounded (an int8 matmul's per-group partial sums are (groups, rows, outputs)).
Never reads files.
"""

from __future__ import annotations

from dataclasses import dataclass

from shards.int8 import int8_group
from shards.model_config import ModelConfig

MB = 2**20
TAB_OVERHEAD_MB = 32            # onnxruntime-web's own heap besides weights (measured ~12 MB; its code, the codec)
KV_RESERVE_TOKENS = 2048        # cache positions a tab keeps room for, over all its streams
# What the browser measured per Qwen2.5 int8 layer (bench/results/tab_memory_qwen2.5-coder-1.5b.json:
# 52.8 MB) over what its sessions hold (49.4 MB): the WASM heap's own slack.
ALLOCATION_SLACK = 1.07
WORKSPACE_ELEMENTS = 8 << 20    # float32 elements of the largest intermediate a prefill pass may make
MAX_PREFILL_ROWS = 256


@dataclass(frozen=True)
class Matrix:
    inputs: int
    outputs: int


def layer_matrices(config: ModelConfig) -> dict[str, Matrix]:
    attention = config.heads * config.head_dim
    return {"q": Matrix(config.hidden, attention), "k": Matrix(config.hidden, config.kv_width),
            "v": Matrix(config.hidden, config.kv_width), "o": Matrix(attention, config.hidden),
            "gate": Matrix(config.hidden, config.mlp_hidden), "up": Matrix(config.hidden, config.mlp_hidden),
            "down": Matrix(config.mlp_hidden, config.hidden)}


def matrix_bytes(matrix: Matrix, compute: str) -> int:
    """int8: a code per weight and a float32 scale per (group, output); float32: 4 per weight."""
    group = int8_group(matrix.inputs) if compute == "int8" else None
    if group is None:
        return 4 * matrix.inputs * matrix.outputs
    return matrix.inputs * matrix.outputs + 4 * (matrix.inputs // group) * matrix.outputs


def layer_bytes(config: ModelConfig, compute: str) -> int:
    """Bytes one layer's sessions hold in a tab (full graph + K/V-only graph), without caches."""
    matrices = layer_matrices(config)
    weights = sum(matrix_bytes(matrix, compute) for matrix in matrices.values())
    weights += matrix_bytes(matrices["k"], compute) + matrix_bytes(matrices["v"], compute)   # the K/V-only graph
    extras = 4 * (4 * config.hidden + 2 * config.heads * config.head_dim + 2 * config.kv_width
                  + config.heads * config.head_dim * config.head_dim)
    return weights + extras


def kv_bytes_per_token(config: ModelConfig) -> int:
    """One position of one layer's K and V cache (float32)."""
    return 2 * 4 * config.kv_width


def prefill_rows(config: ModelConfig, compute: str) -> int:
    """Rows per prefill pass: as many as keep the largest intermediate under WORKSPACE_ELEMENTS
    (a power of two, at most MAX_PREFILL_ROWS)."""
    widest = max(config.mlp_hidden, config.hidden, config.heads * config.head_dim)
    per_row = widest * 4      # float32 matmul outputs and the MLP's gate/up/activation
    if compute == "int8":     # an int8 matmul's per-group sums and their scaled copy live together
        per_row = max(per_row, *((matrix.inputs // (int8_group(matrix.inputs) or matrix.inputs)) * matrix.outputs * 2
                                 for matrix in layer_matrices(config).values()))
    rows = MAX_PREFILL_ROWS
    while rows > 1 and rows * per_row > WORKSPACE_ELEMENTS:
        rows //= 2
    return rows


@dataclass(frozen=True)
class TabFootprint:
    """The memory model the planner uses for one model in one compute format."""

    layer_mb: float          # weights + a KV reserve, per layer
    overhead_mb: float       # per tab: runtime + the largest pass's workspace

    @classmethod
    def of(cls, config: ModelConfig, compute: str) -> TabFootprint:
        kv = kv_bytes_per_token(config) * KV_RESERVE_TOKENS
        workspace = WORKSPACE_ELEMENTS * 4
        return cls((layer_bytes(config, compute) * ALLOCATION_SLACK + kv) / MB, TAB_OVERHEAD_MB + workspace / MB)

    def layers_within(self, offered_mb: float) -> int:
        """How many layers fit in what a tab offered (0 when not even one does)."""
        return max(0, int((offered_mb - self.overhead_mb) // self.layer_mb))

    def needed_mb(self, layers: int) -> float:
        """What a tab holding `layers` layers should offer."""
        return self.overhead_mb + layers * self.layer_mb
