"""The reference executor on the real default model: correct answers, an independent
implementation agrees, perplexity is the float32 model's, bad shard files are caught."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from shards.errors import ShardIntegrityError
from shards.executor import ReferenceExecutor
from shards.sampling import SamplingParams

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def test_greedy_answer_names_paris(reference):
    answer = reference.chat(FRANCE, SamplingParams(max_tokens=24))
    assert "Paris" in answer


def test_chat_template_adds_default_system_prompt(reference):
    text = reference.text.render_chat(FRANCE)
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_start|>assistant\n")
    ids = reference.text.encode_chat(FRANCE)
    assert ids[0] == 1 and ids.count(2) == 2  # <|im_start|> first; <|im_end|> after system and user


def test_decode_step_equals_prefill_logits(reference):
    """Logits of the last token must not depend on whether it came in a prefill or a decode step."""
    ids = reference.text.encode_chat(FRANCE)
    full = reference.prompt_logits(ids)
    chunked = reference.prompt_logits(ids, chunk=5)
    assert np.abs(full - chunked).max() < 1e-3
    steps = list(reference.generate(ids[:-1], SamplingParams(max_tokens=1)))
    assert np.abs(steps[0].logits - full[-2]).max() < 1e-3


def test_greedy_decoding_and_multi_row_passes_give_bitwise_equal_logits(reference):
    """Speculative verify passes rely on it: running generated tokens k at a time gives the
    very logits one-row decoding gave (attention is composed to be row-invariant)."""
    ids = reference.text.encode_chat(FRANCE)
    steps = list(reference.generate(ids, SamplingParams(max_tokens=12)))
    tokens = [step.token for step in steps]
    stack, stream = reference.stack, 525_252
    try:
        hidden = stack.forward(stream, reference.embed(ids), np.arange(len(ids))[None])
        rows = [reference.logits(hidden[:, -1:])[0, -1]]
        for start in range(0, len(tokens) - 1, 4):
            chunk = tokens[start:min(start + 4, len(tokens) - 1)]
            positions = np.arange(len(ids) + start, len(ids) + start + len(chunk))[None]
            rows.extend(reference.logits(stack.forward(stream, reference.embed(chunk), positions))[0])
    finally:
        stack.release(stream)
    for index, step in enumerate(steps):
        assert np.array_equal(rows[index], step.logits), f"logits of token {index} differ"


def test_sampling_is_reproducible_with_a_seed(reference):
    ids = reference.text.encode_chat(FRANCE)
    params = SamplingParams(temperature=0.9, top_p=0.9, seed=123, max_tokens=12)
    first = [step.token for step in reference.generate(ids, params)]
    second = [step.token for step in reference.generate(ids, params)]
    assert first == second


def test_perplexity_of_moby_dick_window(reference):
    from coordinator.cli import DEFAULT_TEXT
    from shards.perplexity import perplexity

    ids = reference.text.encode(DEFAULT_TEXT.read_text())[:512]
    result = perplexity(ids, reference.prompt_logits)
    # The dequantized-float32 model; the notes' figures are ~47 on 2048 tokens. 512 tokens of
    # the same text must land in a sane band, far from a broken model (thousands).
    assert 10 < result.perplexity < 120


def test_truncated_shard_file_is_named(shard_dir, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(shard_dir, copy)
    victim = copy / "layer_07.onnx"
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(ShardIntegrityError, match=r"layer_07\.onnx"):
        ReferenceExecutor(copy)


def test_corrupt_shard_file_fails_sha256(shard_dir, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(shard_dir, copy)
    victim = copy / "layer_11.kv.onnx"
    data = bytearray(victim.read_bytes())
    data[1000] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ShardIntegrityError, match=r"layer_11\.kv\.onnx.*sha256"):
        ReferenceExecutor(copy)



def test_truncate_then_rerun_gives_the_same_rows_and_positions_are_checked(reference):
    """The cache contract every runner shares: a step starts at the cache length, and a
    truncated cache continues as if the cut positions had never been run."""
    from shards.executor import CacheMismatch

    stack, stream = reference.stack, 424_242
    layers = range(0, 30)
    ids = reference.text.encode_chat(FRANCE)
    try:
        stack.forward(stream, reference.embed(ids), np.arange(len(ids))[None])
        extra = [504, 3575, 282]
        positions = np.arange(len(ids), len(ids) + 3)[None]
        first = stack.forward(stream, reference.embed(extra), positions)
        assert stack.cache_length(stream, layers) == len(ids) + 3
        with pytest.raises(CacheMismatch, match="is not stream"):
            stack.check_position(stream, layers, len(ids))
        stack.truncate(stream, len(ids))
        assert stack.cache_length(stream, layers) == len(ids)
        stack.check_position(stream, layers, len(ids))
        again = stack.forward(stream, reference.embed(extra), positions)
        assert np.array_equal(first, again)
        with pytest.raises(CacheMismatch, match="cannot keep"):
            stack.truncate(stream, len(ids) + 10)
    finally:
        stack.release(stream)
