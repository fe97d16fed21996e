"""The float_reference executor agrees with an independent implementation of the same GGUF:
Hugging Face transformers (torch, CPU) loading the GGUF with its own dequantizer,
its own tokenizer and its own llama code.

Tolerance: both sides compute in float32 from the same dequantized weights (Q4_1
blocks -> d*q+m), so only summation order differs. Over 30 layers that leaves ~1e-4
in logits of magnitude ~20; we allow 2e-3 absolute over the whole vocabulary with the
float32 head, and require identical top-1 at every position and identical greedy
continuations with the compact head the coordinator serves (whose near-top logits are
exact: its top logit must agree to the same 2e-3).
"""

from __future__ import annotations

import numpy as np
import pytest

from shards.gguf_model import default_model_path
from shards.sampling import SamplingParams

pytestmark = pytest.mark.reference
LOGIT_TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def hf_model():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = default_model_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, torch_dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model.eval()
    return torch, model, tokenizer


def test_logits_match_transformers(float_reference, hf_model):
    torch, model, _ = hf_model
    ids = float_reference.text.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    ids += float_reference.text.encode("The capital of France is Paris. It is known for")
    ours = float_reference.with_head("float32").prompt_logits(ids)
    served = float_reference.prompt_logits(ids)
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0].numpy()
    difference = np.abs(ours - theirs).max()
    print(f"max abs logit difference vs transformers over {len(ids)} positions: {difference:.2e}")
    assert difference < LOGIT_TOLERANCE
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()
    top = theirs.argmax(-1)
    assert (served.argmax(-1) == top).all()
    assert np.abs(served[np.arange(len(ids)), top] - theirs[np.arange(len(ids)), top]).max() < LOGIT_TOLERANCE


def test_greedy_text_matches_transformers(float_reference, hf_model):
    torch, model, _ = hf_model
    ids = float_reference.text.encode_chat([{"role": "user", "content": "Name three colours."}])
    ours = [step.token for step in float_reference.generate(ids, SamplingParams(max_tokens=24))]
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                             eos_token_id=float_reference.manifest.eos_id, pad_token_id=float_reference.manifest.eos_id)
    theirs = out[0, len(ids):].tolist()
    assert ours == theirs[: len(ours)]


def test_tokenizer_matches_transformers(float_reference, hf_model):
    from coordinator.cli import DEFAULT_TEXT

    _, _, tokenizer = hf_model
    text = DEFAULT_TEXT.read_text()[:20000]
    assert float_reference.text.encode(text) == tokenizer.encode(text, add_special_tokens=False)
