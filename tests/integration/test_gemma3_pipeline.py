"""The second model family through the whole coordinator: Gemma 3 270M (sliding-window
and global layers, QK-norm, GeGLU, head_dim 256 with one K/V head, a 262k vocabulary)
through fake workers over real sockets equals its in-process reference executor, token
for token with the lossless codec, including a prompt longer than the sliding window. Its
GGUF has no chat template: it is served as a base model (completions), and a chat request
is refused with a message that says so."""

from __future__ import annotations

import pytest

from shards.sampling import SamplingParams
from tests.integration.fake_worker import FakeWorker
from tests.support import post, running_app, wait_ready

pytestmark = pytest.mark.slow
PROMPTS = ["The capital of France is", "A short poem about the sea:\n", "Three colours: red,"]


@pytest.fixture(scope="module")
async def gemma_cluster(gemma_dir):
    async with running_app(gemma_dir) as (_app, base):
        workers = [await FakeWorker(base, gemma_dir, f"gemma-{index}").start() for index in range(2)]
        status = await wait_ready(base, 2, 120)
        yield base, status
        for worker in workers:
            await worker.stop()


def reference_ids(reference, ids: list[int], tokens: int) -> list[int]:
    steps = reference.generate(ids, SamplingParams(max_tokens=tokens))
    return [step.token for step in steps if step.token not in reference.manifest.stop_set]


async def test_the_layers_split_across_two_workers_and_the_model_reports_itself(gemma_cluster):
    _base, status = gemma_cluster
    assert next(stage["layers"] for stage in status["plan"])[0] == 0
    assert status["plan"][-1]["layers"][1] == 18 and status["layers"] == 18
    assert status["model"].startswith("gemma-3-270m")


@pytest.mark.parametrize("prompt", PROMPTS)
async def test_completion_tokens_equal_the_reference(gemma_cluster, gemma_reference, prompt):
    base, _ = gemma_cluster
    status, body = await post(base, "/v1/completions", {
        "prompt": prompt, "max_tokens": 16, "tabswarm": {"codec": "lossless", "return_token_ids": True}})
    assert status == 200, body
    want = reference_ids(gemma_reference, gemma_reference.text.encode(prompt), 16)
    assert body["choices"][0]["token_ids"] == want
    assert body["choices"][0]["text"] == gemma_reference.text.decode(want)


async def test_a_chat_request_to_a_base_model_is_refused_clearly(gemma_cluster):
    base, _ = gemma_cluster
    status, body = await post(base, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8})
    assert status == 400 and body["error"]["param"] == "messages"
    assert "base model" in body["error"]["message"] and "/v1/completions" in body["error"]["message"]


async def test_a_prompt_longer_than_the_sliding_window_equals_the_reference(gemma_cluster, gemma_reference):
    """Past 512 tokens the local layers stop seeing the start of the prompt: the workers'
    caches and masks must do exactly what the reference's do."""
    base, _ = gemma_cluster
    text = " ".join(f"Line {index}: the whale swam past the ship number {index * 7}." for index in range(60))
    ids = gemma_reference.text.encode(text)
    assert len(ids) > 600
    window = gemma_reference.manifest.model.spec(0).window
    assert window == 512 and gemma_reference.manifest.model.spec(5).attention == "global"
    status, body = await post(base, "/v1/completions", {
        "prompt": text, "max_tokens": 12, "tabswarm": {"codec": "lossless", "return_token_ids": True}})
    assert status == 200, body
    assert body["usage"]["prompt_tokens"] == len(ids)
    assert body["choices"][0]["token_ids"] == reference_ids(gemma_reference, ids, 12)
