"""The Python codec against the golden vectors (the JS codec checks the same files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from protocol.activation_codec import (
    LOSSLESS,
    CodecSettings,
    Route,
    StreamCodecState,
    decode_activation,
    encode_activation,
)
from protocol.boundary_rounding import BoundaryRounding
from protocol.control import SCHEMAS, decode_control, encode_control, to_map
from protocol.errors import FrameError
from protocol.frames import Encoding, FrameKind, StepKind

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors"
ACTIVATION = json.loads((VECTORS / "activation.json").read_text())
CONTROL = json.loads((VECTORS / "control.json").read_text())


def floats(text: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(text), dtype="<f4")


def settings_of(data: dict) -> CodecSettings:
    return CodecSettings(encoding=Encoding(data["encoding"]), block=data["block"], delta=data["delta"],
                         run_length=data["run_length"], key_interval=data["key_interval"],
                         round_layers=data["round_layers"])


@pytest.mark.parametrize("vector", ACTIVATION["activation"], ids=lambda v: v["name"])
def test_activation_vector_decodes_and_reencodes(vector):
    decoder, encoder = StreamCodecState(), StreamCodecState()
    for frame in vector["frames"]:
        header, values = decode_activation(bytes.fromhex(frame["frame"]), decoder)
        assert (header.rows, header.columns, header.position) == (frame["rows"], frame["columns"], frame["position"])
        assert (header.step, int(header.step_kind)) == (frame["step"], frame["step_kind"])
        assert np.array_equal(values.ravel(), floats(frame["decoded"]))
        route = Route(FrameKind(vector["kind"]), vector["stream"], frame["position"], vector["layer_start"],
                      vector["layer_end"], vector.get("skip_mask", 0), vector.get("no_reply", False),
                      frame["step"], StepKind(frame["step_kind"]))
        values_in = floats(frame["input"]).reshape(frame["rows"], frame["columns"])
        assert encode_activation(values_in, route, settings_of(vector["settings"]), encoder).hex() == frame["frame"]


@pytest.mark.parametrize("vector", ACTIVATION["invalid"], ids=lambda v: v["name"])
def test_invalid_vector_is_rejected_with_its_reason(vector):
    with pytest.raises(FrameError) as caught:
        decode_activation(bytes.fromhex(vector["frame"]))
    assert caught.value.reason == vector["reason"]


def test_control_vectors_both_ways():
    for entry in CONTROL["messages"]:
        message = decode_control(bytes.fromhex(entry["frame"]))
        assert entry["message"]["type"] == type(message).TYPE
        assert to_map(message) == entry["message"]
        assert encode_control(message, stream=9).hex() == entry["frame"]


@pytest.mark.parametrize("vector", CONTROL["malformed"], ids=lambda v: v["name"])
def test_malformed_control_vector_is_refused_naming_its_field(vector):
    with pytest.raises(FrameError) as caught:
        decode_control(bytes.fromhex(vector["frame"]))
    assert caught.value.reason == vector["reason"]
    assert vector["field"] in caught.value.detail


def test_control_schema_table_is_the_one_in_the_vectors():
    """The table the JS codec is checked against is the dataclasses' table today."""
    assert {kind: {name: [[t.__name__ for t in types], required] for name, (types, required) in fields.items()}
            for kind, fields in SCHEMAS.items()} == CONTROL["schemas"]


def test_vectors_are_what_the_generator_makes_today():
    """The committed vectors equal a fresh run of the generator: the codec has not drifted."""
    from scripts.make_protocol_vectors import (
        activation_vectors,
        control_vectors,
        malformed_control_vectors,
        round_trip_vectors,
    )

    assert activation_vectors() == ACTIVATION["activation"]
    assert round_trip_vectors() == ACTIVATION["round_trip"]
    assert control_vectors() == CONTROL["messages"]
    assert malformed_control_vectors() == CONTROL["malformed"]


@pytest.mark.parametrize("vector", ACTIVATION["round_trip"], ids=lambda v: v["name"])
def test_boundary_rounding_vector(vector):
    values = floats(vector["input"]).reshape(vector["rows"], vector["columns"])
    rounded = BoundaryRounding(Encoding(vector["encoding"]), vector["block"]).apply(values)
    assert np.asarray(rounded, dtype="<f4").tobytes().hex() == vector["rounded"]


@pytest.mark.parametrize("vector", ACTIVATION["round_trip"], ids=lambda v: v["name"])
def test_boundary_rounding_is_what_a_frame_carries(vector):
    """The rounding inside a stage equals encoding a (non-delta) frame and decoding it."""
    values = floats(vector["input"]).reshape(vector["rows"], vector["columns"])
    settings = (LOSSLESS if vector["encoding"] == Encoding.FLOAT32 else
                CodecSettings(encoding=Encoding(vector["encoding"]), block=vector["block"], run_length=True))
    _, decoded = decode_activation(encode_activation(values, Route(FrameKind.FORWARD, 1, 0), settings))
    rounded = BoundaryRounding(Encoding(vector["encoding"]), vector["block"]).apply(values)
    assert np.array_equal(np.asarray(rounded).view(np.uint32), decoded.view(np.uint32))
