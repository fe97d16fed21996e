"""The in-process reference executor: the whole model from a shard directory, native onnxruntime.

Owns running shard graphs in one process: `LayerStack` runs a contiguous range of
layers with a per-stream KV cache (the same unit a browser node runs), and
`ReferenceExecutor` chains embedding -> all layers -> head -> sampling. It is the
yardstick the distributed pipeline is held to. It never does network I/O.
"""

from __future__ import annotations

import copy
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from protocol.boundary_rounding import BoundaryRounding
from shards.compact_weights import LazyWeights, decode_weights, graph_with_weights
from shards.footprint import prefill_rows
from shards.manifest import Manifest, load_manifest, native_cache_dir, verify_files
from shards.model_ends import ModelEnds, session_options
from shards.sampling import SamplingParams, make_rng, sample_token

__all__ = ["CacheMismatch", "GenerationStep", "LayerReport", "LayerStack", "ReferenceExecutor", "session_options"]


@dataclass
class LayerCache:
    """One layer's K/V for one stream: (1, kv_heads, positions, head_dim) each."""

    key: np.ndarray
    value: np.ndarray


@dataclass
class LayerReport:
    """What a forward pass measured. For one-row calls, per layer that ran: r =
    ||update|| / ||input||, the output norm, and (if asked) each head's contribution norm
    over the input norm, before its mask; empty lists for multi-row or unmeasured calls."""

    hidden: np.ndarray                       # (1, seq, hidden) the output
    ratios: list[float] = field(default_factory=list)
    norms: list[float] = field(default_factory=list)
    head_ratios: list[list[float]] = field(default_factory=list)


@dataclass
class StreamState:
    caches: dict[int, LayerCache] = field(default_factory=dict)


class CacheMismatch(ValueError):
    """A frame's position is not the length of the stream's caches for its layers."""


def layer_graph_source(directory: Path, manifest: Manifest, index: int, kv_only: bool = False,
                       compute: str = "float32") -> str | bytes:
    """A layer graph as one self-contained model (path or bytes): for tests and tools that
    open it themselves; `layer_session` is the fast way to run it."""
    entry = manifest.layers[index]
    path = Path(directory) / entry.graphs(compute)[1 if kv_only else 0]
    if not entry.weights:
        return str(path)
    return graph_with_weights(path, decode_weights((Path(directory) / entry.weights).read_bytes()))


def layer_session(directory: Path, manifest: Manifest, index: int, threads: int,
                  kv_only: bool = False, compute: str = "float32") -> ort.InferenceSession:
    """A layer's session in a compute format: a float32 shard's graph as it is, or a compact
    shard's graph with its matrices decoded from the layer's weights file (float32, or int8
    codes and scales) put inside it. Making that graph costs seconds for a large layer
    (decoding its blocks, quantizing), so it is written once to `native_cache_dir` and later
    sessions read it from there (tens of ms). onnxruntime's Python binding keeps the bytes a
    session was built from, which would double an int8 layer's memory: sessions are built
    from the file instead."""
    path = native_graph_file(directory, manifest, index, kv_only, compute)
    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def native_graph_file(directory: Path, manifest: Manifest, index: int, kv_only: bool = False,
                      compute: str = "float32") -> Path:
    """A self-contained graph file of the layer (made once into `native_cache_dir`)."""
    entry = manifest.layers[index]
    graph = entry.graphs(compute)[1 if kv_only else 0]
    if not entry.weights:
        return Path(directory) / graph
    cached = native_cache_dir(directory) / graph
    if not cached.is_file():
        model = graph_with_weights(Path(directory) / graph, LazyWeights((Path(directory) / entry.weights).read_bytes()))
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f".{cached.name}.{os.getpid()}.{threading.get_ident()}.partial")
        partial.write_bytes(model)
        partial.replace(cached)   # atomic: a reader never sees half a file
    return cached


