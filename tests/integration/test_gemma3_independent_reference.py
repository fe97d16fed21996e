"""Gemma 3 270M in the reference executor agrees with Hugging Face transformers loading
the same GGUF (its own Gemma 3 code: sliding-window masks, QK-norm, GeGLU, (1 + w) norms,
scaled embeddings; its own tokenizer conversion).

Tolerance: both compute in float32 from the same dequantized weights, so only summation
order differs; the residual stream grows to ~1e5 here and logits reach ~100. Measured
max abs logit difference: 1.4e-4 on a 16-token chat prompt, 4.6e-3 over a 994-token
prompt (past the 512-token sliding window), i.e. ~5e-5 of the logits' range. We allow
2e-2 (2e-4 relative) over the whole vocabulary with the float32 head, and require
identical top-1 at every position (both heads), the same top logit from the compact head
the coordinator serves, and identical greedy continuations.
"""

from __future__ import annotations

import numpy as np
import pytest

from shards.gguf_model import gemma3_270m_path
from shards.sampling import SamplingParams

pytestmark = [pytest.mark.reference, pytest.mark.slow]
LOGIT_TOLERANCE = 2e-2


@pytest.fixture(scope="module")
def hf_gemma():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = gemma3_270m_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=torch.float32)
    model.eval()
    return torch, model, path


def long_prompt(reference) -> list[int]:
    text = " ".join(f"Line {index}: the whale swam past the ship number {index * 7}." for index in range(60))
    ids = reference.text.encode(text)
    assert len(ids) > 600   # past the 512-token window of the local layers
    return ids


def test_logits_match_transformers_past_the_sliding_window(gemma_float_reference, hf_gemma):
    torch, model, _ = hf_gemma
    ids = long_prompt(gemma_float_reference)
    ours = gemma_float_reference.with_head("float32").prompt_logits(ids)
    served = gemma_float_reference.prompt_logits(ids)     # the compact head: near-top logits exact
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0].numpy()
    difference = np.abs(ours - theirs).max()
    print(f"Gemma 3: max abs logit difference vs transformers over {len(ids)} positions: {difference:.2e}")
    assert difference < LOGIT_TOLERANCE
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()
    top, rows = theirs.argmax(-1), np.arange(len(ids))
    assert (served.argmax(-1) == top).all()
    assert np.abs(served[rows, top] - theirs[rows, top]).max() < LOGIT_TOLERANCE


def test_greedy_continuation_matches_transformers(gemma_float_reference, hf_gemma):
    torch, model, _ = hf_gemma
    ids = gemma_float_reference.text.encode("A short poem about the sea:\n")
    ours = [step.token for step in gemma_float_reference.generate(ids, SamplingParams(max_tokens=24))]
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                             eos_token_id=sorted(gemma_float_reference.manifest.stop_set), pad_token_id=0)
    assert ours == out[0, len(ids):].tolist()[: len(ours)]


def test_tokenizer_matches_transformers(gemma_float_reference, hf_gemma):
    from coordinator.cli import DEFAULT_TEXT

    transformers = pytest.importorskip("transformers")
    path = hf_gemma[2]
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    text = DEFAULT_TEXT.read_text()[:20000] + "\n\n  spaces, tabs\tand ünïcödé 🐋"
    assert gemma_float_reference.text.encode_text(text) == tokenizer.encode(text, add_special_tokens=False)
