"""A contiguous range of a model's layers run natively, with one KV cache per stream.

Owns what one node of the pipeline does, in-process: the unit a browser tab runs
(`worker_web/ort_runtime.js` LayerRunner mirrors it), used by the reference executor, the
coordinator's spot checks and the integration tests' fake workers. Runs one stream's rows
(`forward_reporting`) or several streams' rows as one pass per layer (`forward_batch`).
Never does I/O beyond loading its layers' graphs.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from protocol.boundary_rounding import BoundaryRounding
from shards.compact_weights import LazyWeights, decode_weights, graph_with_weights
from shards.manifest import Manifest, native_cache_dir
from shards.model_ends import session_options
from shards.stream_batch import StreamRows, batch_positions, cache_of_entry, pad_caches, pass_groups


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
        rows = StreamRows(stream, hidden, int(positions[0, 0]), skip, head_masks, measure, measure_heads)
        return self.forward_batch([rows], layers, rounding)[0]

    def forward_batch(self, items: Sequence[StreamRows], layers: range | None = None,
                      rounding: BoundaryRounding | None = None) -> list[LayerReport]:
        """Several streams' rows (distinct streams, the same row count) through the layers as
        one pass per layer, as a tab runs the frames that wait together (worker_web/
        ort_runtime.js forwardBatch): entries that skip a layer, or hold other head masks,
        run it in a pass of their own; the rest share one, their caches padded to the
        longest (shards/stream_batch.py). Each report is bitwise what the stream alone gets."""
        states = [item.hidden for item in items]                       # each (1, rows, hidden)
        reports = [LayerReport(item.hidden) for item in items]
        order = list(layers) if layers is not None else sorted(self.layers)
        for count, index in enumerate(order):
            if count and rounding is not None:
                states = [rounding.apply_batch(state) for state in states]
            for skipped, members in pass_groups(items, index):
                outs = self._pass(index, skipped, [items[m] for m in members], [states[m] for m in members])
                for member, (out, head_energy) in zip(members, outs, strict=True):
                    if skipped:
                        continue
                    item, before = items[member], states[member]
                    if item.measure and out.shape[1] == 1:
                        input_norm = float(np.linalg.norm(before))
                        reports[member].ratios.append(float(np.linalg.norm(out - before)) / input_norm)
                        reports[member].norms.append(float(np.linalg.norm(out)))
                        if item.measure_heads:
                            reports[member].head_ratios.append([math.sqrt(max(float(energy), 0.0)) / input_norm
                                                                for energy in head_energy[0]])
                    states[member] = out
        for report, state in zip(reports, states, strict=True):
            report.hidden = state
        return reports

    def _pass(self, index: int, skipped: bool, items: Sequence[StreamRows],
              states: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """One layer's graph over these streams (one batch entry each); stores their new caches
        and returns each one's (output (1, rows, hidden), head energy (rows, heads))."""
        held = [self.streams.setdefault(item.stream, StreamState()).caches.get(index) or self._empty_cache()
                for item in items]
        lengths = [cache.key.shape[2] for cache in held]
        rows = states[0].shape[1]
        feeds = {"hidden": np.concatenate(states), "positions": batch_positions([item.position for item in items], rows),
                 "past_key": pad_caches([cache.key[0] for cache in held]),
                 "past_value": pad_caches([cache.value[0] for cache in held])}
        if skipped:
            key, value = self._kv_graph(index).run(None, feeds)
            outputs = [(states[entry], np.zeros((rows, 0))) for entry in range(len(items))]
        else:
            mask = items[0].head_masks.get(index) if items[0].head_masks is not None else None
            feeds["head_mask"] = self._all_heads if mask is None else np.asarray(mask, dtype=np.float32)
            out, key, value, head_energy = self.layers[index].run(None, feeds)
            outputs = [(out[entry:entry + 1], head_energy[entry]) for entry in range(len(items))]
        for entry, item in enumerate(items):
            length = lengths[entry] + rows
            self.streams[item.stream].caches[index] = LayerCache(cache_of_entry(key, entry, length)[None],
                                                                 cache_of_entry(value, entry, length)[None])
        return outputs

    def release(self, stream: int) -> None:
        self.streams.pop(stream, None)