class LayerStack:
    """Layers of a model (initially [first, last); more can be loaded, others dropped),
    with one KV cache per stream id."""

    def __init__(self, directory: Path, manifest: Manifest, first: int, last: int,
                 threads: int = 1, compute: str | None = None) -> None:
        self.manifest, self.first, self.last = manifest, first, last
        self.compute = compute or manifest.default_compute
        self._directory, self._threads = directory, threads
        self.layers: dict[int, ort.InferenceSession] = {}
        self.load(range(first, last))
        self._kv_graphs: dict[int, ort.InferenceSession] = {}
        self._all_heads = np.ones(manifest.model.heads, dtype=np.float32)
        self.streams: dict[int, StreamState] = {}

    def load(self, layers: range) -> None:
        """Also hold these layers (those already held are kept as they are)."""
        for index in layers:
            if index not in self.layers:
                self.layers[index] = layer_session(self._directory, self.manifest, index, self._threads,
                                                   compute=self.compute)

    def retain(self, layers: range) -> None:
        """Drop every held layer outside `layers`, and the caches of the dropped layers."""
        for index in [index for index in self.layers if index not in layers]:
            del self.layers[index]
            self._kv_graphs.pop(index, None)
            for state in self.streams.values():
                state.caches.pop(index, None)

    def holds(self, layers: range) -> bool:
        return all(index in self.layers for index in layers)

    def cache_length(self, stream: int, layers: range) -> int:
        """Positions the stream's caches hold for `layers` (0 for a new stream)."""
        state = self.streams.get(stream)
        if state is None:
            return 0
        lengths = {state.caches[index].key.shape[2] if index in state.caches else 0 for index in layers}
        if len(lengths) != 1:
            raise CacheMismatch(f"stream {stream}'s caches disagree across layers: {sorted(lengths)}")
        return lengths.pop()

    def check_position(self, stream: int, layers: range, position: int) -> None:
        """A step must start where the stream's caches end (CacheMismatch otherwise)."""
        length = self.cache_length(stream, layers)
        if position != length:
            raise CacheMismatch(f"frame position {position} is not stream {stream}'s cache length {length} "
                                f"for layers [{layers.start}, {layers.stop})")

    def truncate(self, stream: int, length: int) -> None:
        """Cut every cache of the stream to its first `length` positions (never longer)."""
        state = self.streams.get(stream)
        if state is None:
            if length:
                raise CacheMismatch(f"stream {stream} has no caches to keep {length} positions of")
            return
        for index, cache in state.caches.items():
            if cache.key.shape[2] < length:
                raise CacheMismatch(f"stream {stream} holds {cache.key.shape[2]} positions at layer {index}, "
                                    f"cannot keep {length}")
            state.caches[index] = LayerCache(cache.key[:, :, :length], cache.value[:, :, :length])

    def _empty_cache(self) -> LayerCache:
        config = self.manifest.model
        empty = np.zeros((1, config.kv_heads, 0, config.head_dim), dtype=np.float32)
        return LayerCache(empty, empty)

    def _kv_graph(self, index: int) -> ort.InferenceSession:
        if index not in self._kv_graphs:
            self._kv_graphs[index] = layer_session(self._directory, self.manifest, index, self._threads,
                                                   kv_only=True, compute=self.compute)
        return self._kv_graphs[index]

    def forward(self, stream: int, hidden: np.ndarray, positions: np.ndarray,
                skip: frozenset[int] = frozenset(), layers: range | None = None,
                head_masks: Mapping[int, np.ndarray] | None = None,
                rounding: BoundaryRounding | None = None) -> np.ndarray:
        return self.forward_reporting(stream, hidden, positions, skip, layers, head_masks, measure=False,
                                      rounding=rounding).hidden

    def forward_reporting(self, stream: int, hidden: np.ndarray, positions: np.ndarray,
                          skip: frozenset[int] = frozenset(), layers: range | None = None,
                          head_masks: Mapping[int, np.ndarray] | None = None, measure: bool = True,
                          measure_heads: bool = False, rounding: BoundaryRounding | None = None) -> LayerReport:
        """Run this stack's layers (or the sub-range `layers`) on hidden (1, seq, hidden) at positions (1, seq).

        A layer in `skip` passes the hidden state through unchanged but still writes
        this position's K/V (computed from that unchanged state), keeping caches coherent.
        head_masks[layer] (heads,) scales each attention head's contribution (0 prunes it);
        layers not in it keep every head. One-row calls report r and norms when `measure`,
        and head contribution ratios too when `measure_heads` (what a worker samples).
        `rounding`: the hidden state is rounded by it at every layer boundary inside the range
        (protocol/boundary_rounding.py: what a stage cut there would do), not after the last.
        """
        state = self.streams.setdefault(stream, StreamState())
        report = LayerReport(hidden)
        order = list(layers) if layers is not None else sorted(self.layers)
        for count, index in enumerate(order):
            if count and rounding is not None:
                hidden = rounding.apply_batch(hidden)
            cache = state.caches.get(index) or self._empty_cache()
            feeds = {"hidden": hidden, "positions": positions,
                     "past_key": cache.key, "past_value": cache.value}
            if index in skip:
                key, value = self._kv_graph(index).run(None, feeds)
            else:
                mask = head_masks.get(index) if head_masks is not None else None
                feeds["head_mask"] = self._all_heads if mask is None else np.asarray(mask, dtype=np.float32)
                out, key, value, head_energy = self.layers[index].run(None, feeds)
                if measure and out.shape[1] == 1:
                    input_norm = float(np.linalg.norm(hidden))
                    report.ratios.append(float(np.linalg.norm(out - hidden)) / input_norm)
                    report.norms.append(float(np.linalg.norm(out)))
                    if measure_heads:
                        report.head_ratios.append([math.sqrt(max(float(energy), 0.0)) / input_norm
                                                   for energy in head_energy[0, 0]])
                hidden = out
            state.caches[index] = LayerCache(key, value)
        report.hidden = hidden
        return report

    def release(self, stream: int) -> None:
        self.streams.pop(stream, None)


