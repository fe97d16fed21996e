"""Codec stages: round trips (hypothesis), stated error bounds, closed-loop delta without
drift, run-length coding, control validation, and a fuzz run of the decoder."""

from __future__ import annotations

import random

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from protocol import quantization, run_length
from protocol.activation_codec import (
    LOSSLESS,
    CodecSettings,
    Route,
    StreamCodecState,
    decode_activation,
    encode_activation,
)
from protocol.control import (
    ErrorReport,
    Release,
    Truncate,
    decode_control,
    encode_control,
    from_map,
    to_map,
)
from protocol.errors import FrameError
from protocol.frames import (
    CHECKSUM_OFFSET,
    HEADER_SIZE,
    Encoding,
    Flag,
    FrameKind,
    StepKind,
    pack_frame,
    parse_frame,
    retarget,
)

ROUTE = Route(FrameKind.FORWARD, stream=1, position=0, layer_start=0, layer_end=4)
finite = st.floats(-3e4, 3e4, allow_nan=False, width=32)


def matrices(max_rows=6, max_columns=130):
    shapes = st.tuples(st.integers(1, max_rows), st.integers(1, max_columns))
    return shapes.flatmap(lambda shape: arrays(np.float32, shape, elements=finite))


def int8_bound(values: np.ndarray, block: int) -> np.ndarray:
    """The stated per-value bound: half the block's float16 scale (plus float32 rounding)."""
    scales = quantization.scales_for(values.astype(np.float64), block)
    return quantization.expand(scales, values.shape[1], block) / 2 + np.abs(values) * 2**-23 + 1e-30


@given(matrices())
@settings(max_examples=200, deadline=None)
def test_float32_mode_is_lossless(values):
    _, decoded = decode_activation(encode_activation(values, ROUTE, LOSSLESS))
    assert np.array_equal(decoded, values)


@given(matrices(), st.sampled_from([1, 7, 32, 64]), st.booleans())
@settings(max_examples=200, deadline=None)
def test_int8_error_within_half_a_scale(values, block, use_run_length):
    frame = encode_activation(values, ROUTE, CodecSettings(block=block, run_length=use_run_length))
    header, decoded = decode_activation(frame)
    assert header.rows, header.columns == values.shape
    assert (np.abs(decoded.astype(np.float64) - values) <= int8_bound(values, block)).all()


@given(arrays(np.float32, (4, 50), elements=st.floats(-6e4, 6e4, width=32)))
@settings(max_examples=100, deadline=None)
def test_float16_mode_error_is_float16_rounding(values):
    settings_f16 = CodecSettings(encoding=Encoding.FLOAT16, block=0, run_length=False)
    _, decoded = decode_activation(encode_activation(values, ROUTE, settings_f16))
    assert np.array_equal(decoded, values.astype(np.float16).astype(np.float32))


@given(st.binary(max_size=600))
@settings(max_examples=300, deadline=None)
def test_run_length_round_trip(data):
    coded = run_length.encode(data)
    assert run_length.decode(coded, len(data)) == data


def test_run_length_shrinks_long_zero_runs_and_keeps_short_ones_literal():
    assert run_length.encode(bytes(1000)) == bytes([0xFF] * 7 + [0x7F + 1000 - 7 * 128])
    assert run_length.encode(b"\x05\x00\x00\x06") == b"\x03\x05\x00\x00\x06"  # a 2-zero run stays literal


def test_delta_does_not_drift_over_1000_tokens():
    """Closed loop: after 1,000 tokens the error is still within the single-step bound."""
    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.standard_normal((1000, 96)) * 0.3, axis=0).astype(np.float32) + 40.0
    settings_delta = CodecSettings(block=32, delta=True, key_interval=10_000)
    encoder, decoder = StreamCodecState(), StreamCodecState()
    errors, reconstructed = [], np.zeros(96)
    for position, row in enumerate(walk):
        route = Route(FrameKind.FORWARD, 1, position, 0, 1)
        frame = encode_activation(row[None], route, settings_delta, encoder)
        _, decoded = decode_activation(frame, decoder)
        # Single-step bound: half the scale of this step's residual against the decoder's own
        # previous reconstruction, plus float32 rounding of the sum.
        residual = row[None].astype(np.float64) - reconstructed
        bound = quantization.expand(quantization.scales_for(residual, 32), 96, 32) / 2
        assert (np.abs(decoded.astype(np.float64) - row) <= bound + np.abs(row) * 2**-23).all()
        errors.append(float(np.abs(decoded - row).max()))
        reconstructed = decoded[0].astype(np.float64)
    assert np.array_equal(encoder.previous, decoder.previous)
    # No growth: the last 100 tokens are no worse than tokens 1-100 (an open loop would grow ~linearly).
    assert max(errors[900:]) <= 2 * max(errors[1:101])


