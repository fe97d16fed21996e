"""Executing one step: the only I/O of a step, between its plan and its update.

Embeds the step's ids on the coordinator, sends each stage its frame in layer order
(head masks first when they changed, a NO_REPLY backfill to a bypassed node), collects
one `HopOutcome` per stage, decodes the last RESULT and runs the head. Between two hops
it does exactly two things besides I/O, both because the next hop depends on them: the
router learns from the stage's layer_stats (the next stage's skips are decided from
them), and a worker on probation has its result checked before the next stage gets it.
Everything else the step changes (the request's statistics, the replay recorder, the
spot checks, the head statistics, the masks each worker holds) is applied from the
outcomes once the step is over (`step_outcome.settle_step`). A stage whose worker is
lost is rebuilt from its recorded frames when a standby holds exactly its layers
(`stage_rebuild`); otherwise the loss goes to the engine, which replays the sequence.
Decides nothing about which request steps next, and never samples.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from coordinator.config import ServerConfig
from coordinator.engine.generation_state import Step
from coordinator.engine.head_pruning import HeadStatistics, observe_heads
from coordinator.engine.router import LayerStatistics, RouterConfig, decide, observe, start_token
from coordinator.engine.row_batcher import RowBatcher, off_loop
from coordinator.engine.session import HopStats, PipelineSession
from coordinator.engine.stage_rebuild import replace_stage
from coordinator.engine.step_outcome import HopOutcome, account_step, settle_step
from coordinator.engine.step_plan import HopPlan, StepPlan, plan_step
from coordinator.swarm.cluster import Cluster
from coordinator.swarm.time_breakdown import TimeTotals
from coordinator.swarm.worker_link import WorkerLink, WorkerLost
from coordinator.trust.spot_checks import SpotChecks
from protocol.activation_codec import CodecSettings, Route, decode_activation, encode_activation
from protocol.control import HeadMask
from protocol.frames import FrameKind
from shards.model_ends import ModelEnds

INLINE_EMBED_ROWS = 8   # steps with at most this many rows look their embeddings up on the loop


class StepExecutor:
    """Runs steps through a session's pipeline; shares the engine's statistics and checks."""

    def __init__(self, ends: ModelEnds, cluster: Cluster, config: ServerConfig, spot_checks: SpotChecks,
                 layer_statistics: LayerStatistics, head_statistics: HeadStatistics, timing: TimeTotals) -> None:
        self.ends = ends
        self.cluster = cluster
        self.config = config
        self.spot_checks = spot_checks
        self.layer_statistics = layer_statistics    # the router's running means
        self.head_statistics = head_statistics
        self.timing = timing                        # the coordinator's parts of every step
        self.rebuilds = 0                           # stages rebuilt from recorded frames
        # the head over every stream sampling at once: (rows, hidden) -> (rows, vocab)
        self.head = RowBatcher(lambda hidden: ends.logits(hidden[None])[0])

    def spend(self, stats: HopStats, rows: int, part: str, seconds: float) -> None:
        """Add `seconds` to `part` of a `rows`-row step: the coordinator's totals and the request's."""
        self.timing.add(rows, part, seconds)
        stats.timing.add(rows, part, seconds)

    def plan(self, router: RouterConfig, codec: CodecSettings, session: PipelineSession, step: Step) -> StepPlan:
        """The step's plan from the session's state (the stream's head masks advance to this
        step first: `StreamHeadMasks.update`)."""
        assert session.heads is not None and session.recorder is not None
        session.heads.update(router, self.head_statistics, step.position, step.rows)
        stages = tuple(stage for stage, _ in session.pipeline)
        return plan_step(
            step, session.stream, stages,
            masks=tuple(session.heads.masks_for(stage.layer_start, stage.layer_end) for stage in stages),
            masks_held=tuple(session.masks_sent.get(stage.worker) for stage in stages),
            probation=tuple(self.spot_checks.on_probation(link) for _, link in session.pipeline),
            delta=codec.delta, recorder_usable=session.recorder.usable,
            reports_wanted=router.enabled or router.prune_heads > 0)

    async def execute(self, router: RouterConfig, codec: CodecSettings, stats: HopStats, session: PipelineSession,
                      step: Step, after_first_hop: Callable[[], None] | None = None,
                      rebuild: bool = True) -> np.ndarray:
        """Run the step; return the logits of its last row and of each draft row:
        (1 + len(step.drafts), vocab), or no rows for a prefill chunk. `after_first_hop` is
        called once stage 1 is done with the step, in the turn the step goes on to stage 2
        (pipelined speculation launches its next chunk there); `rebuild` False: a lost stage
        is not rebuilt from recorded frames (other steps of the stream are in flight)."""
        rows = step.rows
        self.timing.step(rows)
        stats.timing.step(rows)
        clock = time.perf_counter()
        ids = list(step.ids)   # a few rows' lookup is cheaper here than a thread hop behind head calls
        hidden = self.ends.embed(ids) if rows <= INLINE_EMBED_ROWS else await off_loop(self.ends.embed, ids)
        # hidden: (1, rows, hidden)
        embedded = time.perf_counter()
        route = Route(FrameKind.FORWARD, session.stream, step.position, step=step.step_id, step_kind=step.kind)
        frame = encode_activation(hidden[0], route, codec, session.encoder)
        self.spend(stats, rows, "embed", embedded - clock)
        self.spend(stats, rows, "encode", time.perf_counter() - embedded)
        plan = self.plan(router, codec, session, step)
        start_token(session.routing)
        outcomes: list[HopOutcome] = []
        for index in range(len(session.pipeline)):
            stage, link = session.pipeline[index]
            decision = decide(router, self.layer_statistics, session.routing, step.position, stage.layer_start,
                              stage.layer_end)
            hop = plan.hop(index, frame, decision)
            try:
                outcome = await self._hop(plan, hop, link)
            except WorkerLost as error:
                if not rebuild:
                    raise
                outcome = await self._rebuild(plan, hop, outcomes, stats, session, error)
            self._route(router, session, step.position, outcome)
            frame = outcome.result if outcome.result is not None else frame   # bypassed: same payload on
            outcomes.append(outcome)
            if index == 0 and after_first_hop is not None:
                after_first_hop()
        await self._settle(router, plan, outcomes, stats, session)
        clock = time.perf_counter()
        _, values = decode_activation(frame, session.decoder)               # (rows, hidden)
        decoded = time.perf_counter()
        self.spend(stats, rows, "decode", decoded - clock)
        if step.partial:    # nothing is sampled from a prefill chunk: no head
            return np.zeros((0, self.ends.manifest.model.vocab), dtype=np.float32)
        sampled = 1 + len(step.drafts)
        logits = await self.head(values[-sampled:])                        # (sampled, vocab)
        self.spend(stats, rows, "head", time.perf_counter() - decoded)
        return logits

    async def _hop(self, plan: StepPlan, hop: HopPlan, link: WorkerLink) -> HopOutcome:
        """One stage's I/O: head masks first if they changed (control frames share the socket
        with FORWARD frames, so they land first), then the backfill (nobody waits for it) or
        the FORWARD call, then, for a worker on probation, its check."""
        started = time.perf_counter()
        stream = plan.stream
        if hop.send_masks:
            masks = [list(row) for row in hop.masks] if hop.masks is not None else []
            await link.send_control(HeadMask(stream=stream, layer_start=hop.stage.layer_start, masks=masks), stream)
        if hop.bypass:
            await link.send(hop.frame)
            return HopOutcome(hop, None, relay=time.perf_counter() - started)
        sent = time.perf_counter()
        result = await link.call(hop.frame, stream, plan.step.step_id, plan.step.rows)
        waited = time.perf_counter() - sent
        gated = plan.gates(hop)
        if gated:   # raises WorkerLost when the result is wrong: it is never relayed
            await self.spot_checks.after_result((stream, hop.index), hop.frame, hop.stage, link, result)
        report = link.take_layer_stats(stream, plan.step.position)
        return HopOutcome(hop, result, waited, time.perf_counter() - started - waited, report, gated)

    async def _rebuild(self, plan: StepPlan, hop: HopPlan, earlier: Sequence[HopOutcome], stats: HopStats,
                       session: PipelineSession, error: WorkerLost) -> HopOutcome:
        """The stage's worker was lost: rebuild it from its recorded frames and this step's
        frame, or re-raise (the engine then replays the whole sequence)."""
        assert session.recorder is not None
        recordable = plan.record and hop.recordable and all(outcome.plan.recordable for outcome in earlier)
        frames = session.recorder.frames_with(hop.index, hop.frame) if recordable else []
        result = await replace_stage(self.cluster, self.config, stats, session, hop.index, frames, plan.step, error)
        self.rebuilds += 1
        return HopOutcome(hop, result, rebuilt=True)

    def _route(self, router: RouterConfig, session: PipelineSession, position: int, outcome: HopOutcome) -> None:
        """The router's per-token state learns from the stage before the next one is decided."""
        stage, decision = outcome.plan.stage, outcome.plan.decision
        if outcome.result is None:      # bypassed: nothing measured
            observe(router, self.layer_statistics, session.routing, position, stage.layer_start, stage.layer_end,
                    decision, [], [], None)
        elif outcome.report is not None:
            report = outcome.report
            observe(router, self.layer_statistics, session.routing, position, stage.layer_start, stage.layer_end,
                    decision, [float(r) for r in report.ratios], [float(n) for n in report.norms or []],
                    float(report.node_ratio))

    async def _settle(self, router: RouterConfig, plan: StepPlan, outcomes: Sequence[HopOutcome],
                      stats: HopStats, session: PipelineSession) -> None:
        """The update: apply the step's outcomes to the statistics, the recorder, the spot
        checks and the masks ledger."""
        assert session.recorder is not None
        account_step(outcomes, stats)
        for outcome in outcomes:
            self.spend(stats, plan.step.rows, "stage_wait", outcome.waited)
            self.spend(stats, plan.step.rows, "relay", outcome.relay)
            report = outcome.report
            if report is not None and report.head_ratios is not None:
                observe_heads(router, self.head_statistics, plan.step.position, outcome.plan.stage.layer_start,
                              list(outcome.plan.ran), [[float(r) for r in row] for row in report.head_ratios])
        effects = settle_step(plan, outcomes)
        session.masks_sent.update(effects.masks_sent)
        if effects.give_up_recording:
            session.recorder.give_up()
        for index, frame in effects.records:
            session.recorder.record(index, frame)
        if effects.stop_auditing:
            self.spot_checks.stop_auditing(plan.stream)
        for outcome in effects.checks:
            stage, link = session.pipeline[outcome.plan.index]
            assert outcome.result is not None and stage.worker == link.id
            await self.spot_checks.after_result((plan.stream, outcome.plan.index), outcome.plan.frame, stage, link,
                                                outcome.result)
