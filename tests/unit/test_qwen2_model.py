"""The Qwen2 family on a tiny GGUF written at test time: its config (QKV biases, GQA, a
separate output matrix), its tokenizer (the `qwen2` pre-tokenizer; ids round-trip to text)
and its chat template (ChatML from the GGUF's metadata), and the shards the converter makes."""

from __future__ import annotations

from shards.gguf_model import GGUFModel
from shards.manifest import load_manifest
from shards.tokenizer import TextCodec
from tests.tiny_qwen2 import HEADS, HIDDEN, KV_HEADS, LAYERS


def test_config_reads_qwen2_metadata(tiny_qwen_gguf):
    config = GGUFModel(tiny_qwen_gguf).config
    assert (config.architecture, config.layers, config.hidden, config.heads, config.kv_heads) == \
        ("qwen2", LAYERS, HIDDEN, HEADS, KV_HEADS)
    assert config.head_dim == HIDDEN // HEADS and config.rope_theta == 1_000_000.0
    assert not config.tied_embeddings and all(config.spec(layer).qkv_bias for layer in range(LAYERS))


def test_shards_keep_the_output_matrix_and_both_compute_formats(tiny_qwen_dir):
    manifest = load_manifest(tiny_qwen_dir)
    assert manifest.output_table == "output_table.weights" and manifest.token_table == "token_table.weights"
    assert manifest.compute_formats == ("float32", "int8") and manifest.default_compute == "int8"
    assert not manifest.base_model and not any(name.endswith(".bin") for name in manifest.files)
    assert "re-quantized from F16" in manifest.weight_format["head"]


def text_codec(directory) -> TextCodec:
    manifest = load_manifest(directory)
    return TextCodec.load(directory / manifest.tokenizer, directory / manifest.chat_template, manifest.eos_id,
                          manifest.bos_id, manifest.add_bos)


def test_tokenizer_round_trips_and_splits_like_qwen2(tiny_qwen_dir):
    codec = text_codec(tiny_qwen_dir)
    for text in ("the cat sat on the mat", "x = 12345 + 678\n\n  indented\tTabs!", "naïve café — ünïcode ✓"):
        assert codec.decode(codec.encode(text)) == text
    # Qwen2's split: a word keeps its leading space ("Ġthe" merges), digits go one by one and
    # the space before a number stands alone (GPT-2's split would give "Ġ42")
    ids = codec.encode(" the 42")
    assert [codec.tokenizer.id_to_token(token) for token in ids] == ["Ġthe", "Ġ", "4", "2"]


def test_chat_template_is_chatml_from_the_gguf(tiny_qwen_dir):
    codec = text_codec(tiny_qwen_dir)
    text = codec.render_chat([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = codec.encode_chat([{"role": "user", "content": "hi"}])
    assert codec.tokenizer.id_to_token(ids[0]) == "<|im_start|>" and codec.eos_token == "<|im_end|>"
