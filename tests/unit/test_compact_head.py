"""The compact head (8-bit MatMulNBits blocks, int8 activations) on the real default model:
its error stays inside the bound the correction relies on, and after the correction its
top token and top logit are the float32 head's at every position. A re-quantized table
(what a Q6_K output matrix becomes) keeps the same guarantee through its weight-error term."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shards.compact_head import CompactHead
from shards.head_graph import head_blocks, quantize_8bit
from shards.model_ends import ModelEnds

TEXT = Path(__file__).parents[2] / "data" / "moby-dick.txt"


@pytest.fixture(scope="module")
def final_hidden(reference):
    """(1, positions, hidden) final hidden states of 300 tokens of real text."""
    ids = reference.text.encode(TEXT.read_text()[:6000])[:300]
    stream = reference._new_stream()
    try:
        return reference.stack.forward(stream, reference.embed(ids), np.arange(len(ids), dtype=np.int64)[None])
    finally:
        reference.stack.release(stream)


@pytest.fixture(scope="module")
def heads(shard_dir, reference):
    compact = ModelEnds(shard_dir, 2, verify=False, manifest=reference.manifest)
    exact = ModelEnds(shard_dir, 2, verify=False, manifest=reference.manifest, head="float32")
    assert isinstance(compact._compact_head, CompactHead), "the default model's head should be compact"
    return compact, exact


def test_int8_error_stays_inside_the_bound(heads, final_hidden):
    compact, exact = heads
    raw, normed = compact._compact_head.session.run(None, {"hidden": final_hidden})
    want = exact.logits(final_hidden)[0]
    bound = compact._compact_head.error_bound(normed[0], raw[0])
    assert (np.abs(raw[0] - want) <= bound).all()
    assert np.abs(raw[0] - want).max() > 1e-3      # the int8 head does differ: the correction matters


def test_corrected_top_token_and_logit_are_the_float32_heads(heads, final_hidden):
    compact, exact = heads
    before = compact._compact_head.recomputed
    served, want = compact.logits(final_hidden)[0], exact.logits(final_hidden)[0]
    rows, top = np.arange(len(want)), want.argmax(-1)
    assert (served.argmax(-1) == top).all()
    assert np.abs(served[rows, top] - want[rows, top]).max() < 1e-4
    recomputed = (compact._compact_head.recomputed - before) / len(want)
    assert 1 <= recomputed < 200        # a handful of candidates per position, not the vocabulary


def test_a_near_tie_flipped_by_int8_is_restored():
    """A fake session whose logits put the wrong token on top by less than the bound."""
    table = np.eye(64, dtype=np.float32)[:4] * 2.0               # (vocab 4, hidden 64)
    normed = np.linspace(-1, 1, 64, dtype=np.float32)[None, None]
    exact = normed[0] @ table.T                                    # (1, 4)
    skewed = exact.copy()
    skewed[0, exact[0].argsort()[-2]] = exact[0].max() + 1e-3      # runner-up now on top

    class Session:
        def run(self, _, feeds):
            return [skewed.copy()[None], normed]

    bounds = np.stack([np.abs(table.reshape(4, -1, 32)).sum(-1), np.zeros((4, 2), np.float32)])
    head = CompactHead(Session(), bounds, lambda ids: table[ids])
    assert head(normed)[0, 0].argmax() == exact[0].argmax()


def test_requantized_blocks_bound_their_weight_error():
    """A table that is not 8-bit (random float rows, as a Q6_K table decodes) re-quantized to
    8-bit blocks: |w - blocks| per (row, block) is recorded, and the logits of the re-quantized
    weights times exact activations stay inside the weight-error term of the bound."""
    rng = np.random.default_rng(11)
    table = rng.standard_normal((50, 64)).astype(np.float32)
    codes, scales, error = quantize_8bit(table)
    blocks = (codes.astype(np.float32) - 128) * scales[..., None]           # (50, 2, 32)
    assert (np.abs(table.reshape(50, 2, 32) - blocks).max(-1) <= error).all()
    assert error.max() > 0 and (error <= scales / 2 * 1.0001).all()
    x = rng.standard_normal(64).astype(np.float32)
    moved = np.abs(blocks.reshape(50, 64) @ x - table @ x)
    assert (moved <= np.abs(x.reshape(2, 32)).sum(-1) @ error.T * 1.001 + 1e-5).all()
    _, _, bits, zero_point, bounds = head_blocks("F16", table.astype(np.float16).view(np.uint8).reshape(50, -1),
                                                 lambda raw: raw.view(np.float16).astype(np.float32).reshape(-1, 64))
    assert (bits, zero_point) == (8, 128) and bounds.shape == (2, 50, 2) and bounds[1].max() > 0


def test_a_row_gets_bitwise_the_same_logits_alone_or_batched_with_other_streams(heads, final_hidden):
    """What lets the coordinator run the head once for every stream sampling at once
    (coordinator/engine/row_batcher.py) without changing any stream's answer."""
    compact, _ = heads
    rows = final_hidden[:, ::37]                                   # (1, 9, hidden): nine streams' last rows
    together = compact.logits(rows)[0]
    for row in range(rows.shape[1]):
        assert np.array_equal(compact.logits(rows[:, row:row + 1])[0][0], together[row]), f"row {row} differs"
