"""The binary frame: a fixed 52-byte little-endian header and a checksummed payload.

Owns the header layout, its validation and the limits in SPEC.md. Pure: bytes in,
dataclasses out; never does I/O. Every malformed input raises FrameError.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from protocol.errors import FrameError

MAGIC = b"TSWF"
VERSION = 4
HEADER = struct.Struct("<4sBBHIIIHHHHQIB3sII")
HEADER_SIZE = HEADER.size  # 52
CHECKSUM_OFFSET = HEADER_SIZE - 4
RESERVED = b"\0\0\0"

MAX_ROWS = 1 << 16
MAX_COLUMNS = 1 << 15
MAX_ELEMENTS = 1 << 24
MAX_PAYLOAD = 1 << 26      # 64 MiB
MAX_POSITION = (1 << 32) - 1


class FrameKind(IntEnum):
    FORWARD = 1   # coordinator -> worker: run layers [layer_start, layer_end) on these rows
    RESULT = 2    # worker -> coordinator: the hidden state after those layers
    CONTROL = 3   # either way: a msgpack control message (see control.py)


class StepKind(IntEnum):
    """What a FORWARD/RESULT frame's rows are; CONTROL frames carry NONE."""

    NONE = 0
    PREFILL = 1   # the first rows of a stream, or a replay of its whole history (any rows)
    DECODE = 2    # one new row appended to the stream's caches
    VERIFY = 3    # several drafted rows appended at once (speculative decoding)


class Encoding(IntEnum):
    FLOAT32 = 0
    FLOAT16 = 1
    INT8_BLOCK = 2


class Flag(IntFlag):
    DELTA = 1 << 2      # rows are coded as differences from a prediction (int8 only)
    RUN_LENGTH = 1 << 3  # the int8 codes are zero-run-length coded
    KEY = 1 << 4        # row 0's prediction is zero, not the stream's previous row
    NO_REPLY = 1 << 5   # FORWARD: do not send a RESULT (K/V backfill of a bypassed node)
    REPORT = 1 << 6     # FORWARD (one row): send a layer_stats report before the RESULT (a router reads it)
    ROUND_LAYERS = 1 << 7  # round the hidden state at every layer boundary inside the stage (SPEC.md)


ENCODING_MASK = 0b11
KNOWN_FLAGS = ENCODING_MASK | int(Flag.DELTA | Flag.RUN_LENGTH | Flag.KEY | Flag.NO_REPLY | Flag.REPORT
                                   | Flag.ROUND_LAYERS)


@dataclass(frozen=True)
class Header:
    kind: FrameKind
    flags: int
    stream: int
    position: int      # absolute position of row 0
    rows: int
    columns: int
    block: int         # int8 block size (0 for other encodings and control frames)
    layer_start: int
    layer_end: int
    skip_mask: int     # bit i set: layer layer_start + i runs K/V-only (skipped)
    step: int          # the coordinator's step id; a RESULT echoes its FORWARD's
    step_kind: StepKind
    payload_length: int
    checksum: int

    @property
    def encoding(self) -> Encoding:
        return Encoding(self.flags & ENCODING_MASK)

    def has(self, flag: Flag) -> bool:
        return bool(self.flags & flag)


def pack_frame(kind: FrameKind, flags: int, stream: int, position: int, rows: int, columns: int,
               block: int, layer_start: int, layer_end: int, skip_mask: int, payload: bytes, *,
               step: int = 0, step_kind: StepKind = StepKind.NONE) -> bytes:
    """Header + payload; the checksum is CRC-32 of the payload."""
    if not 0 <= position <= MAX_POSITION:
        raise FrameError("bad-position", f"position {position} out of range")
    checksum = zlib.crc32(payload) & 0xFFFFFFFF
    header = HEADER.pack(MAGIC, VERSION, int(kind), flags, stream, position, rows & 0xFFFFFFFF,
                         columns, block, layer_start, layer_end, skip_mask, step & 0xFFFFFFFF, int(step_kind),
                         RESERVED, len(payload), checksum)
    return header + payload


