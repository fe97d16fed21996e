"""Checking workers' results: the coordinator recomputes a stage natively and compares. CPU only.

The coordinator relays every hop, so for a stage of a stream it sees every frame the worker
was sent and every result it sent back. A stream's stage that is **audited** has a native
shadow here: its own KV caches for that stage's layers, advanced lazily. A check of a step
runs the frames sent since the last check (one multi-row pass where they are contiguous:
the graphs compute each row bitwise as a one-row step would) and compares the step's
output with the worker's decoded result. So a check costs the rows since the last check,
not the whole stream again, and the coordinator needs only the layers of the stage it
checks: they are loaded on demand into a bounded budget (least recently used go first),
so a model the tabs hold only together never has to fit here.

Tolerance, float32 compute, per value: 1.5 quantization steps of the result's codec (the
worker's output was int8-coded with the block scale of its own output; a float difference
between WASM and native can move a value across one rounding boundary) plus 1e-3 relative +
1e-3 absolute for float differences between onnxruntime-web (WASM) and native onnxruntime
across a stage's layers. So a change of more than ~1.5 quantization steps in any value —
noise, a sign flip, a scaled output, a stale position — fails the check.

int8 compute cannot be held that close: WASM and native differ in the last float bits
(reduction order, exp), which flips some activations' int8 rounding, and the flips compound
layer by layer (measured on Qwen2.5-Coder-1.5B: ~1e-4 of a row's norm after one layer, up to
5.6% after 14). There each row's relative L2 error must stay under `int8_row_error` (0.25):
noise, a sign flip, a stale row (another position's state differs by 60% or more) and a
scale off by more than 25% fail; a subtler scaling passes unseen. The int8-stable codec
(a rounding at every layer boundary inside a stage) compounds flips the same way and is
checked the same way: held to 2.5 rounding steps per value, an honest WASM tab was evicted
in a 29-row prefill (a value -5.03 against the native 3.74, bench/concurrency.py).

`should_check` and `should_audit` (pure) decide what is checked: every stream a worker on
probation serves is audited and each of its first `probation_steps` steps checked before
the token is released; other streams' stages are audited with probability
`audit_fraction` and their steps checked with probability `fraction`. Never touches sockets.
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from coordinator.swarm.allocator import trim
from coordinator.swarm.planner import Stage
from protocol.activation_codec import decode_activation
from protocol.boundary_rounding import BoundaryRounding
from protocol.frames import Encoding, parse_frame
from protocol.quantization import expand, scales_for
from shards.executor import LayerCache, layer_session, native_graph_file
from shards.footprint import layer_bytes
from shards.manifest import Manifest, native_cache_dir


@dataclass(frozen=True)
class VerifyConfig:
    fraction: float = 1 / 16        # share of an audited stage's steps checked after probation
    probation_steps: int = 4        # a new worker's first steps, each checked before its token is released
    audit_fraction: float = 0.5     # share of (stream, stage) pairs of proven workers that are audited
    memory_mb: float = 256.0        # native layers kept loaded for checks (least recently used go first)
    cpu_share: float = 0.25         # background checks start only while they used less of a core than this
    relative: float = 1e-3
    absolute: float = 1e-3
    # Float32 rounding scales with a row's magnitude, not each value's: a small value in a row
    # with large ones (Gemma 3's residual stream, RMS ~200-3000) drifts between WASM and native
    # by up to ~1.7e-5 of the row's RMS (measured over the Gemma e2e checks), far more than
    # 1e-3 of itself. Allowed: this share of the row's RMS on every value of the row.
    row_relative: float = 5e-5
    int8_row_error: float = 0.25    # int8 compute: largest |result - native| / |native| per row


@dataclass(frozen=True)
class Verdict:
    ok: bool
    worst: float            # the largest |difference| / allowed over the values
    detail: str
    rows: int = 0           # rows recomputed natively for this check
    cpu_seconds: float = 0.0  # CPU time of this check (its thread: onnxruntime runs it there)


def should_check(checked_steps: int, config: VerifyConfig, rng: random.Random) -> tuple[bool, bool]:
    """(check this step?, before releasing its token?)"""
    if config.fraction <= 0 and config.probation_steps <= 0:
        return False, False
    if checked_steps < config.probation_steps:
        return True, True
    return rng.random() < config.fraction, False


def should_audit(checked_steps: int, config: VerifyConfig, rng: random.Random) -> bool:
    """Whether a stream's stage, starting now, gets a native shadow."""
    if checked_steps < config.probation_steps:
        return True
    return config.fraction > 0 and rng.random() < config.audit_fraction


