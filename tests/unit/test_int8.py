"""int8 compute: the quantization rule (pinned for Python and the tab by shards/vectors/int8.json),
an int8 layer graph against a numpy layer doing the same integer arithmetic, rows that do not
depend on how many share a pass (bitwise), and a Qwen2 layer (QKV biases, GQA 12/2) in both
compute formats against a plain numpy Qwen2 layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from shards.compact_weights import layer_initializers
from shards.graphs import build_kv_only, build_layer
from shards.int8 import int8_group, quantize_int8
from shards.model_config import LayerSpec, ModelConfig
from tests.unit.test_graphs import numpy_layer, random_weights

VECTORS = json.loads((Path(__file__).parents[2] / "shards" / "vectors" / "int8.json").read_text())
QWEN = ModelConfig(architecture="qwen2", name="tiny-qwen2", layers=1, hidden=96, heads=12, kv_heads=2, head_dim=8,
                   mlp_hidden=160, vocab=64, context=128, norm_eps=1e-6, rope_theta=1_000_000.0,
                   tied_embeddings=False, layer_specs=(LayerSpec(rope_theta=1_000_000.0, qkv_bias=True),))


def test_the_weights_file_vectors_give_the_committed_bytes():
    data = bytes.fromhex(VECTORS["file"])
    for compute in ("float32", "int8"):
        got = {location: value.hex() for location, value in layer_initializers(data, VECTORS["stem"], compute).items()}
        assert got == VECTORS["expected"][compute]


def test_rounding_is_half_away_from_zero_and_a_zero_group_stays_zero():
    matrix = VECTORS["matrix"]
    values = np.frombuffer(bytes.fromhex(matrix["values"]), dtype=np.float32).reshape(64, 3)
    codes, scales = quantize_int8(values, 64)
    assert codes.tobytes().hex() == matrix["codes"] and scales.tobytes().hex() == matrix["scales"]
    assert list(codes[0, :6, 0]) == [-127, 1, 2, -2, 3, -1]
    assert scales[0, 0, 2] == 0 and not codes[..., 2].any()
    assert (int8_group(1536), int8_group(96), int8_group(40)) == (64, 32, None)


def int8_matmul(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The int8 path's arithmetic in numpy: x (rows, in) @ weight.T, weight (out, in)."""
    matrix = np.ascontiguousarray(weight.T)
    group = int8_group(matrix.shape[0])
    codes, scales = quantize_int8(matrix, group)                             # (blocks, group, out), (blocks, 1, out)
    blocks = x.astype(np.float32).reshape(len(x), -1, group).transpose(1, 0, 2)   # (blocks, rows, group)
    steps = np.maximum(np.abs(blocks).max(-1, keepdims=True) / np.float32(127), np.float32(1e-30))
    activation = np.rint(blocks / steps)                                    # ONNX Round: half to even
    sums = activation.astype(np.int64) @ codes.astype(np.int64)            # (blocks, rows, out), exact
    return (sums.astype(np.float32) * scales * steps).sum(0)


def layer_sessions(config, weights, compute):
    return (ort.InferenceSession(build_layer(config, weights, 0, compute=compute).SerializeToString()),
            ort.InferenceSession(build_kv_only(config, weights, 0, compute=compute).SerializeToString()))


def run(session, config, hidden, positions, past_k, past_v):
    feeds = {"hidden": hidden[None].astype(np.float32), "positions": positions[None].astype(np.int64),
             "past_key": past_k[None].astype(np.float32), "past_value": past_v[None].astype(np.float32)}
    if any(node.name == "head_mask" for node in session.get_inputs()):
        feeds["head_mask"] = np.ones(config.heads, dtype=np.float32)
    return session.run(None, feeds)


@pytest.fixture(scope="module")
def qwen_layer():
    weights = random_weights(np.random.default_rng(21), QWEN)
    return weights, {compute: layer_sessions(QWEN, weights, compute) for compute in ("float32", "int8")}