@dataclass(frozen=True)
class GenerationStep:
    token: int
    logits: np.ndarray      # (vocab,) the logits the token was sampled from
    seconds: float


class ReferenceExecutor:
    """Embedding, every layer and the head of one model, in this process."""

    def __init__(self, directory: Path, threads: int = 2, verify: bool = True, head: str = "compact",
                 compute: str | None = None) -> None:
        self.directory = Path(directory)
        self.manifest = load_manifest(self.directory)
        if verify:
            verify_files(self.directory, self.manifest)
        self.ends = ModelEnds(self.directory, threads, verify=False, manifest=self.manifest, head=head)
        self.text = self.ends.text
        self.stack = LayerStack(self.directory, self.manifest, 0, self.manifest.model.layers, threads, compute)
        self.compute = self.stack.compute
        self.prefill_rows = prefill_rows(self.manifest.model, self.compute)   # rows per pass, as the tabs run them
        self._next_stream = 0

    def with_head(self, head: str) -> ReferenceExecutor:
        """The same layers (shared, not reloaded) with another head ("compact" or "float32")."""
        other = copy.copy(self)
        other.ends = ModelEnds(self.directory, self.ends.threads, verify=False, manifest=self.manifest, head=head)
        return other

    def embed(self, ids: list[int]) -> np.ndarray:
        return self.ends.embed(ids)  # (1, seq, hidden)

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        return self.ends.logits(hidden)  # (1, seq, vocab)

    def prompt_logits(self, ids: list[int], chunk: int = 256) -> np.ndarray:
        """Logits at every position of `ids` (chunked prefill with the KV cache): (len, vocab)."""
        chunk = min(chunk, self.prefill_rows)
        stream = self._new_stream()
        try:
            rows = []
            for start in range(0, len(ids), chunk):
                piece = ids[start:start + chunk]
                positions = np.arange(start, start + len(piece), dtype=np.int64)[None]
                hidden = self.stack.forward(stream, self.embed(piece), positions)
                rows.append(self.logits(hidden)[0])
            return np.concatenate(rows)
        finally:
            self.stack.release(stream)

    def _new_stream(self) -> int:
        self._next_stream += 1
        return self._next_stream

    def generate(self, prompt_ids: list[int], params: SamplingParams,
                 stop_ids: frozenset[int] | None = None) -> Iterator[GenerationStep]:
        """Yield sampled tokens one by one; stops at EOS (or a stop id) or max_tokens."""
        if not prompt_ids:
            raise ValueError("the prompt has no tokens")
        stop = stop_ids if stop_ids is not None else self.manifest.stop_set
        rng = make_rng(params)
        stream = self._new_stream()
        try:
            started = time.perf_counter()
            for start in range(0, len(prompt_ids), self.prefill_rows):   # the prompt in chunks, as the tabs get it
                piece = prompt_ids[start:start + self.prefill_rows]
                positions = np.arange(start, start + len(piece), dtype=np.int64)[None]
                hidden = self.stack.forward(stream, self.embed(piece), positions)
            position = len(prompt_ids)
            for _ in range(params.max_tokens):
                logits = self.logits(hidden[:, -1:])[0, -1]
                token = sample_token(logits, params, rng)
                now = time.perf_counter()
                yield GenerationStep(token, logits, now - started)
                started = now
                if token in stop:
                    return
                hidden = self.stack.forward(stream, self.embed([token]),
                                            np.array([[position]], dtype=np.int64))
                position += 1
        finally:
            self.stack.release(stream)

    def chat(self, messages: list[dict[str, str]], params: SamplingParams) -> str:
        ids = self.text.encode_chat(messages)
        tokens = [step.token for step in self.generate(ids, params)]
        return self.text.decode(tokens)
