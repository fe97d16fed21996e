"""Pipelined speculation's pure parts (coordinator/engine/pipelined_speculation.py): what a
chunk's logits emit and whether the next chunk in flight stays valid; which chunks go out."""

from __future__ import annotations

import numpy as np

from coordinator.engine.pipelined_speculation import Chunk, ChunkPipeline, settle
from protocol.frames import StepKind
from shards.sampling import SamplingParams

GREEDY = SamplingParams(max_tokens=64)
VOCAB = 20


def logits_choosing(*tokens: int) -> np.ndarray:
    rows = np.zeros((len(tokens), VOCAB), dtype=np.float32)
    rows[np.arange(len(tokens)), tokens] = 1.0
    return rows


def test_a_chunk_whose_drafts_and_bonus_agree_keeps_the_next_chunk():
    head, following = Chunk(10, (5, 6, 7)), Chunk(13, (8, 9))
    settled = settle(logits_choosing(6, 7, 8), head, following, GREEDY, np.random.default_rng())
    assert settled.verdict.tokens == (6, 7, 8) and settled.chained
    assert (settled.drafted, settled.accepted) == (3, 3)


def test_a_bonus_other_than_the_next_chunks_first_id_wastes_it():
    head, following = Chunk(10, (5, 6, 7)), Chunk(13, (8, 9))
    settled = settle(logits_choosing(6, 7, 3), head, following, GREEDY, np.random.default_rng())
    assert settled.verdict.tokens == (6, 7, 3) and not settled.chained
    assert (settled.drafted, settled.accepted) == (3, 2)


def test_a_rejected_draft_emits_the_correction_and_wastes_what_follows():
    head, following = Chunk(10, (5, 6, 7)), Chunk(13, (8, 9))
    settled = settle(logits_choosing(6, 4, 8), head, following, GREEDY, np.random.default_rng())
    assert settled.verdict.tokens == (6, 4) and not settled.chained
    assert (settled.drafted, settled.accepted) == (2, 1)   # the next chunk's id was never judged


def test_the_last_chunk_in_flight_emits_its_bonus():
    settled = settle(logits_choosing(6, 7, 1), Chunk(10, (5, 6, 7)), None, GREEDY, np.random.default_rng())
    assert settled.verdict.tokens == (6, 7, 1) and not settled.chained


def pipeline(depth: int = 2, rows: int = 3, max_ids: int = 100, stop: frozenset[int] = frozenset()) -> ChunkPipeline:
    return ChunkPipeline(depth, rows, max_ids, stop, streak=True)


def test_chunks_continue_the_lookup_of_everything_launched_until_the_depth():
    chunks = pipeline()
    text = (1, 2, 3, 4, 5, 6, 7, 8, 1, 2)       # "1 2" was followed by 3 4 5 6 ...
    first = chunks.start(text, cached=9)
    assert (first.position, first.ids) == (9, (2, 3, 4))
    second = chunks.follow()
    assert second is not None and (second.position, second.ids) == (12, (5, 6, 7))
    assert chunks.follow() is None                # two stages: two chunks in flight at most
    assert chunks.step(first, 1).kind == StepKind.VERIFY and chunks.step(second, 2).drafts == (6, 7)


def test_no_chunk_goes_past_a_stop_id_the_token_budget_or_a_gated_stage():
    stopping = pipeline(depth=3, stop=frozenset({4}))
    stopping.start((1, 2, 3, 4, 5, 1, 2), cached=6)
    assert stopping.chunks[0].ids == (2, 3, 4) and stopping.follow() is None
    budget = pipeline(depth=3, max_ids=9)
    budget.start((1, 2, 3, 4, 5, 6, 1, 2), cached=7)
    assert budget.chunks[0].ids == (2, 3) and budget.follow() is None
    gated = pipeline(depth=3)
    gated.blocked = lambda: True
    gated.start((1, 2, 3, 4, 5, 6, 1, 2), cached=7)
    assert gated.follow() is None


def test_a_stream_with_nothing_to_draft_steps_one_row_at_a_time():
    chunks = pipeline()
    first = chunks.start((1, 2, 3), cached=2)
    assert first.ids == (3,) and chunks.step(first, 1).kind == StepKind.DECODE
    assert chunks.follow() is None


def test_after_a_rejection_a_chunk_goes_alone_until_one_is_accepted_whole():
    chunks = pipeline()
    chunks.streak = False
    chunks.start((1, 2, 3, 4, 5, 6, 7, 8, 1, 2), cached=9)
    assert chunks.follow() is None
    chunks.streak = True
    assert chunks.follow() is not None
