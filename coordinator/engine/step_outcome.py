"""What a step did, as data, and the pure update that reads it.

The executor returns one `HopOutcome` per stage (its plan, the RESULT or None when the
node was bypassed, the seconds it waited and spent relaying, the layer_stats report, and
whether the stage had to be rebuilt from recorded frames). `settle_step` turns the
step's plan and its outcomes into `StepEffects`: which frames the replay recorder keeps,
whether it must give up, whether spot checks stop auditing the stream, which hops the
spot checks see now (probation hops were checked before their result was relayed), and
which head masks each worker now holds. `account_step` counts the step into the
request's `HopStats`. Nothing here touches a socket, the recorder or the spot checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.engine.head_pruning import Masks
from coordinator.engine.session import HopStats
from coordinator.engine.step_plan import HopPlan, StepPlan
from protocol.control import LayerStats


@dataclass(frozen=True)
class HopOutcome:
    """What one stage of a step gave back."""

    plan: HopPlan
    result: bytes | None              # its RESULT frame (None: bypassed, nobody waits for it)
    waited: float = 0.0               # seconds waiting for the stage
    relay: float = 0.0                # the coordinator's own seconds for this hop
    report: LayerStats | None = None  # layer_stats the stage sent with it (router, head statistics)
    gated: bool = False               # checked before the result was relayed (worker on probation)
    rebuilt: bool = False             # the worker was lost; a standby recomputed it from recorded frames


@dataclass(frozen=True)
class StepEffects:
    """What the step leaves for the replay recorder, the spot checks and the masks ledger."""

    records: tuple[tuple[int, bytes], ...]           # (stage index, frame) to record, in order
    give_up_recording: bool                          # the stream can no longer be rebuilt from frames
    stop_auditing: bool                              # its frames no longer say what the stages computed
    checks: tuple[HopOutcome, ...]                   # hops the spot checks see now
    masks_sent: tuple[tuple[str, Masks | None], ...]  # (worker, masks) it now applies for the stream


def settle_step(plan: StepPlan, outcomes: Sequence[HopOutcome]) -> StepEffects:
    """The step's effects on everything but the request's statistics."""
    framed = all(outcome.plan.recordable for outcome in outcomes)   # a bypass or head masks break it
    recording = plan.record and framed
    auditing = plan.audit and framed
    checks = tuple(outcome for outcome in outcomes
                   if auditing and outcome.result is not None and not outcome.gated and not outcome.rebuilt)
    return StepEffects(
        records=tuple((outcome.plan.index, outcome.plan.frame) for outcome in outcomes) if recording else (),
        give_up_recording=not recording,
        stop_auditing=not auditing,
        checks=checks,
        masks_sent=tuple((outcome.plan.stage.worker, outcome.plan.masks) for outcome in outcomes
                         if outcome.plan.send_masks))


def account_step(outcomes: Sequence[HopOutcome], stats: HopStats) -> None:
    """Count the step's hops into the request's statistics (a rebuilt stage's traffic is
    counted by the rebuild)."""
    for outcome in outcomes:
        account_plan(outcome.plan, stats)
        if not outcome.rebuilt:
            account_outcome(stats, outcome.result)


def account_plan(plan: HopPlan, stats: HopStats) -> None:
    """What a request's hop statistics count for a planned hop."""
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
