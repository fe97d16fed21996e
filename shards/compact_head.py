"""The compact output head: the output table as 8-bit MatMulNBits blocks with int8
activations (~3.5x fewer bytes read per token than float32), made exact where it matters.

Owns the correction that makes it so. onnxruntime quantizes each block of 32 activations
with scale amax/127, rounding to nearest, so an element is off by at most amax/254; where
the blocks were re-quantized from another GGUF type (Q6_K, Q4_K …) each weight is also off
by at most e[row, block] (kept at conversion). So a logit is off by at most
sum over blocks of (amax_b / 254) * |w8_b|_1 + |x_b|_1 * e_b. Every token whose compact logit
could, within that bound, reach the largest lower bound is recomputed exactly in float32
from the GGUF's own rows (decoded on demand; typically 4 to 20 of them). So the returned
argmax is the float32 head's argmax, and every near-top logit is the float32 value;
tokens far below the top keep their compact logit (off by < the bound).
Pure computation on a session and row decoder it is given; never reads files.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort

BLOCK = 32               # MatMulNBits block length: weights and the int8 activations alike
BOUND_SLACK = 1.001      # the int8 dot products are exact; the float scaling rounds ~1e-7
ROUNDING_FLOOR = 1e-4    # float32 summation differences between two exact computations


class CompactHead:
    """Logits (batch, seq, vocab) from a compact head session whose second output is the
    normalized hidden state it multiplies; `bounds` (2, vocab, blocks): the blocks' L1 norms
    and their largest weight error; `rows(ids)` the exact float32 rows (n, hidden)."""

    def __init__(self, session: ort.InferenceSession, bounds: np.ndarray,
                 rows: Callable[[np.ndarray], np.ndarray]) -> None:
        self.session, self.rows = session, rows
        self.block_norms = np.ascontiguousarray(bounds[0])                 # (vocab, blocks)
        self.weight_error = np.ascontiguousarray(bounds[1])                # (vocab, blocks)
        self.exact_blocks = not self.weight_error.any()
        self.widest_block_norms = self.block_norms.max(axis=0)            # (blocks,): no row's is larger
        self.widest_weight_error = self.weight_error.max(axis=0)
        self.recomputed = 0    # tokens recomputed exactly, all calls (for benchmarks)

    @staticmethod
    def half_steps(normed: np.ndarray) -> np.ndarray:
        """(rows, hidden) -> (rows, blocks): the largest int8 rounding error of an element."""
        return np.abs(normed.reshape(len(normed), -1, BLOCK)).max(-1) / 254.0

    @staticmethod
    def block_sums(normed: np.ndarray) -> np.ndarray:
        """(rows, hidden) -> (rows, blocks): |x_b|_1, what a weight error is multiplied by."""
        return np.abs(normed.reshape(len(normed), -1, BLOCK)).sum(-1)

    def error_bound(self, normed: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """(rows, vocab) bound on |compact - float32| for (rows, hidden) activations."""
        scale = np.abs(logits).max(axis=1, keepdims=True)                                 # (rows, 1)
        bound = self.half_steps(normed) @ self.block_norms.T + self.block_sums(normed) @ self.weight_error.T
        return bound * BOUND_SLACK + ROUNDING_FLOOR * (1.0 + scale)

    def __call__(self, hidden: np.ndarray) -> np.ndarray:
        logits, normed = self.session.run(None, {"hidden": hidden})     # (batch, seq, vocab), (batch, seq, hidden)
        rows = logits.reshape(-1, logits.shape[-1])
        activations = normed.reshape(-1, normed.shape[-1])
        sums = self.block_sums(activations)
        for row, steps in enumerate(self.half_steps(activations)):
            values = rows[row]                                            # (vocab,), a view: corrected in place
            top = float(values.max())
            slack = ROUNDING_FLOOR * (1.0 + float(np.abs(values).max()))
            widest = (float(steps @ self.widest_block_norms) + float(sums[row] @ self.widest_weight_error)) \
                * BOUND_SLACK + slack                                     # >= every token's bound
            # A token more than 2 * widest below the top cannot be the top: its true logit is
            # below top - widest, which the top token's true logit is not.
            near = np.flatnonzero(values >= top - 2.0 * widest)
            bound = self.block_norms[near] @ steps
            if not self.exact_blocks:
                bound = bound + self.weight_error[near] @ sums[row]
            bound = bound * BOUND_SLACK + slack
            floor = float((values[near] - bound).max())                  # the top logit is at least this
            chosen = near[values[near] + bound >= floor]
            values[chosen] = self.rows(chosen) @ activations[row]
            self.recomputed += len(chosen)
        return logits
