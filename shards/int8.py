"""int8 compute: how a float32 matrix becomes int8 codes and scales, the same in every runner.

Owns the rule (group size, scale, rounding) that the graph builders, the reference
executor and the browser tab (worker_web/int8_weights.js, pinned by shards/vectors/int8.json)
all apply to the GGUF's decoded weights. Pure numpy; no I/O.
"""

from __future__ import annotations

import numpy as np

COMPUTE_FORMATS = ("float32", "int8")
INT8_GROUPS = (64, 32)        # inputs per activation/weight scale, the first that divides a matrix's inputs
INT8_CODES = "#int8"          # suffixes of a matrix's external location for its int8 codes and scales
INT8_SCALES = "#scales"


def int8_group(inputs: int) -> int | None:
    """The group size an int8 matrix with this many inputs uses (None: it stays float32)."""
    return next((group for group in INT8_GROUPS if inputs % group == 0), None)


def quantize_int8(matrix: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """(in, out) float32 -> codes (blocks, group, out) int8 and scales (blocks, 1, out) float32.

    Per (group of inputs, output column): scale = float32(amax / 127) and code =
    round-half-away-from-zero(w / scale), both computed in float64 from the float32 values,
    so JavaScript (worker_web/int8_weights.js) gets the same bytes; an all-zero group has
    scale 0 and codes 0. Pinned by shards/vectors/int8.json.
    """
    inputs, outputs = matrix.shape
    blocks = np.asarray(matrix, dtype=np.float32).reshape(inputs // group, group, outputs)
    largest = np.abs(blocks).max(axis=1, keepdims=True).astype(np.float64)          # (blocks, 1, out)
    scales = (largest / 127.0).astype(np.float32)
    wide = scales.astype(np.float64)
    steps = np.divide(blocks.astype(np.float64), wide, out=np.zeros(blocks.shape), where=wide > 0)
    codes = np.clip(np.sign(steps) * np.floor(np.abs(steps) + 0.5), -127, 127).astype(np.int8)
    return np.ascontiguousarray(codes), np.ascontiguousarray(scales)
