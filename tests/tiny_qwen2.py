"""A tiny Qwen2 model written as a GGUF at test time (random weights, the `gguf` package's
writer and quantizers): 4 layers, hidden 128, 8 query / 2 KV heads, QKV biases, a separate
output matrix, a byte-level BPE vocabulary with the `qwen2` pre-tokenizer and ChatML.

Layer matrices are Q8_0, Q4_0, Q4_1 and Q5_0 blocks (the types the `gguf` package can
write); the token table is Q8_0 (kept as is by the head when tied — here it is not) and the
output matrix F16, so the head re-quantizes it and its error bound carries a weight term.
Pure: given a path it writes the same bytes every time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

HIDDEN, HEADS, KV_HEADS, MLP, LAYERS, CONTEXT = 128, 8, 2, 256, 4, 512
HEAD_DIM = HIDDEN // HEADS
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
          "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s", "r e", "a t", "Ġ o", "e n", "Ġ w", "i s",
          "o r", "Ġ c", "Ġ f", "a n", "e s", "Ġ p", "i t", "l l", "Ġ b", "a r", "Ġ m", "o u", "Ġ d", "e d"]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_tokens() -> list[str]:
    """GPT-2's printable stand-in for each byte (the order HF's byte-level BPE uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    table = dict(zip(printable, codes, strict=True))
    return [chr(table[byte]) for byte in range(256)]


def vocabulary() -> tuple[list[str], list[int]]:
    tokens = byte_tokens() + ["".join(merge.split(" ")) for merge in MERGES]
    types = [1] * len(tokens) + [3] * len(SPECIAL)
    return tokens + SPECIAL, types


def write_tiny_qwen2(path: Path, seed: int = 2025) -> Path:
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    rng = np.random.default_rng(seed)
    tokens, types = vocabulary()
    vocab = len(tokens)
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name("tiny-qwen2")
    writer.add_block_count(LAYERS)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(MLP)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)

    def matrix(name: str, rows: int, cols: int, kind: Q, scale: float = 0.08) -> None:
        values = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        writer.add_tensor(name, quantize(values, kind), raw_dtype=kind)

    def vector(name: str, size: int, center: float = 0.0, spread: float = 0.1) -> None:
        writer.add_tensor(name, (center + rng.standard_normal(size) * spread).astype(np.float32))

    matrix("token_embd.weight", vocab, HIDDEN, Q.Q8_0, 1.0)
    kinds = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0]
    for layer in range(LAYERS):
        kind = kinds[layer % len(kinds)]
        prefix = f"blk.{layer}."
        matrix(prefix + "attn_q.weight", HEADS * HEAD_DIM, HIDDEN, kind)
        matrix(prefix + "attn_k.weight", KV_HEADS * HEAD_DIM, HIDDEN, kind)
        matrix(prefix + "attn_v.weight", KV_HEADS * HEAD_DIM, HIDDEN, Q.Q8_0)
        matrix(prefix + "attn_output.weight", HIDDEN, HEADS * HEAD_DIM, kind)
        matrix(prefix + "ffn_gate.weight", MLP, HIDDEN, kind)
        matrix(prefix + "ffn_up.weight", MLP, HIDDEN, kind)
        matrix(prefix + "ffn_down.weight", HIDDEN, MLP, Q.Q8_0)
        vector(prefix + "attn_q.bias", HEADS * HEAD_DIM, spread=0.5)
        vector(prefix + "attn_k.bias", KV_HEADS * HEAD_DIM, spread=0.5)
        vector(prefix + "attn_v.bias", KV_HEADS * HEAD_DIM, spread=0.1)
        vector(prefix + "attn_norm.weight", HIDDEN, 1.0)
        vector(prefix + "ffn_norm.weight", HIDDEN, 1.0)
    vector("output_norm.weight", HIDDEN, 1.0)
    output = rng.standard_normal((vocab, HIDDEN)) * 0.1
    output[-len(SPECIAL):] *= 0.01     # end-of-text rarely wins, so greedy answers run to max_tokens
    writer.add_tensor("output.weight", output.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
