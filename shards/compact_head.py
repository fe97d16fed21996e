"""The compact output head: the GGUF's Q8_0 table as MatMulNBits blocks with int8
activations (~3.5x fewer bytes read per token than float32), made exact where it matters.

Owns the correction that makes it so. onnxruntime quantizes each block of 32 activations
with scale amax/127, rounding to nearest, so an element is off by at most amax/254 and a
logit by at most sum over blocks of (amax_b / 254) * |w_b|_1 (the row's L1 norm over that
block). Every token whose compact logit could, within that bound, reach the largest lower
bound is recomputed exactly in float32 (typically 4 to 10 of them; at most a few hundred).
So the returned argmax is the float32 head's argmax, and every near-top logit is the
float32 value; tokens far below the top keep their compact logit (off by < the bound).
Pure computation on a session it is given; never reads files.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

BLOCK = 32               # MatMulNBits block length: weights and the int8 activations alike
BOUND_SLACK = 1.001      # the int8 dot products are exact; the float scaling rounds ~1e-7
ROUNDING_FLOOR = 1e-4    # float32 summation differences between two exact computations


class CompactHead:
    """Logits (batch, seq, vocab) from a compact head session whose second output is the
    normalized hidden state it multiplies, and the float32 table (vocab, hidden)."""

    def __init__(self, session: ort.InferenceSession, table: np.ndarray) -> None:
        vocab, hidden = table.shape
        if hidden % BLOCK:
            raise ValueError(f"hidden size {hidden} is not a whole number of {BLOCK}-blocks")
        self.session, self.table = session, table
        # (vocab, blocks): each row's L1 norm within each block of the hidden axis
        self.block_norms = np.ascontiguousarray(np.abs(table.reshape(vocab, hidden // BLOCK, BLOCK)).sum(-1))
        self.widest_block_norms = self.block_norms.max(axis=0)     # (blocks,): no row's is larger
        self.recomputed = 0    # tokens recomputed exactly, all calls (for benchmarks)

    @staticmethod
    def half_steps(normed: np.ndarray) -> np.ndarray:
        """(rows, hidden) -> (rows, blocks): the largest int8 rounding error of an element."""
        return np.abs(normed.reshape(len(normed), -1, BLOCK)).max(-1) / 254.0

    def error_bound(self, normed: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """(rows, vocab) bound on |compact - float32| for (rows, hidden) activations."""
        scale = np.abs(logits).max(axis=1, keepdims=True)                                 # (rows, 1)
        return (self.half_steps(normed) @ self.block_norms.T) * BOUND_SLACK + ROUNDING_FLOOR * (1.0 + scale)

    def __call__(self, hidden: np.ndarray) -> np.ndarray:
        logits, normed = self.session.run(None, {"hidden": hidden})     # (batch, seq, vocab), (batch, seq, hidden)
        rows = logits.reshape(-1, logits.shape[-1])
        activations = normed.reshape(-1, normed.shape[-1])
        for row, steps in enumerate(self.half_steps(activations)):
            values = rows[row]                                            # (vocab,), a view: corrected in place
            top = float(values.max())
            slack = ROUNDING_FLOOR * (1.0 + float(np.abs(values).max()))
            widest = float(steps @ self.widest_block_norms) * BOUND_SLACK + slack   # >= every token's bound
            # A token more than 2 * widest below the top cannot be the top: its true logit is
            # below top - widest, which the top token's true logit is not.
            near = np.flatnonzero(values >= top - 2.0 * widest)
            bound = (self.block_norms[near] @ steps) * BOUND_SLACK + slack
            floor = float((values[near] - bound).max())                  # the top logit is at least this
            chosen = near[values[near] + bound >= floor]
            values[chosen] = self.table[chosen] @ activations[row]
            self.recomputed += len(chosen)
        return logits
