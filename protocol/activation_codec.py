"""Activation frames: hidden states (rows, columns) <-> bytes, as stages that each can be tested.

Owns the payload layout per encoding and the closed-loop delta state. For int8:
  payload = scales (rows x blocks, float16 LE) || codes (rows x columns int8, maybe run-length coded)
With DELTA, row r is coded as the difference from a prediction: the decoder's own
reconstruction of row r-1 (of the stream's previous frame for r = 0, or zero in a KEY
frame). The encoder keeps exactly what the decoder will reconstruct, so the error of
every row stays within the single-step bound and never accumulates. Pure; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from protocol import quantization, run_length
from protocol.errors import FrameError
from protocol.frames import Encoding, Flag, FrameKind, Header, StepKind, pack_frame, parse_frame


@dataclass(frozen=True)
class CodecSettings:
    encoding: Encoding = Encoding.INT8_BLOCK
    block: int = 64
    delta: bool = False
    run_length: bool = True
    key_interval: int = 64    # with delta: a key frame at least every this many rows
    round_layers: bool = False   # ROUND_LAYERS: stages round at every layer boundary (layout-independent)

    def __post_init__(self) -> None:
        if self.encoding == Encoding.INT8_BLOCK and not 1 <= self.block <= 4096:
            raise ValueError("block must be in 1..4096")
        if self.delta and self.encoding != Encoding.INT8_BLOCK:
            raise ValueError("delta coding needs the int8 encoding")
        if self.key_interval < 1:
            raise ValueError("key_interval must be >= 1")
        if self.round_layers and (self.delta or self.encoding == Encoding.FLOAT32):
            raise ValueError("round_layers needs a lossy encoding without delta")


LOSSLESS = CodecSettings(encoding=Encoding.FLOAT32, block=0, delta=False, run_length=False)


@dataclass
class StreamCodecState:
    """One direction of one link, for one stream: the decoder's last reconstructed row."""

    previous: np.ndarray | None = None   # (columns,) float32
    rows_since_key: int = 0


@dataclass(frozen=True)
class Route:
    """Where a frame goes: its kind, stream, first position, layer range and step."""

    kind: FrameKind
    stream: int
    position: int
    layer_start: int = 0
    layer_end: int = 0
    skip_mask: int = 0
    no_reply: bool = False
    step: int = 0
    step_kind: StepKind = StepKind.PREFILL


def _int8_rows(values: np.ndarray, block: int, predictions: np.ndarray | None):
    """Quantize (rows, columns) values (optionally minus predictions); return scales, codes, reconstruction."""
    targets = values.astype(np.float64)
    if predictions is not None:
        targets = targets - predictions
    scales = quantization.scales_for(targets, block)
    codes = quantization.quantize(targets, scales, block)
    reconstruction = quantization.dequantize(codes, scales, block)
    if predictions is not None:
        reconstruction = reconstruction + predictions
    return scales, codes, reconstruction.astype(np.float32)


def encode_activation(values: np.ndarray, route: Route, settings: CodecSettings,
                      state: StreamCodecState | None = None, force_key: bool = False) -> bytes:
    """Encode hidden states (rows, columns) float32 into one frame; updates `state` (delta)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if values.ndim != 2 or not np.isfinite(values).all():
        raise ValueError("activations must be a finite (rows, columns) array")
    rows, columns = values.shape
    flags = int(settings.encoding)
    block = 0
    if settings.encoding == Encoding.FLOAT32:
        payload = values.astype("<f4").tobytes()
    elif settings.encoding == Encoding.FLOAT16:
        payload = _float16(values).astype("<f2").tobytes()
    else:
        block = settings.block
        scales, codes, key = _encode_int8(values, settings, state, force_key)
        if settings.delta:
            flags |= Flag.DELTA | (Flag.KEY if key else 0)
        code_bytes = codes.tobytes()
        if settings.run_length:
            coded = run_length.encode(code_bytes)
            if len(coded) < len(code_bytes):
                code_bytes, flags = coded, flags | Flag.RUN_LENGTH
        payload = scales.astype("<f2").tobytes() + code_bytes
    if route.no_reply:
        flags |= Flag.NO_REPLY
    if settings.round_layers:
        flags |= Flag.ROUND_LAYERS
    return pack_frame(route.kind, flags, route.stream, route.position, rows, columns, block,
                      route.layer_start, route.layer_end, route.skip_mask, payload,
                      step=route.step, step_kind=route.step_kind)


def _float16(values: np.ndarray) -> np.ndarray:
    if np.abs(values).max(initial=0.0) > quantization.FLOAT16_MAX:
        raise ValueError("activation values overflow float16: use int8 or float32")
    return values.astype(np.float16)


def reconstruct(values: np.ndarray, encoding: Encoding, block: int) -> np.ndarray:
    """(rows, columns) float32 -> what a receiver decodes from a frame of them in this encoding
    without delta: the rounding one hop applies (protocol/boundary_rounding.py reuses it)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if encoding == Encoding.FLOAT32:
        return values
    if encoding == Encoding.FLOAT16:
        return _float16(values).astype(np.float32)
    return _int8_rows(values, block, None)[2]


