"""Every GGUF tensor type converts: a tiny synthetic llama GGUF whose matrices are stored
as F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and Q4_K converts, and the converted layer
computes with exactly the dequantized weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from shards.convert import convert
from shards.executor import ReferenceExecutor, layer_graph_source
from shards.gguf_model import GGUFModel
from shards.model_config import ModelConfig
from shards.sampling import SamplingParams
from tests.unit.test_graphs import numpy_layer

HIDDEN, HEADS, KV_HEADS, MLP, VOCAB = 256, 4, 2, 512, 260
TYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K"]


def quantized(values: np.ndarray, kind: str, rng) -> tuple[np.ndarray, object]:
    import gguf
    from gguf.quants import quantize

    quant_type = gguf.GGMLQuantizationType[kind]
    if kind == "Q4_K":  # gguf-py cannot quantize K-quants: build valid random blocks instead
        rows, columns = values.shape
        blocks = rng.integers(0, 256, (rows, columns // 256, 144), dtype=np.uint8)
        blocks[..., 0:2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
        blocks[..., 2:4] = np.frombuffer(np.float16(0.005).tobytes(), np.uint8)
        return blocks.reshape(rows, -1), quant_type
    return quantize(values, quant_type), quant_type


def write_tiny_model(path: Path, matrix_type: str) -> None:
    import gguf

    rng = np.random.default_rng(5)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_block_count(1)
    writer.add_embedding_length(HIDDEN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_feed_forward_length(MLP)
    writer.add_context_length(256)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    tokens = [chr(ord("a") + i % 26) * (1 + i // 26) for i in range(VOCAB - 2)] + ["<|im_start|>", "<|im_end|>"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (VOCAB - 2) + [3, 3])
    writer.add_token_merges(["a a"])
    writer.add_eos_token_id(VOCAB - 1)
    shapes = {"attn_q": (HIDDEN, HIDDEN), "attn_k": (KV_HEADS * 64, HIDDEN), "attn_v": (KV_HEADS * 64, HIDDEN),
              "attn_output": (HIDDEN, HIDDEN), "ffn_gate": (MLP, HIDDEN), "ffn_up": (MLP, HIDDEN),
              "ffn_down": (HIDDEN, MLP)}
    writer.add_tensor("token_embd.weight", (rng.standard_normal((VOCAB, HIDDEN)) * 0.5).astype(np.float32))
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    for name, shape in shapes.items():
        values = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        data, quant_type = quantized(values, matrix_type, rng)
        writer.add_tensor(f"blk.0.{name}.weight", data, raw_dtype=quant_type)
    for name in ("attn_norm", "ffn_norm"):
        writer.add_tensor(f"blk.0.{name}.weight", np.ones(HIDDEN, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("matrix_type", TYPES)
def test_quant_type_converts_and_computes_with_dequantized_weights(tmp_path, matrix_type):
    gguf_path = tmp_path / f"tiny-{matrix_type}.gguf"
    write_tiny_model(gguf_path, matrix_type)
    directory, manifest = convert(gguf_path, tmp_path / "shards", progress=False, cache_root=tmp_path / "cache")
    assert manifest.weight_format["gguf_tensor_types"][matrix_type] == 7
    # compact shards keep the GGUF's blocks as they are: 7 matrices of this type, none widened to F32
    assert manifest.weight_format["layer_matrix_types"] == {matrix_type: 7}

    model = GGUFModel(gguf_path)
    weights = model.layer_weights(0)
    config: ModelConfig = manifest.model
    assert config.head_dim == 64 and config.kv_heads == KV_HEADS
    session = ort.InferenceSession(layer_graph_source(directory, manifest, 0))
    hidden = np.random.default_rng(6).standard_normal((3, HIDDEN)).astype(np.float32)
    empty = np.zeros((1, KV_HEADS, 0, 64), dtype=np.float32)
    got = session.run(None, {"hidden": hidden[None], "positions": np.arange(3)[None],
                             "past_key": empty, "past_value": empty,
                             "head_mask": np.ones(config.heads, dtype=np.float32)})[0][0]
    empty64 = np.zeros((KV_HEADS, 0, 64))
    want, _, _ = numpy_layer(weights, hidden.astype(np.float64), np.arange(3), empty64, empty64, config)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())  # float32 vs float64

    executor = ReferenceExecutor(directory, threads=1)
    steps = list(executor.generate([1, 2, 3], SamplingParams(max_tokens=3)))
    assert len(steps) >= 1 and all(0 <= step.token < VOCAB for step in steps)