def test_qwen2_layer_with_qkv_biases_matches_numpy(qwen_layer):
    weights, sessions = qwen_layer
    rng = np.random.default_rng(22)
    empty = np.zeros((QWEN.kv_heads, 0, QWEN.head_dim))
    prompt = rng.standard_normal((5, QWEN.hidden)).astype(np.float32)
    out, key, value, _ = run(sessions["float32"][0], QWEN, prompt, np.arange(5), empty, empty)
    want, want_k, want_v = numpy_layer(weights, prompt, np.arange(5), empty, empty, QWEN)
    assert np.abs(out[0] - want).max() < 1e-4
    assert np.abs(key[0] - want_k).max() < 1e-4 and np.abs(value[0] - want_v).max() < 1e-4
    step = rng.standard_normal((1, QWEN.hidden)).astype(np.float32)
    out, _, _, _ = run(sessions["float32"][0], QWEN, step, np.array([5]), key[0], value[0])
    assert np.abs(out[0] - numpy_layer(weights, step, np.array([5]), want_k, want_v, QWEN)[0]).max() < 1e-4
    without = {name: value for name, value in weights.items() if not name.endswith(".bias")}
    assert np.abs(numpy_layer(without, prompt, np.arange(5), empty, empty, QWEN)[0] - want).max() > 1e-2


def test_int8_projections_compute_the_integer_arithmetic():
    """An int8 K projection against numpy's integer sums: the K/V-only graph's output, whose
    only non-elementwise work is the projection (V is not rotated: check it exactly)."""
    weights = random_weights(np.random.default_rng(23), QWEN)
    _, kv_only = layer_sessions(QWEN, weights, "int8")
    rng = np.random.default_rng(24)
    hidden = (rng.standard_normal((3, QWEN.hidden)) * 3).astype(np.float32)
    empty = np.zeros((QWEN.kv_heads, 0, QWEN.head_dim))
    _, value = run(kv_only, QWEN, hidden, np.arange(3), empty, empty)
    normed = hidden / np.sqrt((hidden * hidden).mean(-1, keepdims=True) + np.float32(QWEN.norm_eps)) * weights["attn_norm"]
    want = int8_matmul(normed.astype(np.float32), weights["attn_v"]) + weights["attn_v.bias"]
    got = value[0].transpose(1, 0, 2).reshape(3, -1)
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()


def test_int8_layer_stays_close_to_float32(qwen_layer):
    _, sessions = qwen_layer
    rng = np.random.default_rng(25)
    empty = np.zeros((QWEN.kv_heads, 0, QWEN.head_dim))
    prompt = rng.standard_normal((6, QWEN.hidden)).astype(np.float32)
    exact = run(sessions["float32"][0], QWEN, prompt, np.arange(6), empty, empty)[0][0]
    coded = run(sessions["int8"][0], QWEN, prompt, np.arange(6), empty, empty)[0][0]
    moved = np.abs(coded - exact).max() / np.abs(exact).max()
    assert 0 < moved < 0.03


def test_int8_rows_do_not_depend_on_how_many_share_a_pass(qwen_layer):
    """A 4-row pass (a verify step) gives each row bitwise what one-row steps give it."""
    _, sessions = qwen_layer
    full, _ = sessions["int8"]
    rng = np.random.default_rng(26)
    empty = np.zeros((QWEN.kv_heads, 0, QWEN.head_dim))
    prompt = rng.standard_normal((5, QWEN.hidden)).astype(np.float32)
    _, key, value, _ = run(full, QWEN, prompt, np.arange(5), empty, empty)
    rows = rng.standard_normal((4, QWEN.hidden)).astype(np.float32)
    together = run(full, QWEN, rows, np.arange(5, 9), key[0], value[0])[0][0]
    past_k, past_v = key[0], value[0]
    for index in range(4):
        out, past_k, past_v, _ = run(full, QWEN, rows[index:index + 1], np.array([5 + index]), past_k, past_v)
        past_k, past_v = past_k[0], past_v[0]
        assert np.array_equal(out[0, 0], together[index]), index