def test_delta_frames_without_state_or_key_are_rejected():
    settings_delta = CodecSettings(block=32, delta=True)
    encoder = StreamCodecState()
    rows = np.ones((2, 32), dtype=np.float32)
    encode_activation(rows, ROUTE, settings_delta, encoder)            # key frame
    second = encode_activation(rows, ROUTE, settings_delta, encoder)   # delta against the key frame
    with pytest.raises(FrameError, match="no previous row"):
        decode_activation(second, StreamCodecState())
    with pytest.raises(FrameError, match="needs the stream"):
        decode_activation(second)


def test_prefill_frame_codes_rows_against_previous_row():
    settings_delta = CodecSettings(block=16, delta=True)
    rows = np.tile(np.linspace(-5, 5, 48, dtype=np.float32), (5, 1))
    rows[1:] += 0.01
    decoder = StreamCodecState()
    frame = encode_activation(rows, ROUTE, settings_delta, StreamCodecState())
    _, decoded = decode_activation(frame, decoder)
    assert np.abs(decoded - rows).max() < 0.03
    assert np.array_equal(decoder.previous, decoded[-1])


def test_nonfinite_and_float16_overflow_are_refused_at_encode():
    with pytest.raises(ValueError):
        encode_activation(np.array([[np.nan]], dtype=np.float32), ROUTE, LOSSLESS)
    with pytest.raises(ValueError):
        encode_activation(np.array([[7e4]], dtype=np.float32), ROUTE,
                          CodecSettings(encoding=Encoding.FLOAT16, block=0, run_length=False))


@pytest.mark.parametrize("message, problem", [
    ({"type": "nope"}, "unknown control message type"),
    ({"type": "release"}, "required field 'stream'"),
    ({"type": "release", "stream": "7"}, "has type str"),
    ({"type": "ready", "layer_start": 0, "layer_end": 2, "load_ms": 1, "cached": 1}, "has type int"),
    ([1, 2], "must be a map"),
])
def test_control_schema_violations(message, problem):
    with pytest.raises(FrameError, match=problem):
        from_map(message)


def test_a_typed_message_with_a_wrong_field_type_is_refused_before_sending():
    """Dataclasses do not check types: the encoder does, naming the field."""
    with pytest.raises(FrameError, match="truncate: field 'length' has type str"):
        encode_control(Truncate(stream=1, length="9"))  # type: ignore[arg-type]
    with pytest.raises(FrameError, match="not a control message"):
        encode_control({"type": "release", "stream": 3})  # type: ignore[arg-type]


def test_control_round_trip_is_typed_and_drops_unset_fields():
    frame = encode_control(ErrorReport(code="bad-frame", message="crc", stream=4), stream=4)
    decoded = decode_control(frame)
    assert decoded == ErrorReport(code="bad-frame", message="crc", stream=4)
    assert to_map(decoded) == {"type": "error", "code": "bad-frame", "message": "crc", "stream": 4}


def test_unknown_extra_fields_are_ignored():
    frame = pack_frame(FrameKind.CONTROL, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                       msgpack.packb({"type": "release", "stream": 3, "newer_field": [1]}))
    assert decode_control(frame) == Release(stream=3)


def test_control_payload_that_is_not_msgpack():
    frame = pack_frame(FrameKind.CONTROL, 0, 0, 0, 0, 0, 0, 0, 0, 0, b"\xc1\xc1\xc1")
    with pytest.raises(FrameError, match="not valid msgpack"):
        decode_control(frame)


@pytest.mark.parametrize("rows, columns", [(0, 576), (70000, 576), (1, 40000), (5000, 5000)])
def test_absurd_shapes_are_rejected_before_allocation(rows, columns):
    frame = pack_frame(FrameKind.FORWARD, int(Encoding.FLOAT32), 1, 0, rows, columns, 0, 0, 1, 0, b"\x00" * 8,
                       step_kind=StepKind.PREFILL)
    with pytest.raises(FrameError) as caught:
        parse_frame(frame)
    assert caught.value.reason in ("bad-shape",)


