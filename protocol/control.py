"""Control messages: msgpack maps inside CONTROL frames, one declared schema per type.

Owns the schema table (SPEC.md lists the same) and validation: a message with an
unknown type, a missing required field or a field of the wrong type raises FrameError.
Unknown extra fields are kept (forward compatibility). Pure; no I/O.
"""

from __future__ import annotations

from typing import Any

import msgpack

from protocol.errors import FrameError
from protocol.frames import FrameKind, pack_frame, parse_frame

# layer_stats carries head_ratios for one-row frames at positions that are multiples of this.
HEAD_SAMPLE_INTERVAL = 8

# type -> {field: (python types, required)}
Number = (int, float)
SCHEMAS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "hello": {"protocol": ((int,), True), "backend": ((str,), True), "threads": ((int,), True),
              "benchmark_ms": (Number, True), "memory_mb": (Number, False), "agent": ((str,), False),
              "worker": ((str,), False), "secure_context": ((bool,), False), "webgpu_api": ((bool,), False),
              "cache_storage": ((bool,), False)},
    "assign": {"worker": ((str,), True), "layer_start": ((int,), True), "layer_end": ((int,), True),
               "files": ((list,), True), "model": ((dict,), True), "codec": ((dict,), True),
               "layers": ((list,), False), "compute": ((str,), False)},
    "ready": {"layer_start": ((int,), True), "layer_end": ((int,), True), "load_ms": (Number, True),
              "cached": ((bool,), False), "backend": ((str,), False),
              "downloaded_bytes": ((int,), False), "weight_bytes": ((int,), False), "memory_mb": (Number, False)},
    "heartbeat": {"time": (Number, True)},
    "stats": {"tokens": ((int,), True), "compute_ms": (Number, True), "streams": ((int,), False),
              "memory_used_mb": (Number, False), "timing": ((dict,), False)},
    "release": {"stream": ((int,), True)},
    "truncate": {"stream": ((int,), True), "length": ((int,), True)},
    "retain": {"layer_start": ((int,), True), "layer_end": ((int,), True)},
    "head_mask": {"stream": ((int,), True), "layer_start": ((int,), True), "masks": ((list,), True)},
    "layer_stats": {"position": ((int,), True), "ratios": ((list,), True), "node_ratio": (Number, True),
                    "norms": ((list,), False), "head_ratios": ((list,), False)},
    "progress": {"done": ((int,), True), "total": ((int,), True), "what": ((str,), False)},
    "error": {"code": ((str,), True), "message": ((str,), True), "stream": ((int,), False),
              "step": ((int,), False), "holds": ((list,), False)},
    "leave": {"reason": ((str,), True)},
}


def validate(message: Any) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise FrameError("bad-control", "a control message must be a map")
    kind = message.get("type")
    schema = SCHEMAS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise FrameError("bad-control", f"unknown control message type {kind!r}")
    for name, (types, required) in schema.items():
        if name not in message:
            if required:
                raise FrameError("bad-control", f"{kind}: required field {name!r} is missing")
            continue
        value = message[name]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise FrameError("bad-control", f"{kind}: field {name!r} has type {type(value).__name__}")
    return message


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


def encode_control(message: dict[str, Any], stream: int = 0) -> bytes:
    payload = msgpack.packb(canonical(validate(message)), use_bin_type=True)
    return pack_frame(FrameKind.CONTROL, 0, stream, 0, 0, 0, 0, 0, 0, 0, payload)


def decode_control(frame: bytes | memoryview) -> dict[str, Any]:
    header, payload = parse_frame(frame)
    if header.kind != FrameKind.CONTROL:
        raise FrameError("bad-kind", "not a control frame")
    try:
        message = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (msgpack.UnpackException, ValueError, TypeError) as error:  # any malformed msgpack
        raise FrameError("bad-control", f"payload is not valid msgpack: {error}") from error
    return validate(message)
