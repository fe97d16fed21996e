"""A step planned and settled as data, without sockets. A stage: which layers run, which frame the
worker gets (skip mask, report and no-reply flags), whether head masks go first, whether
exact replay can rebuild the stage, and what the request's statistics count."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.engine.generation_state import Step
from coordinator.engine.router import NodeDecision
from coordinator.engine.session import HopStats
from coordinator.engine.step_outcome import (
    HopOutcome,
    account_outcome,
    account_plan,
    account_step,
    settle_step,
)
from coordinator.engine.step_plan import plan_hop, plan_step
from coordinator.swarm.planner import Stage
from protocol.activation_codec import CodecSettings, Route, encode_activation
from protocol.frames import Flag, FrameKind, StepKind, parse_frame

STAGE = Stage("w1", 4, 8)
FRAME = encode_activation(np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64),
                          Route(FrameKind.FORWARD, 7, 12, step=3, step_kind=StepKind.DECODE), CodecSettings())


def header(plan):
    return parse_frame(plan.frame)[0]


def test_a_decode_step_runs_what_the_router_did_not_skip_and_asks_for_a_report():
    plan = plan_hop(1, STAGE, FRAME, StepKind.DECODE, NodeDecision(0b0101, False), None, None, True)
    assert plan.ran == (5, 7)
    assert (header(plan).layer_start, header(plan).layer_end, header(plan).skip_mask) == (4, 8, 0b0101)
    assert header(plan).kind == FrameKind.FORWARD and header(plan).has(Flag.REPORT)
    assert not header(plan).has(Flag.NO_REPLY)
    assert plan.recordable and not plan.send_masks
    assert parse_frame(plan.frame)[1] == parse_frame(FRAME)[1]   # the payload is relayed untouched


def test_other_steps_run_every_layer_whatever_the_router_said():
    for kind in (StepKind.PREFILL, StepKind.VERIFY):
        plan = plan_hop(0, STAGE, FRAME, kind, NodeDecision(0b1111, True), None, None, True)
        assert plan.ran == (4, 5, 6, 7) and not plan.bypass
        assert header(plan).skip_mask == 0 and not header(plan).has(Flag.REPORT)


def test_a_bypassed_node_gets_a_no_reply_backfill_and_cannot_be_rebuilt_from_frames():
    plan = plan_hop(2, STAGE, FRAME, StepKind.DECODE, NodeDecision(0b1111, True), None, None, True)
    assert plan.bypass and plan.ran == () and not plan.wants_report
    assert header(plan).has(Flag.NO_REPLY) and not header(plan).has(Flag.REPORT)
    assert not plan.recordable


def test_head_masks_go_first_only_when_they_differ_from_what_the_worker_holds():
    masks = ((1, 0, 1), (1, 1, 1), (0, 0, 1), (1, 1, 1))
    changed = plan_hop(0, STAGE, FRAME, StepKind.DECODE, NodeDecision(0, False), masks, None, False)
    same = plan_hop(0, STAGE, FRAME, StepKind.DECODE, NodeDecision(0, False), masks, masks, False)
    cleared = plan_hop(0, STAGE, FRAME, StepKind.DECODE, NodeDecision(0, False), None, masks, False)
    assert (changed.send_masks, same.send_masks, cleared.send_masks) == (True, False, True)
    assert not changed.recordable and cleared.recordable
    assert not header(changed).has(Flag.REPORT)


def test_statistics_count_the_plan_and_its_outcome():
    masks = ((1, 0, 1), (1, 1, 1), (0, 0, 1), (1, 1, 1))
    stats = HopStats()
    plan = plan_hop(0, STAGE, FRAME, StepKind.DECODE, NodeDecision(0b0100, False), masks, None, True)
    account_plan(plan, stats)
    account_outcome(stats, b"x" * 100)
    bypass = plan_hop(1, Stage("w2", 8, 10), FRAME, StepKind.DECODE, NodeDecision(0b11, True), None, None, True)
    account_plan(bypass, stats)
    account_outcome(stats, None)
    assert (stats.layer_executions, stats.layers_skipped) == (6, 3)
    assert stats.heads_pruned == 1   # layer 4 ran with one head pruned; layer 6 (two pruned) was skipped
    assert (stats.hops, stats.nodes_bypassed, stats.hops_saved) == (1, 1, 1)
    assert stats.bytes_sent == len(plan.frame) + len(bypass.frame) and stats.bytes_received == 100


# --- the whole step: planned before its first hop, settled from its outcomes ---

STAGES = (Stage("w1", 0, 4), Stage("w2", 4, 8))
DECODE = Step(9, StepKind.DECODE, 12, (5,))
RUN_ALL = NodeDecision(0, False)
MASKS = ((1, 0, 1), (1, 1, 1), (1, 1, 1), (1, 1, 1))


def step_plan(**overrides):
    arguments = dict(masks=(None, None), masks_held=(None, None), probation=(False, True), delta=False,
                     recorder_usable=True, reports_wanted=False)
    arguments.update(overrides)
    return plan_step(DECODE, 7, STAGES, **arguments)


def outcomes_of(plan, decisions=(RUN_ALL, RUN_ALL), flags=None):
    hops = [plan.hop(index, FRAME, decision) for index, decision in enumerate(decisions)]
    return [HopOutcome(hop, None if hop.bypass else b"result-%d" % hop.index, **(flags or {}).get(hop.index, {}))
            for hop in hops]


def test_a_plain_step_is_recorded_and_checked_and_a_probation_worker_is_gated_before_relay():
    plan = step_plan()
    assert plan.record and plan.audit
    hops = [plan.hop(index, FRAME, NodeDecision(0, False)) for index in range(2)]
    assert [plan.gates(hop) for hop in hops] == [False, True]   # w2 is on probation
    outcomes = outcomes_of(plan, flags={1: {"gated": True}})
    effects = settle_step(plan, outcomes)
    assert effects.records == ((0, hops[0].frame), (1, hops[1].frame))
    assert not effects.give_up_recording and not effects.stop_auditing
    # the gated hop was checked in the send loop; only the other goes to the background checks
    assert [outcome.plan.index for outcome in effects.checks] == [0]
    assert effects.masks_sent == ()


def test_head_masks_are_planned_up_front_and_stop_recording_and_auditing():
    plan = step_plan(masks=(MASKS, None), masks_held=(None, MASKS))
    assert not plan.record and not plan.audit
    hops = [plan.hop(index, FRAME, NodeDecision(0, False)) for index in range(2)]
    assert [hop.send_masks for hop in hops] == [True, True]    # new masks for w1; w2's are cleared
    assert not any(plan.gates(hop) for hop in hops)             # a check could not recompute a masked stage
    effects = settle_step(plan, outcomes_of(plan))
    assert effects.records == () and effects.give_up_recording and effects.stop_auditing
    assert effects.checks == ()
    assert effects.masks_sent == (("w1", MASKS), ("w2", None))


def test_delta_coding_or_a_recorder_that_gave_up_stops_recording():
    assert not step_plan(delta=True).record and not step_plan(delta=True).audit
    gave_up = step_plan(recorder_usable=False)
    assert not gave_up.record and gave_up.audit
    effects = settle_step(gave_up, outcomes_of(gave_up))
    assert effects.give_up_recording and not effects.stop_auditing and len(effects.checks) == 2


def test_a_bypass_decided_mid_step_stops_recording_and_auditing_the_stream():
    plan = step_plan()
    outcomes = outcomes_of(plan, (NodeDecision(0b1111, True), NodeDecision(0, False)))
    assert outcomes[0].result is None
    effects = settle_step(plan, outcomes)
    assert effects.give_up_recording and effects.stop_auditing and effects.checks == ()


def test_a_rebuilt_stage_is_recorded_but_neither_checked_nor_counted_as_a_hop():
    plan = step_plan(probation=(False, False))
    outcomes = outcomes_of(plan, flags={1: {"rebuilt": True}})
    effects = settle_step(plan, outcomes)
    assert [index for index, _ in effects.records] == [0, 1]
    assert [outcome.plan.index for outcome in effects.checks] == [0]
    stats = HopStats()
    account_step(outcomes, stats)
    assert stats.hops == 1 and stats.layer_executions == 8   # the rebuild counts its own traffic


def test_one_entry_per_stage():
    with pytest.raises(ValueError, match="one entry per stage"):
        step_plan(probation=(False,))
