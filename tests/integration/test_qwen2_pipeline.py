"""The Qwen2 family end to end on the tiny Qwen2 GGUF: through the real app with fake workers
over real sockets it equals the reference executor (int8 compute, its default; lossless and
int8 codecs; a prompt long enough to go in prefill chunks), and the reference executor in
float32 compute equals Hugging Face transformers' own Qwen2 on the same dequantized weights."""

from __future__ import annotations

import numpy as np
import pytest

from shards.executor import ReferenceExecutor
from shards.sampling import SamplingParams
from tests.integration.fake_worker import FakeWorker
from tests.support import COLOURS, post, reference_tokens, running_app, wait_ready

LONG = [{"role": "user", "content": " ".join(f"the cat {index} sat on the mat" for index in range(20))}]


@pytest.fixture(scope="module")
async def qwen_cluster(tiny_qwen_dir):
    async with running_app(tiny_qwen_dir, prefill_rows=16) as (_, base):
        workers = [await FakeWorker(base, tiny_qwen_dir, f"qwen-{index}").start() for index in range(2)]
        status = await wait_ready(base, 2)
        yield base, status
        for worker in workers:
            await worker.stop()


@pytest.mark.parametrize("codec", ["lossless", "int8"])
@pytest.mark.parametrize("messages", [COLOURS, LONG], ids=["short", "chunked-prefill"])
async def test_fake_workers_equal_the_reference(qwen_cluster, tiny_qwen_reference, codec, messages):
    base, status = qwen_cluster
    assert status["compute"] == "int8" and len(status["plan"]) == 2
    code, body = await post(base, "/v1/chat/completions", {
        "messages": messages, "max_tokens": 12, "tabswarm": {"codec": codec, "return_token_ids": True}})
    assert code == 200, body
    cuts = [stage["layers"][0] for stage in status["plan"][1:]]
    assert body["choices"][0]["token_ids"] == reference_tokens(tiny_qwen_reference, messages, codec, 12, cuts)
    if messages is LONG:
        assert body["usage"]["prompt_tokens"] > 16 * 4      # it did go in several chunks


@pytest.fixture(scope="module")
def hf_qwen2(tiny_qwen_gguf):
    """transformers' Qwen2ForCausalLM with the GGUF's weights, dequantized by the gguf package."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from shards.gguf_model import GGUFModel

    model = GGUFModel(tiny_qwen_gguf)
    config = model.config
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=config.vocab, hidden_size=config.hidden, intermediate_size=config.mlp_hidden,
        num_hidden_layers=config.layers, num_attention_heads=config.heads, num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.context, rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta,
        tie_word_embeddings=False, torch_dtype="float32"))
    names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    state = {"model.embed_tokens.weight": model.tensor("token_embd.weight"), "lm_head.weight": model.tensor("output.weight"),
             "model.norm.weight": model.tensor("output_norm.weight")}
    for layer in range(config.layers):
        for ours, theirs in names.items():
            state[f"model.layers.{layer}.{theirs}.weight"] = model.tensor(f"blk.{layer}.{ours}.weight")
        for ours in ("attn_q", "attn_k", "attn_v"):
            state[f"model.layers.{layer}.{names[ours]}.bias"] = model.tensor(f"blk.{layer}.{ours}.bias")
    missing, unexpected = hf.load_state_dict({key: torch.from_numpy(np.array(value)) for key, value in state.items()},
                                             strict=False)
    assert not unexpected and all("rotary" in key for key in missing), (missing, unexpected)
    hf.eval()
    return torch, hf


@pytest.mark.reference
def test_the_reference_equals_transformers_qwen2(tiny_qwen_dir, tiny_qwen_reference, hf_qwen2):
    torch, hf = hf_qwen2
    exact = ReferenceExecutor(tiny_qwen_dir, threads=1, head="float32", compute="float32")
    ids = exact.text.encode_chat(LONG)
    ours = exact.prompt_logits(ids)
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(ours - theirs).max() < 1e-4 * np.abs(theirs).max() + 1e-5
    greedy = [step.token for step in exact.generate(ids, SamplingParams(max_tokens=12))]
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=exact.manifest.eos_id,
                          pad_token_id=exact.manifest.eos_id)
    assert greedy == out[0, len(ids):].tolist()[: len(greedy)]
    served = tiny_qwen_reference.with_head("compact").prompt_logits(ids)   # int8 layers: close, not equal
    assert (served.argmax(-1) == theirs.argmax(-1)).mean() > 0.8
