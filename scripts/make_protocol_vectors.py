"""Generate protocol/vectors/*.json: golden frames that the Python and JS codecs must match.

Run once when the wire format changes (`python scripts/make_protocol_vectors.py`); the
tests on both sides read these files and never rewrite them.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import numpy as np

from protocol.activation_codec import (
    CodecSettings,
    Route,
    StreamCodecState,
    decode_activation,
    encode_activation,
)
from protocol.boundary_rounding import BoundaryRounding
from protocol.control import SCHEMAS, encode_control, from_map
from protocol.frames import CHECKSUM_OFFSET, HEADER_SIZE, Encoding, FrameKind, StepKind, pack_frame

OUT = Path(__file__).resolve().parent.parent / "protocol" / "vectors"


def settings_json(settings: CodecSettings) -> dict:
    return {"encoding": int(settings.encoding), "block": settings.block, "delta": settings.delta,
            "run_length": settings.run_length, "key_interval": settings.key_interval,
            "round_layers": settings.round_layers}


def activation_vectors() -> list[dict]:
    rng = np.random.default_rng(2024)
    massive = rng.standard_normal((2, 96)).astype(np.float32)
    massive[0, 17] = 20000.0
    sparse = (rng.standard_normal((2, 100)) * (rng.random((2, 100)) < 0.3)).astype(np.float32)
    sparse[1, 40:90] = 0.0
    cases = [
        ("float32", CodecSettings(encoding=Encoding.FLOAT32, block=0, run_length=False),
         [rng.standard_normal((1, 70)).astype(np.float32)]),
        ("float16", CodecSettings(encoding=Encoding.FLOAT16, block=0, run_length=False),
         [(rng.standard_normal((3, 40)) * 100).astype(np.float32)]),
        ("int8_block32_short_last_block", CodecSettings(block=32, run_length=False),
         [rng.standard_normal((2, 70)).astype(np.float32)]),
        ("int8_massive_activation", CodecSettings(block=32, run_length=False), [massive]),
        ("int8_run_length", CodecSettings(block=16, run_length=True), [sparse]),
        ("int8_all_zero", CodecSettings(block=8, run_length=True), [np.zeros((1, 300), dtype=np.float32)]),
        ("int8_delta_stream", CodecSettings(block=32, delta=True, key_interval=4, run_length=True),
         [np.cumsum(rng.standard_normal((3, 64)), axis=0).astype(np.float32)]
         + [rng.standard_normal((1, 64)).astype(np.float32) for _ in range(3)]),
        ("int8_round_layers_flag", CodecSettings(block=32, run_length=True, round_layers=True),
         [rng.standard_normal((2, 64)).astype(np.float32)]),
    ]
    vectors = []
    for name, settings, inputs in cases:
        encoder, decoder = StreamCodecState(), StreamCodecState()
        frames, position = [], 0
        for step, values in enumerate(inputs, start=1):
            kind = StepKind.DECODE if position and values.shape[0] == 1 else StepKind.PREFILL
            route = Route(FrameKind.FORWARD, stream=5, position=position, layer_start=2, layer_end=7,
                          step=step, step_kind=kind)
            frame = encode_activation(values, route, settings, encoder)
            _, decoded = decode_activation(frame, decoder)
            frames.append({"rows": values.shape[0], "columns": values.shape[1], "position": position,
                           "step": step, "step_kind": int(kind),
                           "input": values.astype("<f4").tobytes().hex(), "frame": frame.hex(),
                           "decoded": decoded.astype("<f4").tobytes().hex()})
            position += values.shape[0]
        vectors.append({"name": name, "settings": settings_json(settings), "stream": 5,
                        "layer_start": 2, "layer_end": 7, "kind": int(FrameKind.FORWARD), "frames": frames})
    # A multi-row verify step (speculative decoding) as a RESULT frame.
    values = rng.standard_normal((4, 20)).astype(np.float32)
    route = Route(FrameKind.RESULT, stream=8, position=40, layer_start=0, layer_end=3, step=77,
                  step_kind=StepKind.VERIFY)
    settings = CodecSettings(block=8, run_length=True)
    frame = encode_activation(values, route, settings)
    _, decoded = decode_activation(frame)
    vectors.append({"name": "verify_step_result", "settings": settings_json(settings), "stream": 8,
                    "layer_start": 0, "layer_end": 3, "kind": int(FrameKind.RESULT),
                    "frames": [{"rows": 4, "columns": 20, "position": 40, "step": 77,
                                "step_kind": int(StepKind.VERIFY), "input": values.tobytes().hex(),
                                "frame": frame.hex(), "decoded": decoded.tobytes().hex()}]})
    # Header fields at their limits: a RESULT frame, a K/V backfill with a skip mask, a large position.
    values = rng.standard_normal((1, 12)).astype(np.float32)
    route = Route(FrameKind.FORWARD, stream=4_000_000_000, position=3_000_000_000, layer_start=10,
                  layer_end=15, skip_mask=0b11111, no_reply=True, step=4_294_967_295, step_kind=StepKind.DECODE)
    settings = CodecSettings(block=4, run_length=False)
    frame = encode_activation(values, route, settings)
    _, decoded = decode_activation(frame)
    vectors.append({"name": "header_limits_no_reply_skip_mask", "settings": settings_json(settings),
                    "stream": route.stream, "layer_start": 10, "layer_end": 15, "skip_mask": route.skip_mask,
                    "no_reply": True, "kind": int(FrameKind.FORWARD),
                    "frames": [{"rows": 1, "columns": 12, "position": route.position, "step": route.step,
                                "step_kind": int(route.step_kind),
                                "input": values.tobytes().hex(), "frame": frame.hex(),
                                "decoded": decoded.tobytes().hex()}]})
    return vectors


def round_trip_vectors() -> list[dict]:
    """The rounding every layer boundary inside a stage applies (protocol/boundary_rounding.py)."""
    rng = np.random.default_rng(2026)
    massive = rng.standard_normal((2, 96)).astype(np.float32)
    massive[1, 5] = -3000.0
    cases = [("int8_block32_short_last_block", Encoding.INT8_BLOCK, 32, rng.standard_normal((3, 70)) * 4),
             ("int8_massive_activation", Encoding.INT8_BLOCK, 32, massive),
             ("int8_block64_with_zero_block", Encoding.INT8_BLOCK, 64,
              np.concatenate([np.zeros((1, 64)), rng.standard_normal((1, 64))], axis=1)),
             ("float16", Encoding.FLOAT16, 0, rng.standard_normal((2, 40)) * 300),
             ("float32_unchanged", Encoding.FLOAT32, 0, rng.standard_normal((1, 9)))]
    vectors = []
    for name, encoding, block, values in cases:
        values = np.asarray(values, dtype=np.float32)
        rounded = BoundaryRounding(encoding, block).apply(values)
        vectors.append({"name": name, "encoding": int(encoding), "block": block, "rows": values.shape[0],
                        "columns": values.shape[1], "input": values.astype("<f4").tobytes().hex(),
                        "rounded": np.asarray(rounded, dtype="<f4").tobytes().hex()})
    return vectors


def invalid_vectors(good: bytes) -> list[dict]:
    def mutate(offset: int, value: int) -> bytes:
        data = bytearray(good)
        data[offset] = value
        return bytes(data)

    step_kind_offset = CHECKSUM_OFFSET - 8
    return [
        {"name": "truncated_header", "frame": good[:20].hex(), "reason": "truncated"},
        {"name": "old_version_1", "frame": mutate(4, 1).hex(), "reason": "bad-version"},
        {"name": "unknown_step_kind", "frame": mutate(step_kind_offset, 9).hex(), "reason": "bad-step"},
        {"name": "activation_without_step_kind", "frame": mutate(step_kind_offset, 0).hex(), "reason": "bad-step"},
        {"name": "reserved_byte_set", "frame": mutate(step_kind_offset + 2, 1).hex(), "reason": "bad-reserved"},
        {"name": "bad_magic", "frame": mutate(0, ord("X")).hex(), "reason": "bad-magic"},
        {"name": "bad_version", "frame": mutate(4, 9).hex(), "reason": "bad-version"},
        {"name": "bad_kind", "frame": mutate(5, 77).hex(), "reason": "bad-kind"},
        {"name": "length_disagrees", "frame": good[:-1].hex(), "reason": "bad-length"},
        {"name": "checksum_mismatch", "frame": mutate(HEADER_SIZE + 3, good[HEADER_SIZE + 3] ^ 0x40).hex(),
         "reason": "bad-checksum"},
    ]


def control_vectors() -> list[dict]:
    messages = [
        {"type": "hello", "protocol": 2, "backend": "wasm", "threads": 1, "benchmark_ms": 12.5,
         "agent": "Chromium", "worker": "tab-1"},
        {"type": "assign", "worker": "w1", "layer_start": 0, "layer_end": 15,
         "files": [{"name": "layer_00.onnx", "size": 14163153, "sha256": "ab" * 32}],
         "model": {"hidden": 576, "kv_heads": 3, "head_dim": 64}, "codec": {"encoding": 2, "block": 64}},
        {"type": "ready", "layer_start": 0, "layer_end": 15, "load_ms": 812, "cached": True, "backend": "wasm"},
        {"type": "heartbeat", "time": 1700000000.25},
        {"type": "release", "stream": 42},
        {"type": "truncate", "stream": 42, "length": 57},
        {"type": "retain", "layer_start": 10, "layer_end": 20},
        {"type": "layer_stats", "position": 17, "ratios": [0.25, 0.5], "node_ratio": 0.4375, "norms": [30.5, 31.0]},
        {"type": "layer_stats", "position": 16, "ratios": [0.25], "node_ratio": 0.25, "norms": [30.5],
         "head_ratios": [[0.03125, 0.0625, 0.5]]},
        {"type": "head_mask", "stream": 5, "layer_start": 3, "masks": [[1, 0, 1], [1, 1, 1]]},
        {"type": "error", "code": "bad-frame", "message": "payload CRC-32 does not match", "stream": 3},
        {"type": "error", "code": "bad-position", "message": "frame position 12 is not the cache length 11",
         "stream": 3, "step": 19},
        {"type": "leave", "reason": "page closed"},
    ]
    return [{"message": message, "frame": encode_control(from_map(message), stream=9).hex()} for message in messages]


def malformed_control_vectors() -> list[dict]:
    """Control frames whose map breaks the schema: both codecs refuse them naming the field."""
    cases = [
        ("missing_required_field", {"type": "truncate", "stream": 4}, "length"),
        ("string_where_int", {"type": "hello", "protocol": 3, "backend": "wasm", "threads": "2",
                              "benchmark_ms": 9.5}, "threads"),
        ("bool_where_int", {"type": "release", "stream": True}, "stream"),
        ("float_where_int", {"type": "retain", "layer_start": 1.5, "layer_end": 4}, "layer_start"),
        ("map_where_list", {"type": "head_mask", "stream": 1, "layer_start": 0, "masks": {"a": 1}}, "masks"),
        ("optional_of_wrong_type", {"type": "ready", "layer_start": 0, "layer_end": 2, "load_ms": 5,
                                    "cached": "yes"}, "cached"),
        ("unknown_type", {"type": "helo", "protocol": 3}, "type"),
    ]
    return [{"name": name, "field": field, "reason": "bad-control",
             "frame": pack_frame(FrameKind.CONTROL, 0, 9, 0, 0, 0, 0, 0, 0, 0,
                                 msgpack.packb(message, use_bin_type=True)).hex()}
            for name, message, field in cases]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    activations = activation_vectors()
    good = bytes.fromhex(activations[2]["frames"][0]["frame"])
    (OUT / "activation.json").write_text(json.dumps(
        {"activation": activations, "invalid": invalid_vectors(good), "round_trip": round_trip_vectors()},
        indent=1) + "\n")
    schemas = {kind: {name: [[t.__name__ for t in types], required]
                      for name, (types, required) in fields.items()} for kind, fields in SCHEMAS.items()}
    (OUT / "control.json").write_text(json.dumps(
        {"messages": control_vectors(), "malformed": malformed_control_vectors(), "schemas": schemas}, indent=1) + "\n")
    print(f"wrote {OUT}/activation.json and control.json")


if __name__ == "__main__":
    main()
