"""The pure half of a step: schedule and update over a Sequence, and replay bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.engine.generation_state import Sequence, schedule, through_stop, update
from protocol.frames import StepKind
from shards.sampling import SamplingParams, sample_token


def sequence(max_tokens: int = 5, seed: int | None = None) -> Sequence:
    return Sequence.start((10, 11, 12), SamplingParams(max_tokens=max_tokens, seed=seed), frozenset({2}))


def test_first_step_is_a_prefill_of_the_prompt_then_one_row_decodes():
    seq = sequence()
    first = schedule(seq, cached=0, step_id=1)
    assert (first.kind, first.position, first.ids) == (StepKind.PREFILL, 0, (10, 11, 12))
    update(seq, 40)
    second = schedule(seq, cached=3, step_id=2)
    assert (second.kind, second.position, second.ids, second.step_id) == (StepKind.DECODE, 3, (40,), 2)


def test_a_new_session_replays_prompt_and_generated_as_one_prefill():
    seq = sequence()
    for token in (40, 41, 42):
        update(seq, token)
    replay = schedule(seq, cached=0, step_id=9)
    assert (replay.kind, replay.position, replay.ids) == (StepKind.PREFILL, 0, (10, 11, 12, 40, 41, 42))
    # after the replay the caches hold all six ids; the next step is a decode of the next token
    update(seq, 43)
    assert schedule(seq, cached=6, step_id=10).ids == (43,)


def test_a_long_prefill_goes_in_partial_chunks_and_only_the_last_samples():
    seq = Sequence.start(tuple(range(100, 110)), SamplingParams(max_tokens=4), frozenset({2}))
    steps, cached = [], 0
    while True:
        step = schedule(seq, cached, step_id=len(steps) + 1, max_rows=4)
        steps.append(step)
        if not step.partial:
            break
        cached += step.rows
    assert [(step.position, step.rows, step.partial) for step in steps] == [(0, 4, True), (4, 4, True), (8, 2, False)]
    assert all(step.kind == StepKind.PREFILL for step in steps) and steps[-1].ids == (108, 109)
    update(seq, 40)
    assert not schedule(seq, cached=10, step_id=9, max_rows=4).partial   # a decode row is never cut


def test_update_finishes_on_a_stop_id_or_max_tokens():
    seq = sequence(max_tokens=3)
    assert update(seq, 40) is None and update(seq, 2) == "stop"
    with pytest.raises(ValueError, match="finished"):
        schedule(seq, cached=4, step_id=1)
    seq = sequence(max_tokens=2)
    update(seq, 40)
    assert update(seq, 41) == "length"


def test_schedule_refuses_caches_that_hold_everything_or_more():
    seq = sequence()
    with pytest.raises(ValueError, match="caches hold"):
        schedule(seq, cached=3, step_id=1)   # the prompt is cached and no token was sampled: nothing to run


def test_the_rng_is_part_of_the_sequence_so_a_replay_samples_what_the_lost_step_would_have():
    """A lost step consumed nothing from the sampler; the replayed step samples from the
    same logits with the same RNG state, so a seeded stream continues identically."""
    logits = np.random.default_rng(0).standard_normal(100).astype(np.float32)
    params = SamplingParams(temperature=0.8, seed=5, max_tokens=10)
    uninterrupted, interrupted = Sequence.start((1,), params, frozenset()), Sequence.start((1,), params, frozenset())
    for _ in range(4):
        update(uninterrupted, sample_token(logits, params, uninterrupted.rng))
    for step in range(4):
        if step == 2:
            schedule(interrupted, cached=0, step_id=99)   # a replay is scheduled: no sampling happens
        update(interrupted, sample_token(logits, params, interrupted.rng))
    assert interrupted.generated == uninterrupted.generated


def test_ids_from_an_offset_cross_the_prompt_boundary():
    seq = sequence()
    update(seq, 40)
    update(seq, 41)
    assert seq.ids(2) == (12, 40, 41) and seq.ids(4) == (41,) and seq.length == 5


def test_nothing_after_the_first_stop_id_is_kept():
    stops = frozenset({2, 9})
    assert through_stop((5, 7, 2, 8, 9), stops) == (5, 7, 2)
    assert through_stop((5, 7, 8), stops) == (5, 7, 8)
    assert through_stop((9,), stops) == (9,)
    assert through_stop((), stops) == ()
