"""Control messages: one frozen dataclass per type, one codec, msgpack maps in CONTROL frames.

Owns the message types (the `ControlMessage` union), their schema table (derived from the
dataclasses; SPEC.md lists the same, the JS side is checked against it through the golden
vectors) and validation: a message with an unknown type, a missing required field or a
field of the wrong type raises FrameError naming that field. Unknown extra fields on the
wire are ignored (a newer peer may add fields). Pure: no I/O.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeAlias, Union, get_args, get_origin, get_type_hints

import msgpack

from protocol.errors import FrameError
from protocol.frames import FrameKind, pack_frame, parse_frame

# layer_stats carries head_ratios for one-row frames at positions that are multiples of this.
HEAD_SAMPLE_INTERVAL = 8


@dataclass(frozen=True)
class Hello:
    """Tab -> coordinator, first: what the tab is and what it gives."""
    TYPE: ClassVar[str] = "hello"
    protocol: int
    backend: str
    threads: int
    benchmark_ms: float
    memory_mb: float | None = None
    agent: str | None = None
    worker: str | None = None
    secure_context: bool | None = None
    webgpu_api: bool | None = None
    cache_storage: bool | None = None


@dataclass(frozen=True)
class Assign:
    """Coordinator -> tab: load layers [layer_start, layer_end) from these files."""
    TYPE: ClassVar[str] = "assign"
    worker: str
    layer_start: int
    layer_end: int
    files: list[Any]
    model: dict[str, Any]
    codec: dict[str, Any]
    layers: list[Any] | None = None
    compute: str | None = None
    protocol: int | None = None
    role: str | None = None


@dataclass(frozen=True)
class Ready:
    """Tab -> coordinator: the assigned layers are loaded."""
    TYPE: ClassVar[str] = "ready"
    layer_start: int
    layer_end: int
    load_ms: float
    cached: bool | None = None
    backend: str | None = None
    downloaded_bytes: int | None = None
    weight_bytes: int | None = None
    memory_mb: float | None = None


@dataclass(frozen=True)
class Heartbeat:
    TYPE: ClassVar[str] = "heartbeat"
    time: float


@dataclass(frozen=True)
class Stats:
    """Tab -> coordinator: what it has served and measured."""
    TYPE: ClassVar[str] = "stats"
    tokens: int
    compute_ms: float
    streams: int | None = None
    memory_used_mb: float | None = None
    timing: dict[str, Any] | None = None
    batching: dict[str, Any] | None = None   # passes run, frames they held, the most in one (stream batching)


@dataclass(frozen=True)
class Release:
    """Coordinator -> tab: drop this stream's KV cache."""
    TYPE: ClassVar[str] = "release"
    stream: int


@dataclass(frozen=True)
class Truncate:
    """Coordinator -> tab: cut this stream's KV cache to `length` positions."""
    TYPE: ClassVar[str] = "truncate"
    stream: int
    length: int


@dataclass(frozen=True)
class Retain:
    """Coordinator -> tab: keep only layers [layer_start, layer_end)."""
    TYPE: ClassVar[str] = "retain"
    layer_start: int
    layer_end: int


@dataclass(frozen=True)
class HeadMask:
    """Coordinator -> tab: attention heads to run per layer from layer_start, for one stream."""
    TYPE: ClassVar[str] = "head_mask"
    stream: int
    layer_start: int
    masks: list[Any]


@dataclass(frozen=True)
class LayerStats:
    """Tab -> coordinator: the router's per-layer measurements for one position."""
    TYPE: ClassVar[str] = "layer_stats"
    position: int
    ratios: list[Any]
    node_ratio: float
    norms: list[Any] | None = None
    head_ratios: list[Any] | None = None


@dataclass(frozen=True)
class Progress:
    """Tab -> coordinator: loading progress."""
    TYPE: ClassVar[str] = "progress"
    done: int
    total: int
    what: str | None = None


@dataclass(frozen=True)
class ErrorReport:
    """Tab -> coordinator: something failed (for one stream's step when `stream` is set)."""
    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    stream: int | None = None
    step: int | None = None
    holds: list[Any] | None = None


