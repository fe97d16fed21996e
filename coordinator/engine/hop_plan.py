"""One stage of one step as data: what the coordinator will do at a stage (plan_hop), and
what it learned from it (account_hop).

Pure: takes the router's decision inputs, the head masks and the frame, returns a frozen
HopPlan; never touches a socket, the recorder or the spot checks. The engine executes a
plan (the only I/O: the head-mask control message, then the FORWARD call or the no-reply
backfill) and hands the outcome to `account_outcome`.
Stages are planned one at a time, just before each runs: the router decides a stage's
skips from what the previous stages of the same token reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.engine.head_pruning import Masks
from coordinator.engine.router import NodeDecision
from coordinator.engine.session import HopStats
from coordinator.swarm.planner import Stage
from protocol.frames import FrameKind, StepKind, retarget


@dataclass(frozen=True)
class HopPlan:
    """What happens at stage `index` of a step."""

    index: int
    stage: Stage
    decision: NodeDecision            # the router's skip mask, and whether the node is bypassed
    ran: tuple[int, ...]              # layers that run in full (the rest write K/V only)
    masks: Masks | None               # head masks for the stage's layers (None: every head)
    send_masks: bool                  # the worker holds other masks for this stream: send these first
    frame: bytes                      # what the worker gets: FORWARD, or a NO_REPLY backfill when bypassed
    wants_report: bool                # the worker sends layer_stats (router / head statistics read them)

    @property
    def bypass(self) -> bool:
        return self.decision.bypass

    @property
    def recordable(self) -> bool:
        """Exact replay can rebuild this stage from its recorded frames: no head masks (not
        part of a frame) and not bypassed (a lost bypassed stage is replayed whole)."""
        return self.masks is None and not self.bypass


def plan_hop(index: int, stage: Stage, frame: bytes, step_kind: StepKind, decision: NodeDecision,
             masks: Masks | None, masks_held: Masks | None, reports_wanted: bool) -> HopPlan:
    """The plan for one stage: `decision` is the router's (made for DECODE steps only; other
    steps run every layer), `masks_held` what the worker was last sent for this stream."""
    if step_kind != StepKind.DECODE:
        decision = NodeDecision(0, False)
    ran = tuple(layer for offset, layer in enumerate(range(stage.layer_start, stage.layer_end))
                if not decision.skip_mask >> offset & 1)
    wants_report = step_kind == StepKind.DECODE and reports_wanted and not decision.bypass
    forward = retarget(frame, FrameKind.FORWARD, stage.layer_start, stage.layer_end, skip_mask=decision.skip_mask,
                       **({"no_reply": True} if decision.bypass else {"report": wants_report}))
    return HopPlan(index, stage, decision, ran, masks, masks != masks_held, forward, wants_report)


def account_plan(plan: HopPlan, stats: HopStats) -> None:
    """What a request's hop statistics count once a plan is made (before it is sent)."""
    stage = plan.stage
    stats.layer_executions += stage.size
    stats.layers_skipped += bin(plan.decision.skip_mask).count("1")
    if plan.masks is not None:
        ran = set(plan.ran)
        stats.heads_pruned += sum(row.count(0) for layer, row in zip(
            range(stage.layer_start, stage.layer_end), plan.masks, strict=True) if layer in ran)
    stats.bytes_sent += len(plan.frame)


def account_outcome(stats: HopStats, result: bytes | None) -> None:
    """What they count once the stage answered (`result`: its RESULT frame), or at once for
    a bypassed stage (None: nobody waits for it)."""
    if result is None:
        stats.nodes_bypassed += 1
        stats.hops_saved += 1
        return
    stats.bytes_received += len(result)
    stats.hops += 1
