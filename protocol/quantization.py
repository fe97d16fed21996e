"""int8 quantization with one float16 scale per block of a row, and float16 helpers.

Owns the arithmetic that Python and JavaScript must reproduce bit for bit: every
step is IEEE float64 on float32 inputs and float16 scales, rounding half away from
zero, so both languages make the same codes. Pure numpy.

Error bound: for a block with scale s, |x - s*code| <= s/2 (plus float32 rounding of
the reconstruction), where s >= max|x| / 127 is the smallest float16 not below it.
"""

from __future__ import annotations

import numpy as np

FLOAT16_MAX = 65504.0
MAX_CODE = 127


def blocks_per_row(columns: int, block: int) -> int:
    return -(-columns // block)


def _block_view_max(values: np.ndarray, block: int) -> np.ndarray:
    """max |x| per block: values (rows, columns) -> (rows, blocks); last block may be short."""
    rows, columns = values.shape
    count = blocks_per_row(columns, block)
    padded = np.zeros((rows, count * block), dtype=np.float64)
    padded[:, :columns] = np.abs(values)
    return padded.reshape(rows, count, block).max(axis=2)


def scales_for(values: np.ndarray, block: int) -> np.ndarray:
    """float16 scales (rows, blocks): the smallest float16 >= max|x| / 127 (1.0 for an all-zero block)."""
    wanted = _block_view_max(values, block) / MAX_CODE
    if not np.isfinite(wanted).all() or wanted.max(initial=0.0) > FLOAT16_MAX:
        raise ValueError("activation values are not finite or too large for float16 scales")
    scales = wanted.astype(np.float16)
    low = scales.astype(np.float64) < wanted
    scales[low] = np.nextafter(scales[low], np.float16(np.inf))
    scales[wanted == 0] = np.float16(1.0)
    return scales


def expand(scales: np.ndarray, columns: int, block: int) -> np.ndarray:
    """Per-block scales (rows, blocks) -> per-value (rows, columns) float64."""
    return np.repeat(scales.astype(np.float64), block, axis=1)[:, :columns]


def round_half_away(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


def quantize(values: np.ndarray, scales: np.ndarray, block: int) -> np.ndarray:
    """int8 codes (rows, columns) for float64 values under the given float16 scales."""
    codes = round_half_away(values / expand(scales, values.shape[1], block))
    return np.clip(codes, -MAX_CODE, MAX_CODE).astype(np.int8)


def dequantize(codes: np.ndarray, scales: np.ndarray, block: int) -> np.ndarray:
    """float64 values (rows, columns) from codes and scales."""
    return codes.astype(np.float64) * expand(scales, codes.shape[1], block)