def test_fuzz_ten_thousand_frames_raise_only_frame_errors():
    """Random and mutated frames: every one decodes or raises FrameError, nothing else."""
    rng = random.Random(1234)
    numbers = np.random.default_rng(1234)
    seeds = []
    for settings_case in (LOSSLESS, CodecSettings(block=32), CodecSettings(block=16, delta=True),
                          CodecSettings(encoding=Encoding.FLOAT16, block=0, run_length=False)):
        values = (numbers.standard_normal((3, 40)) * (numbers.random((3, 40)) < 0.4)).astype(np.float32)
        seeds.append(encode_activation(values, ROUTE, settings_case, StreamCodecState()))
    seeds.append(encode_control(Release(stream=3)))
    outcomes = {"decoded": 0, "rejected": 0}
    for trial in range(10_000):
        frame = bytearray(rng.choice(seeds))
        mode = trial % 4
        if mode == 0:      # flip random bytes, then fix the checksum half the time so deeper checks run
            for _ in range(rng.randint(1, 6)):
                frame[rng.randrange(len(frame))] = rng.randrange(256)
            if rng.random() < 0.5 and len(frame) >= HEADER_SIZE:
                import zlib
                frame[CHECKSUM_OFFSET:HEADER_SIZE] = (zlib.crc32(bytes(frame[HEADER_SIZE:])) & 0xFFFFFFFF).to_bytes(4, "little")
        elif mode == 1:    # truncate or extend
            frame = frame[: rng.randrange(len(frame))] if rng.random() < 0.5 else frame + bytes(rng.randrange(1, 50))
        elif mode == 2:    # random header fields with a valid checksum
            import zlib
            for offset in rng.sample(range(4, CHECKSUM_OFFSET), 3):
                frame[offset] = rng.randrange(256)
            frame[CHECKSUM_OFFSET:HEADER_SIZE] = (zlib.crc32(bytes(frame[HEADER_SIZE:])) & 0xFFFFFFFF).to_bytes(4, "little")
        else:              # pure noise
            frame = bytearray(rng.randbytes(rng.randrange(0, 200)))
        try:
            if len(frame) > 5 and frame[5] == FrameKind.CONTROL:
                decode_control(bytes(frame))
            else:
                decode_activation(bytes(frame), StreamCodecState())
            outcomes["decoded"] += 1
        except FrameError:
            outcomes["rejected"] += 1
    assert outcomes["decoded"] + outcomes["rejected"] == 10_000
    assert outcomes["rejected"] > 5_000 and outcomes["decoded"] > 100


@pytest.mark.parametrize("kind, rows, step, reason", [
    (StepKind.NONE, 1, 0, "must name its step kind"),
    (StepKind.DECODE, 2, 5, "one row"),
])
def test_activation_frames_name_a_consistent_step(kind, rows, step, reason):
    frame = pack_frame(FrameKind.FORWARD, int(Encoding.FLOAT32), 1, 0, rows, 2, 0, 0, 1, 0, b"\x00" * 8 * rows,
                       step=step, step_kind=kind)
    with pytest.raises(FrameError, match=reason) as caught:
        parse_frame(frame)
    assert caught.value.reason == "bad-step"


def test_control_frames_carry_no_step():
    frame = pack_frame(FrameKind.CONTROL, 0, 0, 0, 0, 0, 0, 0, 0, 0, b"\x80", step=3, step_kind=StepKind.NONE)
    with pytest.raises(FrameError) as caught:
        parse_frame(frame)
    assert caught.value.reason == "bad-step"


def test_step_id_and_kind_round_trip_and_survive_retarget():
    values = np.ones((3, 8), dtype=np.float32)
    route = Route(FrameKind.RESULT, 7, 11, 0, 15, step=123_456, step_kind=StepKind.VERIFY)
    relayed = retarget(encode_activation(values, route, CodecSettings(block=8)), FrameKind.FORWARD, 15, 30)
    header, _ = parse_frame(relayed)
    assert (header.step, header.step_kind, header.rows) == (123_456, StepKind.VERIFY, 3)


def test_retarget_changes_routing_and_keeps_the_payload():
    values = np.random.default_rng(3).standard_normal((2, 40)).astype(np.float32)
    result = encode_activation(values, Route(FrameKind.RESULT, 7, 11, 0, 15), CodecSettings(block=8))
    relayed = retarget(result, FrameKind.FORWARD, 15, 30, skip_mask=0b101, no_reply=True)
    header, decoded = decode_activation(relayed)
    assert (header.kind, header.layer_start, header.layer_end, header.skip_mask) == (FrameKind.FORWARD, 15, 30, 0b101)
    assert (header.stream, header.position) == (7, 11) and header.has(Flag.NO_REPLY)
    assert relayed[HEADER_SIZE:] == result[HEADER_SIZE:]
    assert np.array_equal(decoded, decode_activation(result)[1])
    back = retarget(relayed, FrameKind.FORWARD, 15, 30)
    assert not parse_frame(back)[0].has(Flag.NO_REPLY)


def test_report_flag_is_set_per_forward_and_cleared_by_the_next_retarget():
    """A relayed RESULT asks the next stage for layer_stats only when the coordinator says so."""
    result = encode_activation(np.ones((1, 16), dtype=np.float32), Route(FrameKind.RESULT, 3, 9, 0, 4),
                               CodecSettings(block=8))
    asking = retarget(result, FrameKind.FORWARD, 4, 8, report=True)
    assert parse_frame(asking)[0].has(Flag.REPORT)
    assert not parse_frame(retarget(asking, FrameKind.FORWARD, 8, 12))[0].has(Flag.REPORT)