@dataclass(frozen=True)
class Leave:
    TYPE: ClassVar[str] = "leave"
    reason: str


ControlMessage: TypeAlias = (Hello | Assign | Ready | Heartbeat | Stats | Release | Truncate | Retain | HeadMask
                  | LayerStats | Progress | ErrorReport | Leave)
MESSAGE_TYPES: dict[str, type[ControlMessage]] = {
    cls.TYPE: cls for cls in (Hello, Assign, Ready, Heartbeat, Stats, Release, Truncate, Retain, HeadMask,
                              LayerStats, Progress, ErrorReport, Leave)}

_WIRE_TYPES: dict[Any, tuple[type, ...]] = {int: (int,), float: (int, float), str: (str,), bool: (bool,),
                                            list: (list,), dict: (dict,)}


def _wire_types(hint: Any) -> tuple[tuple[type, ...], bool]:
    """(accepted Python types, required) for one field's annotation."""
    args = get_args(hint)
    optional = get_origin(hint) in (Union, types.UnionType) and type(None) in args
    if optional:
        (hint,) = [arg for arg in args if arg is not type(None)]
    return _WIRE_TYPES[get_origin(hint) or hint], not optional


# type -> {field: (python types, required)}, derived from the dataclasses
SCHEMAS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    kind: {name: _wire_types(hint) for name, hint in get_type_hints(cls).items() if name != "TYPE"}
    for kind, cls in MESSAGE_TYPES.items()}


def _check(kind: str, message: dict[str, Any]) -> None:
    for name, (accepted, required) in SCHEMAS[kind].items():
        if name not in message:
            if required:
                raise FrameError("bad-control", f"{kind}: required field {name!r} is missing")
            continue
        value = message[name]
        if (isinstance(value, bool) and bool not in accepted) or not isinstance(value, accepted):
            raise FrameError("bad-control", f"{kind}: field {name!r} has type {type(value).__name__}")


def from_map(message: Any) -> ControlMessage:
    """A decoded msgpack map -> its typed message (FrameError naming the bad field)."""
    if not isinstance(message, dict):
        raise FrameError("bad-control", "a control message must be a map")
    kind = message.get("type")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise FrameError("bad-control", f"unknown control message type {kind!r}")
    _check(cls.TYPE, message)
    return cls(**{name: message[name] for name in SCHEMAS[cls.TYPE] if name in message})


def to_map(message: ControlMessage) -> dict[str, Any]:
    """The wire map: `type` first, then the fields in declaration order, unset ones left out."""
    wire = {"type": message.TYPE}
    wire.update({field.name: value for field in fields(message) if (value := getattr(message, field.name)) is not None})
    _check(message.TYPE, wire)   # a dataclass does not check its own field types
    return wire


SAFE_INTEGER = 2**53 - 1


def canonical(value: Any) -> Any:
    """The canonical msgpack form shared with JavaScript (which has one number type): a
    float with an integral value within +-(2**53 - 1) is encoded as an integer."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= SAFE_INTEGER:
        return int(value)
    if isinstance(value, dict):
        return {key: canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(item) for item in value]
    return value


def encode_control(message: ControlMessage, stream: int = 0) -> bytes:
    if not isinstance(message, tuple(MESSAGE_TYPES.values())):
        raise FrameError("bad-control", f"not a control message: {type(message).__name__}")
    payload = msgpack.packb(canonical(to_map(message)), use_bin_type=True)
    return pack_frame(FrameKind.CONTROL, 0, stream, 0, 0, 0, 0, 0, 0, 0, payload)


def decode_control(frame: bytes | memoryview) -> ControlMessage:
    header, payload = parse_frame(frame)
    if header.kind != FrameKind.CONTROL:
        raise FrameError("bad-kind", "not a control frame")
    try:
        message = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (msgpack.UnpackException, ValueError, TypeError) as error:  # any malformed msgpack
        raise FrameError("bad-control", f"payload is not valid msgpack: {error}") from error
    return from_map(message)