def allowed_error(native: np.ndarray, encoding: Encoding, block: int, config: VerifyConfig) -> np.ndarray:
    """Per-value bound for a worker's coded result against the native output (rows, hidden):
    1.5 steps of the output's rounding, plus the float part (of the value and of its row)."""
    row_rms = np.sqrt(np.mean(np.square(native, dtype=np.float64), axis=1, keepdims=True))   # (rows, 1)
    float_part = config.relative * np.abs(native) + config.absolute + config.row_relative * row_rms
    steps = 1.5
    if encoding == Encoding.INT8_BLOCK:
        scales = scales_for(native.astype(np.float64), block)               # (rows, blocks)
        return steps * expand(scales, native.shape[1], block) + float_part
    if encoding == Encoding.FLOAT16:
        return steps * np.abs(native) * 2.0**-11 + float_part
    return float_part


class LayerBudget:
    """Native layer sessions, loaded on demand, at most `memory_mb` of them kept (LRU)."""

    def __init__(self, directory: Path, manifest: Manifest, compute: str, memory_mb: float) -> None:
        self.directory, self.manifest, self.compute = directory, manifest, compute
        self.layer_mb = layer_bytes(manifest.model, compute) / 2**20
        self.slots = max(1, int(memory_mb // self.layer_mb))
        self.sessions: OrderedDict[tuple[int, bool], ort.InferenceSession] = OrderedDict()
        self.loads = 0

    def get(self, layer: int, kv_only: bool = False) -> ort.InferenceSession:
        key = (layer, kv_only)
        if key in self.sessions:
            self.sessions.move_to_end(key)
            return self.sessions[key]
        while len(self.sessions) >= self.slots:
            self.sessions.popitem(last=False)
        self.sessions[key] = layer_session(self.directory, self.manifest, layer, 1, kv_only, self.compute)
        self.loads += 1
        return self.sessions[key]

    def prepare(self, stop: threading.Event) -> int:
        """Make every layer's native graph file ahead of the first check (seconds per large
        layer, once per model); returns how many were made. Stops early when `stop` is set."""
        made = 0
        for index in range(self.manifest.model.layers):
            if stop.is_set():
                break
            for kv_only in (False, True):
                graph = self.manifest.layers[index].graphs(self.compute)[1 if kv_only else 0]
                if self.manifest.layers[index].weights and not (native_cache_dir(self.directory) / graph).is_file():
                    native_graph_file(self.directory, self.manifest, index, kv_only, self.compute)
                    trim()
                    made += 1
        return made

    def clear(self) -> None:
        self.sessions.clear()


@dataclass
class Shadow:
    """One audited stream's stage: its native caches, by layer ((1, kv_heads, positions, head_dim))."""

    caches: dict[int, LayerCache] = field(default_factory=dict)
    length: int = 0


class StageChecker:
    def __init__(self, directory: Path, manifest: Manifest, config: VerifyConfig, compute: str | None = None) -> None:
        self.manifest, self.config = manifest, config
        self.compute = compute or manifest.default_compute
        self.layers = LayerBudget(directory, manifest, self.compute, config.memory_mb)
        self._shadows: dict[tuple, Shadow] = {}
        self._lock = threading.Lock()     # one check at a time: they share the layers
        self._heads = np.ones(manifest.model.heads, dtype=np.float32)

    def close(self) -> None:
        """Free the native layers (the app is shutting down)."""
        with self._lock:
            self.layers.clear()
            self._shadows.clear()

    def release(self, key: tuple) -> None:
        """Forget a stream's shadow. Called on the event loop, so it must not wait for the
        lock a check holds in its thread (that stalled every stream ~35 ms per finished
        request): a dict pop is atomic under the GIL, and a check already running keeps its
        own reference to the shadow and finishes on it."""
        self._shadows.pop(key, None)

    def check(self, key: tuple, stage: Stage, frames: list[bytes], result: bytes) -> Verdict | None:
        """Advance the shadow of `key` over `frames` (sent since its last check, the checked
        step's last) and compare that step's output with the worker's `result`. None when
        there is nothing to compare against: the stream ended (its shadow was released)
        before this check ran, so its frames no longer start where a shadow stands."""
        started = time.thread_time()
        with self._lock:
            shadow = self._shadows.get(key)
            if shadow is None:
                if parse_frame(frames[0])[0].position != 0:
                    return None
                shadow = self._shadows[key] = Shadow()
            native = None
            rows = 0
            rounding = BoundaryRounding.of(parse_frame(frames[-1])[0])   # None: the stage rounds nothing inside
            for values, position, skip_mask in _passes(frames):
                if position < shadow.length:   # the worker's caches were cut here (rejected drafts)
                    shadow.caches = {layer: LayerCache(cache.key[:, :, :position], cache.value[:, :, :position])
                                     for layer, cache in shadow.caches.items()}
                native = self._run(shadow, stage, values, position, skip_mask, rounding)
                shadow.length = position + len(values)
                rows += len(values)
        assert native is not None
        if self.compute == "int8" or rounding is not None:
            # Flips compound: int8 compute flips activations' rounding, and so does a rounding at
            # every layer boundary (int8-stable) once WASM and native floats differ in the last bits.
            verdict = self._compare_rows(native[-_rows(frames[-1]):], result, rows)
        else:
            verdict = self._compare(native[-_rows(frames[-1]):], result, rows)
        trim()   # the layers loaded and dropped for this check: give their memory back
        return replace(verdict, cpu_seconds=time.thread_time() - started)

    def _run(self, shadow: Shadow, stage: Stage, hidden: np.ndarray, position: int, skip_mask: int,
             rounding: BoundaryRounding | None) -> np.ndarray:
        """The stage's layers on hidden (rows, hidden) at positions position.., rounded at each layer
        boundary inside the stage as the tab rounds; returns (rows, hidden)."""
        config = self.manifest.model
        state = hidden[None]                                                           # (1, rows, hidden)
        positions = np.arange(position, position + len(hidden), dtype=np.int64)[None]
        empty = np.zeros((1, config.kv_heads, 0, config.head_dim), dtype=np.float32)
        for offset, layer in enumerate(range(stage.layer_start, stage.layer_end)):
            if offset and rounding is not None:
                state = rounding.apply_batch(state)
            cache = shadow.caches.get(layer) or LayerCache(empty, empty)
            feeds = {"hidden": state, "positions": positions, "past_key": cache.key, "past_value": cache.value}
            if skip_mask >> offset & 1:
                key, value = self.layers.get(layer, kv_only=True).run(None, feeds)
            else:
                state, key, value, _ = self.layers.get(layer).run(None, feeds | {"head_mask": self._heads})
            shadow.caches[layer] = LayerCache(key, value)
        return state[0]

    @staticmethod
    def _malformed(native: np.ndarray, reported: np.ndarray, rows: int) -> Verdict | None:
        if reported.shape != native.shape:
            return Verdict(False, float("inf"), f"result shape {reported.shape}, expected {native.shape}", rows)
        if not np.isfinite(reported).all():
            return Verdict(False, float("inf"), "result has non-finite values", rows)
        return None

    def _compare_rows(self, native: np.ndarray, result: bytes, rows: int) -> Verdict:
        """int8 compute: each row's relative L2 error against `int8_row_error`."""
        _, reported = decode_activation(result)
        if (malformed := self._malformed(native, reported, rows)) is not None:
            return malformed
        errors = np.linalg.norm(reported - native, axis=1) / np.maximum(np.linalg.norm(native, axis=1), 1e-12)
        worst = float(errors.max()) / self.config.int8_row_error
        if worst <= 1.0:
            return Verdict(True, worst, "", rows)
        row = int(errors.argmax())
        return Verdict(False, worst, f"row {row} is {100 * errors[row]:.1f}% away from the native result "
                                     f"(allowed {100 * self.config.int8_row_error:.0f}%)", rows)

    def _compare(self, native: np.ndarray, result: bytes, rows: int) -> Verdict:
        header, _ = parse_frame(result)
        _, reported = decode_activation(result)
        if (malformed := self._malformed(native, reported, rows)) is not None:
            return malformed
        allowed = allowed_error(native, header.encoding, header.block or 1, self.config)
        ratio = np.abs(reported - native) / allowed
        worst = float(ratio.max())
        if worst <= 1.0:
            return Verdict(True, worst, "", rows)
        row, column = np.unravel_index(int(ratio.argmax()), ratio.shape)
        return Verdict(False, worst, f"value [{row}, {column}] is {reported[row, column]:.4g}, natively "
                                     f"{native[row, column]:.4g} (allowed ±{allowed[row, column]:.3g})", rows)


def _rows(frame: bytes) -> int:
    return parse_frame(frame)[0].rows


def _passes(frames: list[bytes]) -> list[tuple[np.ndarray, int, int]]:
    """(values (rows, hidden), position, skip mask) per native pass: consecutive frames that
    continue each other without skips are merged into one multi-row pass (row-invariant graphs
    give each row the same bits either way); a frame with skips, or one that starts before
    the previous ended (a cut), starts a pass of its own."""
    passes: list[tuple[np.ndarray, int, int]] = []
    for frame in frames:
        header, values = decode_activation(frame)
        previous = passes[-1] if passes else None
        if (previous is not None and not header.skip_mask and not previous[2]
                and previous[1] + len(previous[0]) == header.position):
            passes[-1] = (np.concatenate([previous[0], values]), previous[1], 0)
        else:
            passes.append((values, header.position, header.skip_mask))
    return passes