def _encode_int8(values: np.ndarray, settings: CodecSettings, state: StreamCodecState | None,
                 force_key: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    """Scales, codes, and whether this is a key frame (delta only)."""
    if not settings.delta:
        scales, codes, _ = _int8_rows(values, settings.block, None)
        return scales, codes, False
    if state is None:
        raise ValueError("delta coding needs a stream state")
    key = state.previous is None or force_key or state.rows_since_key >= settings.key_interval
    if key:
        state.rows_since_key = 0
    previous = None if key else state.previous
    all_scales, all_codes = [], []
    for row in values:
        prediction = None if previous is None else previous[None].astype(np.float64)
        scales, codes, reconstruction = _int8_rows(row[None], settings.block, prediction)
        all_scales.append(scales)
        all_codes.append(codes)
        previous = reconstruction[0]
    state.previous = previous
    state.rows_since_key += len(values)
    return np.concatenate(all_scales), np.concatenate(all_codes), key


def decode_activation(frame: bytes | memoryview, state: StreamCodecState | None = None
                      ) -> tuple[Header, np.ndarray]:
    """Decode a FORWARD/RESULT frame to (header, values (rows, columns) float32); updates `state`."""
    header, payload = parse_frame(frame)
    if header.kind == FrameKind.CONTROL:
        raise FrameError("bad-kind", "a control frame is not an activation frame")
    rows, columns = header.rows, header.columns
    encoding = header.encoding
    if encoding in (Encoding.FLOAT32, Encoding.FLOAT16):
        width = 4 if encoding == Encoding.FLOAT32 else 2
        if len(payload) != rows * columns * width:
            raise FrameError("bad-length", f"payload of {len(payload)} bytes does not hold ({rows}, {columns}) values")
        dtype = "<f4" if encoding == Encoding.FLOAT32 else "<f2"
        values = np.frombuffer(payload, dtype=dtype).reshape(rows, columns).astype(np.float32)
        return header, values
    blocks = quantization.blocks_per_row(columns, header.block)
    scale_bytes = rows * blocks * 2
    if len(payload) < scale_bytes:
        raise FrameError("bad-length", "payload is shorter than its scales")
    scales = np.frombuffer(payload[:scale_bytes], dtype="<f2").reshape(rows, blocks)
    if not np.isfinite(scales).all():
        raise FrameError("bad-scales", "a block scale is not finite")
    code_bytes: bytes | memoryview = payload[scale_bytes:]
    if header.has(Flag.RUN_LENGTH):
        code_bytes = run_length.decode(code_bytes, rows * columns)
    elif len(code_bytes) != rows * columns:
        raise FrameError("bad-length", f"{len(code_bytes)} code bytes for ({rows}, {columns}) values")
    codes = np.frombuffer(code_bytes, dtype=np.int8).reshape(rows, columns)
    if not header.has(Flag.DELTA):
        return header, quantization.dequantize(codes, scales, header.block).astype(np.float32)
    if state is None:
        raise FrameError("no-delta-state", "a delta frame needs the stream's decoder state")
    previous = None if header.has(Flag.KEY) else state.previous
    if previous is None and not header.has(Flag.KEY):
        raise FrameError("no-delta-state", f"stream {header.stream} has no previous row for a delta frame")
    if previous is not None and previous.shape[0] != columns:
        raise FrameError("bad-shape", "delta frame width differs from the stream's previous row")
    values = np.empty((rows, columns), dtype=np.float32)
    residuals = quantization.dequantize(codes, scales, header.block)
    for row in range(rows):
        base = 0.0 if previous is None else previous.astype(np.float64)
        values[row] = (residuals[row] + base).astype(np.float32)
        previous = values[row]
    state.previous = values[-1].copy()
    return header, values


@dataclass
class LinkCodec:
    """Per-stream delta state for one direction of one link (encoder or decoder side)."""

    settings: CodecSettings
    streams: dict[int, StreamCodecState] = field(default_factory=dict)

    def state(self, stream: int) -> StreamCodecState:
        return self.streams.setdefault(stream, StreamCodecState())

    def forget(self, stream: int) -> None:
        self.streams.pop(stream, None)
