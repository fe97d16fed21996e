"""Spot-checks of workers' results: the coordinator re-runs a stage natively and compares.

The coordinator relays every hop and holds every layer, so for a stage of a stream it
has every frame the worker was sent (`stage_replay.StageRecorder`) and the result it
sent back. `check_stage` (CPU only; the engine runs it off the event loop) runs the
stage's layers with native onnxruntime over those frames exactly as the worker did —
the prompt frame as one multi-row call, each later frame as its own call, same skip
masks — and compares the output of the last frame with the worker's decoded result.

Tolerance, per value: 1.5 quantization steps of the result's codec (the worker's output
was int8-coded with the block scale of its own output; a float difference between WASM
and native can move a value across one rounding boundary) plus 1e-3 relative + 1e-3
absolute for float differences between onnxruntime-web (WASM) and native onnxruntime
across a stage's layers. So a change of more than ~1.5 quantization steps in any value —
noise, a sign flip, a scaled output, a stale position — fails the check.

`should_check` (pure) decides which steps are checked: every step of a worker still on
probation (its first `probation_steps`, checked before the token is released), then a
sampled `fraction` off the critical path. It never touches sockets.
"""

from __future__ import annotations

import itertools
import random
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coordinator.planner import Stage
from protocol.activation_codec import decode_activation
from protocol.frames import Encoding, parse_frame
from protocol.quantization import expand, scales_for
from shards.executor import LayerStack
from shards.manifest import Manifest


@dataclass(frozen=True)
class VerifyConfig:
    fraction: float = 1 / 16        # share of steps checked after probation
    probation_steps: int = 4        # a new worker's first steps, each checked before its token is released
    relative: float = 1e-3
    absolute: float = 1e-3


@dataclass(frozen=True)
class Verdict:
    ok: bool
    worst: float            # the largest |difference| / allowed over the values
    detail: str


def should_check(checked_steps: int, config: VerifyConfig, rng: random.Random) -> tuple[bool, bool]:
    """(check this step?, before releasing its token?)"""
    if config.fraction <= 0 and config.probation_steps <= 0:
        return False, False
    if checked_steps < config.probation_steps:
        return True, True
    return rng.random() < config.fraction, False


def allowed_error(native: np.ndarray, encoding: Encoding, block: int, config: VerifyConfig) -> np.ndarray:
    """Per-value bound for a worker's coded result against the native output (rows, hidden)."""
    float_part = config.relative * np.abs(native) + config.absolute
    if encoding == Encoding.INT8_BLOCK:
        scales = scales_for(native.astype(np.float64), block)               # (rows, blocks)
        return 1.5 * expand(scales, native.shape[1], block) + float_part
    if encoding == Encoding.FLOAT16:
        return 1.5 * np.abs(native) * 2.0**-11 + float_part
    return float_part


class StageChecker:
    """A native copy of every layer (loaded on first use) to re-run any stage with."""

    def __init__(self, directory: Path, manifest: Manifest, config: VerifyConfig) -> None:
        self.directory, self.manifest, self.config = directory, manifest, config
        self._stack: LayerStack | None = None
        self._lock = threading.Lock()     # one check at a time: they share the stack
        self._streams = itertools.count(1 << 30)

    def close(self) -> None:
        """Free the native layers (the app is shutting down)."""
        with self._lock:
            self._stack = None

    def check_stage(self, stage: Stage, frames: list[bytes], result: bytes) -> Verdict:
        with self._lock:
            if self._stack is None:   # layers load on first use: only those of stages checked
                self._stack = LayerStack(self.directory, self.manifest, 0, 0, 1)
            stack, stream = self._stack, next(self._streams)
            layers = range(stage.layer_start, stage.layer_end)
            stack.load(layers)
            try:
                native = None
                for frame in frames:
                    header, values = decode_activation(frame)
                    if header.position < stack.cache_length(stream, layers):   # the caches were cut here
                        stack.truncate(stream, header.position)
                    positions = np.arange(header.position, header.position + header.rows, dtype=np.int64)[None]
                    skipped = frozenset(header.layer_start + bit for bit in range(64) if header.skip_mask >> bit & 1)
                    native = stack.forward(stream, values[None], positions, skipped, layers=layers)[0]
            finally:
                stack.release(stream)
        assert native is not None
        header, _ = parse_frame(result)
        _, reported = decode_activation(result)
        if reported.shape != native.shape:
            return Verdict(False, float("inf"), f"result shape {reported.shape}, expected {native.shape}")
        if not np.isfinite(reported).all():
            return Verdict(False, float("inf"), "result has non-finite values")
        allowed = allowed_error(native, header.encoding, header.block or 1, self.config)
        ratio = np.abs(reported - native) / allowed
        worst = float(ratio.max())
        if worst <= 1.0:
            return Verdict(True, worst, "")
        row, column = np.unravel_index(int(ratio.argmax()), ratio.shape)
        return Verdict(False, worst, f"value [{row}, {column}] is {reported[row, column]:.4g}, natively "
                                     f"{native[row, column]:.4g} (allowed ±{allowed[row, column]:.3g})")