def _fields(data: bytes | memoryview) -> tuple:
    if len(data) < HEADER_SIZE:
        raise FrameError("truncated", f"frame of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
    return HEADER.unpack_from(data, 0)


def parse_frame(data: bytes | memoryview) -> tuple[Header, memoryview]:
    """Validate a whole frame; return its header and payload view."""
    if len(data) > HEADER_SIZE + MAX_PAYLOAD:
        raise FrameError("oversize", f"frame of {len(data)} bytes exceeds the {MAX_PAYLOAD}-byte payload limit")
    (magic, version, kind, flags, stream, position, rows, columns, block,
     layer_start, layer_end, skip_mask, step, step_kind, reserved, payload_length, checksum) = _fields(data)
    if magic != MAGIC:
        raise FrameError("bad-magic", f"magic {magic!r} is not {MAGIC!r}")
    if version != VERSION:
        raise FrameError("bad-version", f"protocol version {version} is not supported (this side speaks {VERSION})")
    if kind not in FrameKind._value2member_map_:
        raise FrameError("bad-kind", f"frame kind {kind} is unknown")
    if flags & ~KNOWN_FLAGS:
        raise FrameError("bad-flags", f"unknown flag bits {flags & ~KNOWN_FLAGS:#x}")
    if flags & ENCODING_MASK not in Encoding._value2member_map_:
        raise FrameError("bad-flags", f"encoding {flags & ENCODING_MASK} is unknown")
    if reserved != RESERVED:
        raise FrameError("bad-reserved", "reserved header bytes must be zero")
    if step_kind not in StepKind._value2member_map_:
        raise FrameError("bad-step", f"step kind {step_kind} is unknown")
    if payload_length != len(data) - HEADER_SIZE:
        raise FrameError("bad-length", f"header says {payload_length} payload bytes, frame carries {len(data) - HEADER_SIZE}")
    payload = memoryview(data)[HEADER_SIZE:]
    if zlib.crc32(payload) & 0xFFFFFFFF != checksum:
        raise FrameError("bad-checksum", "payload CRC-32 does not match the header")
    header = Header(FrameKind(kind), flags, stream, position, rows, columns, block,
                    layer_start, layer_end, skip_mask, step, StepKind(step_kind), payload_length, checksum)
    if header.kind == FrameKind.CONTROL:
        if header.step_kind != StepKind.NONE or header.step:
            raise FrameError("bad-step", "a control frame carries no step")
    else:
        _check_shape(header)
    return header, payload


def _check_shape(header: Header) -> None:
    if not 1 <= header.rows <= MAX_ROWS or not 1 <= header.columns <= MAX_COLUMNS:
        raise FrameError("bad-shape", f"shape ({header.rows}, {header.columns}) is outside the limits")
    if header.rows * header.columns > MAX_ELEMENTS:
        raise FrameError("bad-shape", f"{header.rows * header.columns} elements exceed {MAX_ELEMENTS}")
    if header.position + header.rows - 1 > MAX_POSITION:
        raise FrameError("bad-position", "positions overflow 32 bits")
    if header.step_kind == StepKind.NONE:
        raise FrameError("bad-step", "an activation frame must name its step kind")
    if header.step_kind == StepKind.DECODE and header.rows != 1:
        raise FrameError("bad-step", f"a decode step carries one row, not {header.rows}")
    if header.layer_end < header.layer_start or header.layer_end - header.layer_start > 64:
        raise FrameError("bad-layers", f"layer range [{header.layer_start}, {header.layer_end}) is invalid")
    if header.skip_mask >> max(header.layer_end - header.layer_start, 0):
        raise FrameError("bad-layers", "skip mask names layers outside the range")
    int8 = header.encoding == Encoding.INT8_BLOCK
    if int8 and not 1 <= header.block <= 4096:
        raise FrameError("bad-block", f"int8 block size {header.block} is invalid")
    if not int8 and (header.block or header.flags & (Flag.DELTA | Flag.RUN_LENGTH)):
        raise FrameError("bad-flags", "block size, delta and run-length apply to int8 frames only")


def retarget(frame: bytes, kind: FrameKind, layer_start: int, layer_end: int, skip_mask: int = 0,
             no_reply: bool = False, report: bool = False) -> bytes:
    """The same payload under a new routing header (the checksum covers the payload only).

    Lets a relay pass one node's RESULT on as the next node's FORWARD without decoding
    and re-quantizing it. `frame` must already be valid (built here, or checked by
    parse_frame on arrival): this only rewrites header fields, it does not check again.
    """
    (magic, version, _, flags, stream, position, rows, columns, block, _, _, _,
     step, step_kind, reserved, payload_length, checksum) = _fields(frame)
    flags = flags & ~int(Flag.NO_REPLY | Flag.REPORT) | (int(Flag.NO_REPLY) if no_reply else 0) \
        | (int(Flag.REPORT) if report else 0)
    fields = HEADER.pack(magic, version, int(kind), flags, stream, position, rows, columns, block,
                         layer_start, layer_end, skip_mask, step, step_kind, reserved, payload_length, checksum)
    return fields + frame[HEADER_SIZE:]


def with_no_reply(frame: bytes) -> bytes:
    """The same frame with NO_REPLY set (a replayed FORWARD whose RESULT nobody needs).
    Like `retarget`, it rewrites the header of a frame that is already valid."""
    flags = int.from_bytes(frame[6:8], "little") | int(Flag.NO_REPLY)
    return frame[:6] + flags.to_bytes(2, "little") + frame[8:]
