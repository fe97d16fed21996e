"""Compact layer weights: the file format, the decoder against the committed vectors (which
the tab's decoder must match too), and a real layer computing from the GGUF's own blocks
exactly what the same layer computes with float32 weights inside its graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from shards.compact_weights import (
    BLOCK_TYPES,
    decode_rows,
    decode_weights,
    graph_with_weights,
    read_header,
    write_weights,
)
from shards.convert import MATRIX_ROLES
from shards.errors import ShardIntegrityError
from shards.executor import layer_graph_source
from shards.gguf_model import GGUFModel, default_model_path
from shards.graphs import build_layer
from shards.manifest import load_manifest

VECTORS = json.loads((Path(__file__).parents[2] / "shards" / "vectors" / "weights.json").read_text())


def test_vectors_cover_every_kept_type_and_decode_to_the_recorded_values():
    data = bytes.fromhex(VECTORS["file"])
    tensors, _ = read_header(data)
    assert sorted(tensor.type for tensor in tensors) == sorted(BLOCK_TYPES)
    decoded = decode_weights(data)
    for name, expected in VECTORS["expected"].items():
        want = np.frombuffer(bytes.fromhex(expected["float32"]), dtype="<f4").reshape(expected["shape"])
        assert np.array_equal(decoded[name].view(np.uint32), want.view(np.uint32)), name


def test_write_then_read_round_trips_and_transposes(tmp_path):
    rng = np.random.default_rng(1)
    values = rng.standard_normal((4, 64)).astype(np.float32)
    path = tmp_path / "t.weights"
    write_weights(path, [("a", "F32", values.view(np.uint8), 64, True), ("b", "F32", values.view(np.uint8), 64, False)])
    decoded = decode_weights(path.read_bytes())
    assert np.array_equal(decoded["a"], values.T) and np.array_equal(decoded["b"], values)


def test_malformed_files_are_refused_with_a_reason(tmp_path):
    data = bytes.fromhex(VECTORS["file"])
    with pytest.raises(ShardIntegrityError, match="bad magic"):
        read_header(b"XXXX" + data[4:])
    with pytest.raises(ShardIntegrityError, match="does not fit"):
        read_header(data[:-100])
    with pytest.raises(ValueError, match="whole number of blocks"):
        write_weights(tmp_path / "bad.weights", [("a", "Q4_0", np.zeros((1, 18), np.uint8), 40, False)])


def test_a_graph_missing_a_tensor_in_its_weights_file_is_refused(shard_dir):
    with pytest.raises(ShardIntegrityError, match="lacks"):
        graph_with_weights(shard_dir / "layer_00.onnx", {})


def test_real_layer_from_the_ggufs_blocks_equals_the_float32_layer(shard_dir):
    """Layer 5 of the default model: decoded compact weights are the float32 weights bit for
    bit (Q/K rows permuted as blocks), so both graphs give identical outputs."""
    manifest = load_manifest(shard_dir)
    assert manifest.weight_format["stored"] == "gguf-blocks"
    assert manifest.weight_format["layer_matrix_types"] == {"Q4_1": 7 * manifest.model.layers}
    model = GGUFModel(default_model_path())
    weights = model.layer_weights(5)
    kind, raw, cols = model.layer_raw_matrices(5, tuple(MATRIX_ROLES.values()))["attn_q"]
    assert kind == "Q4_1" and np.array_equal(decode_rows(kind, raw, cols), weights["attn_q"])
    compact = ort.InferenceSession(layer_graph_source(shard_dir, manifest, 5))
    inline = ort.InferenceSession(build_layer(manifest.model, weights, 5).SerializeToString())
    hidden = np.random.default_rng(2).standard_normal((1, 3, manifest.model.hidden)).astype(np.float32)
    empty = np.zeros((1, manifest.model.kv_heads, 0, manifest.model.head_dim), dtype=np.float32)
    feeds = {"hidden": hidden, "positions": np.arange(3)[None], "past_key": empty, "past_value": empty,
             "head_mask": np.ones(manifest.model.heads, dtype=np.float32)}
    for got, want in zip(compact.run(None, feeds), inline.run(None, feeds), strict=True):
        assert np.array_equal(got, want)
