"""Speculative decoding's pure parts: prompt-lookup drafts, the adaptive draft length,
acceptance (greedy and distribution-preserving sampled), verify steps and recorded cuts."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.engine.acceptance import accept_drafts
from coordinator.engine.drafting import (
    DraftLength,
    SpeculationConfig,
    StepCosts,
    expected_tokens,
    lookup_draft,
)
from coordinator.engine.generation_state import Sequence, schedule
from coordinator.engine.stage_replay import StageRecorder, replay_messages
from protocol.activation_codec import LOSSLESS, Route, encode_activation
from protocol.frames import FrameKind, StepKind
from shards.sampling import SamplingParams, token_distribution

GREEDY = SamplingParams()


def test_lookup_continues_the_latest_earlier_match_of_the_longest_suffix():
    ids = [5, 6, 7, 8, 9, 1, 2, 6, 7, 3, 4, 6, 7]
    assert lookup_draft(ids, 3) == (3, 4, 6)          # "6 7" last seen before at 7..8, followed by 3 4 6
    assert lookup_draft(ids, 3, ngram_max=3, ngram_min=3) == ()   # "4 6 7" never occurred before
    assert lookup_draft([1, 2, 3, 1, 2], 10) == (3, 1, 2)          # a draft stops where the text does
    assert lookup_draft([1, 2, 3], 4) == ()                         # nothing repeats
    assert lookup_draft([4, 4], 2) == (4,)
    assert lookup_draft([1], 2) == () and lookup_draft([1, 2, 1], 0) == ()


def test_speculation_config_checks_its_fields():
    with pytest.raises(ValueError):
        SpeculationConfig(method="sometimes")
    with pytest.raises(ValueError):
        SpeculationConfig(max_draft=0)
    with pytest.raises(ValueError):
        SpeculationConfig(ngram_min=3, ngram_max=2)
    assert SpeculationConfig().method == "lookup" and not SpeculationConfig(method="off").enabled


def test_draft_length_grows_on_acceptance_and_shrinks_on_rejection():
    length = DraftLength(max_draft=5)
    costs = StepCosts()
    assert length.next_length(costs, remaining=100) == 2
    length.observe(2, 2)
    assert length.next_length(costs, 100) == 3
    length.observe(3, 3)
    length.observe(4, 4)
    assert length.next_length(costs, 100) == 5
    length.observe(5, 5)
    assert length.next_length(costs, 100) == 5          # capped at max_draft
    length.observe(5, 1)
    assert length.next_length(costs, 100) == 2          # accepted + 1
    assert length.next_length(costs, remaining=2) == 1  # the bonus token needs room too
    assert length.next_length(costs, remaining=1) == 0


def test_drafting_turns_off_when_it_does_not_pay_and_probes_again_later():
    costs = StepCosts()
    costs.observe_step(1, 0.100)
    costs.observe_step(5, 0.180)                         # 20 ms per extra verified row
    paying = DraftLength(max_draft=4, acceptance=0.8)
    assert paying.next_length(costs, 100) == 2            # 2.44 tokens in 140 ms beats 1 in 100 ms
    losing = DraftLength(max_draft=4, acceptance=0.05)
    assert losing.next_length(costs, 100) == 0            # 1.05 tokens in 140 ms loses
    idle = [losing.next_length(costs, 100) for _ in range(losing.probe_interval)]
    assert idle == [0] * losing.probe_interval
    losing.acceptance = 0.9                               # the text turned repetitive
    assert losing.next_length(costs, 100) == 1            # probing again, from one draft
    fixed = DraftLength(max_draft=3, adaptive=False, acceptance=0.0)
    assert fixed.next_length(costs, 100) == 3             # not adaptive: always the full length


def test_self_drafts_count_their_own_pipeline_steps():
    costs = StepCosts()
    costs.observe_step(1, 0.100)
    costs.observe_step(3, 0.120)
    costs.observe_draft(0.090)                            # a draft step skips a tenth of the work
    assert DraftLength(max_draft=2, acceptance=0.9, drafts_cost_steps=True).next_length(costs, 100) == 0
    assert DraftLength(max_draft=2, acceptance=0.9).next_length(costs, 100) == 2


def test_expected_tokens_per_verify_pass():
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)


def one_hot_rows(choices: list[int], vocab: int = 8) -> np.ndarray:
    rows = np.zeros((len(choices), vocab), dtype=np.float32)
    rows[np.arange(len(choices)), choices] = 5.0
    return rows


def test_greedy_acceptance_takes_the_agreeing_prefix_and_the_models_next_token():
    rng = np.random.default_rng(0)
    logits = one_hot_rows([3, 4, 5, 6])                    # the model's argmax after each row
    assert accept_drafts(logits, (3, 4, 5), GREEDY, rng).tokens == (3, 4, 5, 6)   # all + bonus
    verdict = accept_drafts(logits, (3, 9, 5), GREEDY, rng)
    assert (verdict.accepted, verdict.tokens) == (1, (3, 4))                       # corrected at the miss
    assert accept_drafts(logits[:1], (), GREEDY, rng).tokens == (3,)              # no drafts: plain
    with pytest.raises(ValueError):
        accept_drafts(logits, (3,), GREEDY, rng)


def test_sampled_acceptance_preserves_the_sampling_distribution():
    """Draws through accept_drafts, for a fixed draft, match the sampler's distribution p:
    the first token's marginal is p1 whatever the draft, and after an accepted first draft
    the second token is distributed as p2 (chi-square, 40,000 draws, p > 0.001)."""
    params = SamplingParams(temperature=1.0, top_k=5)
    first = np.log(np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04], dtype=np.float32))
    second = np.log(np.array([0.05, 0.5, 0.2, 0.1, 0.1, 0.05], dtype=np.float32))
    logits = np.stack([first, second, second])
    ids, probabilities = token_distribution(first, params)
    p1 = np.zeros(6)
    p1[ids] = probabilities                              # top-k drops token 5
    ids, probabilities = token_distribution(second, params)
    p2 = np.zeros(6)
    p2[ids] = probabilities
    rng = np.random.default_rng(7)
    draws = 40_000
    for draft in [(2, 4), (0, 1), (5, 3)]:               # a likely, the likeliest, an impossible first draft
        firsts, seconds = np.zeros(6), np.zeros(6)
        for _ in range(draws):
            tokens = accept_drafts(logits, draft, params, rng).tokens
            firsts[tokens[0]] += 1
            if tokens[0] == draft[0] and len(tokens) > 1:
                seconds[tokens[1]] += 1
        assert chi_square_p(firsts, p1) > 1e-3, (draft, firsts / draws, p1)
        if seconds.sum() > 1000:
            assert chi_square_p(seconds, p2) > 1e-3, (draft, seconds / seconds.sum(), p2)
        assert firsts[5] == 0                            # outside top-k: never emitted


def chi_square_p(counts: np.ndarray, probabilities: np.ndarray) -> float:
    from math import exp, lgamma, log

    keep = probabilities > 0
    expected = probabilities[keep] * counts.sum()
    statistic = float(((counts[keep] - expected) ** 2 / expected).sum())
    degrees = int(keep.sum()) - 1
    # Upper tail of chi-square via the regularised gamma series (small degrees of freedom).
    a, x = degrees / 2, statistic / 2
    term = total = 1.0 / a
    for n in range(1, 500):
        term *= x / (a + n)
        total += term
    lower = exp(-x + a * log(x) - lgamma(a)) * total if x > 0 else 0.0
    return 1.0 - lower


def test_schedule_verifies_drafts_on_decode_steps_only():
    sequence = Sequence.start((1, 2, 3), GREEDY, frozenset({0}))
    sequence.generated.append(7)
    step = schedule(sequence, 3, 1, drafts=(8, 9))
    assert (step.kind, step.position, step.ids, step.drafts, step.rows) == (StepKind.VERIFY, 3, (7, 8, 9), (8, 9), 3)
    with pytest.raises(ValueError, match="decode step"):
        schedule(sequence, 0, 2, drafts=(8,))                 # a replay prefill carries no drafts
    assert schedule(sequence, 3, 3).kind == StepKind.DECODE


def frame_at(position: int, rows: int) -> bytes:
    values = np.zeros((rows, 4), dtype=np.float32)
    return encode_activation(values, Route(FrameKind.FORWARD, 1, position, 0, 2), LOSSLESS)


def test_recorded_frames_replay_with_the_cuts_rejected_drafts_made():
    recorder = StageRecorder(1)
    prompt, verify, after_cut = frame_at(0, 5), frame_at(5, 4), frame_at(7, 3)
    recorder.record(0, prompt)
    recorder.record(0, verify)          # rows 5..8; two accepted: caches cut to 7
    recorder.truncate(7)
    recorder.record(0, after_cut)
    assert replay_messages(recorder.replay_frames(0)) == [prompt, verify, 7, after_cut]
    recorder.record(0, frame_at(10, 1))  # self-speculative draft rows 10, 11, then cut back to 10
    recorder.record(0, frame_at(11, 1))
    recorder.truncate(10)
    assert recorder.replay_frames(0) == [prompt, verify, after_cut]   # wholly cut frames are dropped


def test_seeded_sampling_draft_lengths_do_not_depend_on_measured_timing():
    """A seeded sampled stream must repeat itself: its drafting may not switch on timing."""
    costs = StepCosts()
    costs.observe_step(1, 0.100)
    costs.observe_step(5, 0.400)                         # verifying is dear: cost-aware drafting stops
    assert DraftLength(max_draft=4, acceptance=0.3).next_length(costs, 100) == 0
    assert DraftLength(max_draft=4, acceptance=0.3, cost_aware=False).next_length(costs, 100) == 2
