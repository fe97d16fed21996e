"""A stage of a step planned as data, without sockets: which layers run, which frame the
worker gets (skip mask, report and no-reply flags), whether head masks go first, whether
exact replay can rebuild the stage, and what the request's statistics count."""

from __future__ import annotations

import numpy as np

from coordinator.engine.router import NodeDecision
from coordinator.engine.session import HopStats
from coordinator.engine.step_outcome import account_outcome, account_plan
from coordinator.engine.step_plan import plan_hop
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
