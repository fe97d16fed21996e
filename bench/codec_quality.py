"""Wire codec benchmark: bytes per hop per token and perplexity with the codec applied at
every stage boundary, on real hidden states of the default model.

For N nodes the hidden state is coded N + 1 times per token: coordinator -> node 1
(embedding output), between nodes (relayed untouched by the coordinator), and node N ->
coordinator (for the head). Writes bench/results/codec_quality.json and prints a table.

Usage: .venv/bin/python -m bench.codec_quality [--tokens 2048] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from bench.caches import shard_cache
from coordinator.cli import DEFAULT_TEXT
from coordinator.swarm.planner import even_stages
from protocol.activation_codec import (
    LOSSLESS,
    CodecSettings,
    Route,
    StreamCodecState,
    decode_activation,
    encode_activation,
)
from protocol.frames import HEADER_SIZE, Encoding, FrameKind
from shards.convert import convert
from shards.executor import ReferenceExecutor
from shards.gguf_model import default_model_path
from shards.perplexity import perplexity

RESULTS = Path(__file__).resolve().parent / "results"
MODES = {
    "float32": LOSSLESS,
    "float16": CodecSettings(encoding=Encoding.FLOAT16, block=0, run_length=False),
    "int8-b32": CodecSettings(block=32, run_length=False),
    "int8-b64": CodecSettings(block=64, run_length=False),
    "int8-b32+rle (default)": CodecSettings(block=32, run_length=True),
    "int8-b64+rle": CodecSettings(block=64, run_length=True),
    "int8-b32+delta+rle": CodecSettings(block=32, delta=True, run_length=True),
    "int8-b64+delta+rle": CodecSettings(block=64, delta=True, run_length=True),
}


class BoundaryCodec:
    """Encodes and decodes hidden states at one boundary, as one link would (per-stream state)."""

    def __init__(self, settings: CodecSettings) -> None:
        self.settings = settings
        self.encoder, self.decoder = StreamCodecState(), StreamCodecState()
        self.frames = 0
        self.bytes = {"header": 0, "scales": 0, "codes": 0, "total": 0}
        self.rows = 0

    def __call__(self, hidden: np.ndarray, position: int, one_row_frames: bool) -> np.ndarray:
        rows = hidden[0]
        chunks = [rows[i:i + 1] for i in range(len(rows))] if one_row_frames else [rows]
        out = []
        for offset, chunk in enumerate(chunks):
            frame = encode_activation(chunk, Route(FrameKind.FORWARD, 1, position + offset), self.settings, self.encoder)
            _, decoded = decode_activation(frame, self.decoder)
            out.append(decoded)
            self._account(frame, chunk.shape)
        return np.concatenate(out)[None]

    def _account(self, frame: bytes, shape: tuple[int, int]) -> None:
        rows, columns = shape
        scales = 0
        if self.settings.encoding == Encoding.INT8_BLOCK:
            scales = rows * -(-columns // self.settings.block) * 2
        self.bytes["header"] += HEADER_SIZE
        self.bytes["scales"] += scales
        self.bytes["codes"] += len(frame) - HEADER_SIZE - scales
        self.bytes["total"] += len(frame)
        self.frames += 1
        self.rows += rows


def coded_logits(executor: ReferenceExecutor, ids: list[int], cuts: list[int], settings: CodecSettings,
                 chunk: int) -> tuple[np.ndarray, list[BoundaryCodec]]:
    """Logits with the codec applied before layer 0, at every cut, and after the last layer."""
    layers = executor.manifest.model.layers
    boundaries = [0, *cuts, layers]
    codecs = [BoundaryCodec(settings) for _ in boundaries]
    stream = 10_000 + len(cuts)
    rows = []
    try:
        for start in range(0, len(ids), chunk):
            piece = ids[start:start + chunk]
            positions = np.arange(start, start + len(piece), dtype=np.int64)[None]
            hidden = executor.embed(piece)
            # Prompt chunks travel as one frame; the decode-style one-row framing only changes
            # header bytes, which the byte table measures separately.
            for index, (first, last) in enumerate(itertools.pairwise(boundaries)):
                hidden = codecs[index](hidden, start, one_row_frames=False)
                hidden = executor.stack.forward(stream, hidden, positions, layers=range(first, last))
            hidden = codecs[-1](hidden, start, one_row_frames=False)
            rows.append(executor.logits(hidden)[0])
    finally:
        executor.stack.release(stream)
    return np.concatenate(rows), codecs


def hop_bytes(states: dict[int, np.ndarray], settings: CodecSettings) -> dict[str, float]:
    """Mean bytes per one-token frame over the real hidden states at the given boundaries."""
    totals = {"header": 0, "scales": 0, "codes": 0, "total": 0}
    frames = 0
    for rows in states.values():
        codec = BoundaryCodec(settings)
        codec(rows[None], 0, one_row_frames=True)
        for key in totals:
            totals[key] += codec.bytes[key]
        frames += codec.frames
    return {key: value / frames for key, value in totals.items()}


def boundary_states(executor: ReferenceExecutor, ids: list[int], boundaries: list[int]) -> dict[int, np.ndarray]:
    """Real hidden states (tokens, hidden) entering each boundary layer (30 = the head's input)."""
    states, stream = {}, 99_999
    positions = np.arange(len(ids), dtype=np.int64)[None]
    hidden = executor.embed(ids)
    try:
        for layer in range(executor.manifest.model.layers + 1):
            if layer in boundaries:
                states[layer] = hidden[0].copy()
            if layer < executor.manifest.model.layers:
                hidden = executor.stack.forward(stream, hidden, positions, layers=range(layer, layer + 1))
    finally:
        executor.stack.release(stream)
    return states


def time_codec(settings: CodecSettings, row: np.ndarray, repeats: int = 300) -> float:
    encoder, decoder = StreamCodecState(), StreamCodecState()
    started = time.perf_counter()
    for position in range(repeats):
        frame = encode_activation(row, Route(FrameKind.FORWARD, 1, position), settings, encoder)
        decode_activation(frame, decoder)
    return (time.perf_counter() - started) / repeats * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--nodes", default="2,3,5")
    parser.add_argument("--quick", action="store_true", help="256 tokens, two modes (a smoke run)")
    args = parser.parse_args()
    tokens = 256 if args.quick else args.tokens
    modes = {name: MODES[name] for name in ('float32', 'int8-b32+rle (default)')} if args.quick else MODES
    directory, _ = convert(default_model_path(), progress=False, cache_root=shard_cache())
    executor = ReferenceExecutor(directory, threads=2)
    ids = executor.text.encode(DEFAULT_TEXT.read_text())[:tokens]
    node_counts = [int(n) for n in args.nodes.split(",")]
    layers = executor.manifest.model.layers

    baseline = perplexity(ids, executor.prompt_logits).perplexity
    all_cuts = sorted({stage.layer_start for n in node_counts for stage in even_stages(layers, n)[1:]})
    states = boundary_states(executor, ids[:512], [0, *all_cuts, layers])
    fp32_frame = HEADER_SIZE + 4 * executor.manifest.model.hidden
    report: dict = {"model": executor.manifest.model.name, "tokens": len(ids), "baseline_perplexity": baseline,
                    "float32_frame_bytes": fp32_frame, "boundaries_measured": sorted(states), "modes": {}}
    print(f"baseline perplexity (no codec, {len(ids)} tokens): {baseline:.3f}")
    print(f"{'mode':24} {'bytes/hop':>9} {'vs fp32':>8} {'header':>6} {'scales':>6} {'codes':>6} {'µs enc+dec':>10}  "
          + "  ".join(f"ppl {n}n (Δ%)" for n in node_counts))
    for name, settings in modes.items():
        sizes = hop_bytes(states, settings)
        micros = time_codec(settings, states[all_cuts[0]][100:101])
        entry = {"settings": {"encoding": settings.encoding.name, "block": settings.block, "delta": settings.delta,
                              "run_length": settings.run_length},
                 "bytes_per_hop": sizes, "ratio_to_float32": sizes["total"] / fp32_frame,
                 "python_encode_decode_us": micros, "perplexity": {}}
        for nodes in node_counts:
            cuts = [stage.layer_start for stage in even_stages(layers, nodes)[1:]]
            logits, _ = coded_logits(executor, ids, cuts, settings, args.chunk)
            value = perplexity(ids, lambda _ids, logits=logits: logits).perplexity
            entry["perplexity"][str(nodes)] = {"value": value, "change_percent": (value / baseline - 1) * 100}
        report["modes"][name] = entry
        print(f"{name:24} {sizes['total']:9.1f} {entry['ratio_to_float32']:8.3f} {sizes['header']:6.0f} "
              f"{sizes['scales']:6.1f} {sizes['codes']:6.1f} {micros:10.1f}  "
              + "  ".join(f"{entry['perplexity'][str(n)]['value']:.3f} ({entry['perplexity'][str(n)]['change_percent']:+.3f})"
                          for n in node_counts), flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("codec_quality_quick.json" if args.quick else "codec_quality.json")
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
