"""The reference executor run through the wire codec exactly as the pipeline runs it.

Owns the simulation the distributed pipeline is compared with when its codec is lossy:
the coordinator codes the embedding output for stage 0; each stage rounds the hidden state
at every layer boundary inside it as a frame would (protocol/boundary_rounding.py) and codes
its output once (relayed untouched to the next stage, decoded there); the last is decoded
for the head. With the rounding inside (the int8-stable codec) the tokens do not depend on
`cuts` (bypassed stages aside).
Same per-stream codec state, same frames (a prompt frame, then one row per frame).
"""

from __future__ import annotations

import itertools

import numpy as np

from protocol.activation_codec import (
    CodecSettings,
    Route,
    StreamCodecState,
    decode_activation,
    encode_activation,
)
from protocol.boundary_rounding import BoundaryRounding
from protocol.frames import FrameKind
from shards.executor import ReferenceExecutor
from shards.sampling import SamplingParams, make_rng, sample_token


class CodedBoundary:
    """One link of one stream: the sender's encoder state and the receiver's decoder state."""

    def __init__(self, settings: CodecSettings) -> None:
        self.settings = settings
        self.encoder, self.decoder = StreamCodecState(), StreamCodecState()
        self.frame_bytes = 0

    def __call__(self, rows: np.ndarray, position: int) -> np.ndarray:
        """rows (tokens, hidden) -> what the receiver decodes."""
        frame = encode_activation(rows, Route(FrameKind.FORWARD, 1, position), self.settings, self.encoder)
        self.frame_bytes += len(frame)
        return decode_activation(frame, self.decoder)[1]


def coded_generate(executor: ReferenceExecutor, prompt_ids: list[int], params: SamplingParams,
                   cuts: list[int], settings: CodecSettings, stop_ids: frozenset[int],
                   skips: frozenset[tuple[int, int]] = frozenset(),
                   pruned_heads: frozenset[tuple[int, int]] = frozenset(), heads_from: int = 0,
                   inner_rounding: bool | None = None) -> list[int]:
    """Greedy/sampled token ids with the codec at every stage boundary (cuts = stage starts after 0).

    skips: (position, layer) pairs that run K/V-only (one-token steps only, as the router).
    A stage whose layers are all skipped is bypassed: its output frame is its input frame,
    so no codec step is added at its output (the pipeline relays the frame untouched).
    pruned_heads: (layer, head) pairs masked on one-token steps at positions >= heads_from.
    inner_rounding: round at layer boundaries inside each stage (protocol/boundary_rounding.py);
    None follows the codec (`settings.round_layers`, the int8-stable preset), as the tabs do.
    """
    layers = executor.manifest.model.layers
    bounds = [0, *cuts, layers]
    inside = settings.round_layers if inner_rounding is None else inner_rounding
    rounding = BoundaryRounding(settings.encoding, settings.block) if inside else None
    links = [CodedBoundary(settings) for _ in bounds]
    stream = 50_000 + len(cuts)
    rng = make_rng(params)
    tokens: list[int] = []
    ids, position = list(prompt_ids), 0
    try:
        for _ in range(params.max_tokens):
            hidden = executor.embed(ids)
            positions = np.arange(position, position + len(ids), dtype=np.int64)[None]
            passthrough = False
            for index, (first, last) in enumerate(itertools.pairwise(bounds)):
                if not passthrough:
                    hidden = links[index](hidden[0], position)[None]
                skipped = frozenset(layer for layer in range(first, last)
                                    if len(ids) == 1 and (position, layer) in skips)
                masks = None
                if pruned_heads and len(ids) == 1 and position >= heads_from:
                    heads = executor.manifest.model.heads
                    masks = {layer: np.array([0.0 if (layer, head) in pruned_heads else 1.0 for head in range(heads)],
                                             dtype=np.float32) for layer in range(first, last)}
                hidden = executor.stack.forward(stream, hidden, positions, skip=skipped, layers=range(first, last),
                                                head_masks=masks, rounding=rounding)
                passthrough = len(skipped) == last - first
            if not passthrough:
                hidden = links[-1](hidden[0], position)[None]
            token = sample_token(executor.logits(hidden[:, -1:])[0, -1], params, rng)
            tokens.append(token)
            if token in stop_ids:
                break
            position += len(ids)
            ids = [token]
    finally:
        executor.stack.release(stream)
    return tokens
