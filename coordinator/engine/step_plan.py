"""A step as data: what the coordinator will do before it sends anything (`plan_step`),
and at each stage just before that stage runs (`StepPlan.hop`).

Pure: takes the step, the stages, the head masks and what each worker was last sent,
returns frozen plans; never touches a socket, the recorder or the spot checks. The
engine's executor sends a plan (the only I/O) and collects a `HopOutcome` per stage;
`step_outcome` turns the plan and the outcomes into what the request's statistics, the
replay recorder and the spot checks are told.

Most of a step is known before its first hop: the stages, every stage's head masks and
whether they must be sent first, which workers are on probation (their results are
checked before anything uses them), whether the stream can still be rebuilt from its
recorded frames or audited. One part is not: the router decides a stage's skips from
what the previous stages of the same token reported, so each stage's `HopPlan` is made
just before it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.engine.generation_state import Step
from coordinator.engine.head_pruning import Masks
from coordinator.engine.router import NodeDecision
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


@dataclass(frozen=True)
class StepPlan:
    """Everything about one step of one stream that is known before its first hop."""

    step: Step
    stream: int
    stages: tuple[Stage, ...]
    masks: tuple[Masks | None, ...]       # per stage: head masks (None: every head)
    masks_held: tuple[Masks | None, ...]  # per stage: what its worker was last sent for this stream
    probation: tuple[bool, ...]           # per stage: its worker's results are checked before they are relayed
    record: bool                          # the stream can still be rebuilt from recorded frames
    audit: bool                           # the stream's frames alone say what each stage computed
    reports_wanted: bool                  # the router or head pruning reads layer_stats

    def hop(self, index: int, frame: bytes, decision: NodeDecision) -> HopPlan:
        """Stage `index`'s plan, given the frame it gets and the router's decision for it."""
        return plan_hop(index, self.stages[index], frame, self.step.kind, decision, self.masks[index],
                        self.masks_held[index], self.reports_wanted)

    def gates(self, hop: HopPlan) -> bool:
        """Whether this hop's result is checked before the next stage gets it: the worker is
        on probation and the check can see everything the stage computed from."""
        return self.probation[hop.index] and self.audit and hop.recordable


def plan_step(step: Step, stream: int, stages: tuple[Stage, ...], masks: tuple[Masks | None, ...],
              masks_held: tuple[Masks | None, ...], probation: tuple[bool, ...], *, delta: bool,
              recorder_usable: bool, reports_wanted: bool) -> StepPlan:
    """The step's plan. Delta coding predicts each row from the previous one and head masks
    are not part of a frame: with either, recorded frames no longer rebuild a stage and a
    spot check cannot recompute one."""
    if not len(stages) == len(masks) == len(masks_held) == len(probation):
        raise ValueError("one entry per stage for masks, masks held and probation")
    framed = not delta and all(stage_masks is None for stage_masks in masks)
    return StepPlan(step, stream, stages, masks, masks_held, probation, record=recorder_usable and framed,
                    audit=framed, reports_wanted=reports_wanted)


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
