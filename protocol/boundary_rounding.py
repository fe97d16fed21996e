"""The rounding a stage boundary applies to the hidden state, applied at every layer boundary.

Owns the rule that makes an answer independent of where the stages are cut: a frame of
int8 (or float16) rows rounds the hidden state where it crosses from one stage to the
next, so plans that cut at different layers would compute different numbers. For a frame
with the ROUND_LAYERS flag (the `int8-stable` codec), every runner of a stage (the tab, the
fake worker, the reference executor, the verifier) rounds the hidden state after each layer
boundary *inside* its stage exactly as a frame would (the FORWARD's encoding and block,
without delta); the wire rounds at the stage's own boundaries. Each layer's output is then
rounded once, wherever the cuts fall. Measured cost on SmolLM2-135M with int8 blocks of 32:
+0.79% perplexity against +0.15% for one stage (bench/layout_rounding.py); why it is not the
default: docs/layout_independence.md. float32 frames round nothing. Pure numpy; the
arithmetic is the codec's (`quantization.py`), which JavaScript reproduces bit for bit
(`worker_web/codec.js` `roundTrip`, pinned by the golden vectors).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocol.activation_codec import reconstruct
from protocol.frames import Encoding, Flag, Header


@dataclass(frozen=True)
class BoundaryRounding:
    encoding: Encoding
    block: int = 0            # int8 block size (0 for float encodings)

    @classmethod
    def of(cls, header: Header) -> BoundaryRounding | None:
        """What the frame's stage rounds inside: its own encoding's rounding when the frame
        has ROUND_LAYERS, else nothing (None)."""
        if not header.has(Flag.ROUND_LAYERS):
            return None
        return cls(Encoding(header.encoding), header.block)

    @property
    def rounds(self) -> bool:
        return self.encoding != Encoding.FLOAT32

    def apply(self, values: np.ndarray) -> np.ndarray:
        """rows (rows, columns) float32 -> what a receiver would decode from a frame of them
        (the codec's own `reconstruct`). Raises ValueError where the codec would refuse to
        encode (values too large for float16)."""
        return reconstruct(values, self.encoding, self.block)

    def apply_batch(self, hidden: np.ndarray) -> np.ndarray:
        """hidden (1, rows, columns) -> the same shape, rounded row by row."""
        return hidden if not self.rounds else self.apply(hidden[0])[None]
