"""The generation engine: drives requests' tokens through the pipeline of workers.

Owns the step loop over the data in `generation_state`: schedule (pure) -> execute (the
only I/O: embed on the coordinator, each stage in layer order, the head) -> update
(pure). The hidden state is quantized once by each sender; the coordinator relays one
worker's RESULT payload to the next worker untouched (only the routing header changes),
so a token crosses N + 1 codec steps for N stages.

A request is not tied to the workers it started on. When a stage's worker is lost
(socket closed, stalled past its step-time bound, or it refused the step), the
request's `PipelineSession` is thrown away and a new one is opened on whatever pipeline
the cluster can form within `recovery_seconds`; the new session's first step replays
prompt + generated as one prefill, which rebuilds every cache. When the cluster
activates a new plan (a join), running requests move to it the same way at their next
step boundary. The sampler's RNG lives in the Sequence, so a seeded stream continues
as it would have. A lost stage that a standby holds exactly is rebuilt from its frames
instead (`stage_rebuild`).

With speculation on, a step first drafts tokens (prompt lookup, or self-speculative
DECODE steps under the draft router), then verifies them all in one multi-row VERIFY
pass at full depth; `acceptance` decides what it emits, and every stage's caches are cut
to the accepted length before the next step. Self-drafting and `pipelined` lookup
speculation (chunks, one per stage in flight) run in `speculative_steps`.
Never touches HTTP.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator

import numpy as np

from coordinator.config import ServerConfig
from coordinator.engine.acceptance import accept_drafts
from coordinator.engine.drafting import DraftLength, StepCosts, lookup_draft
from coordinator.engine.generation_request import GenerationRequest
from coordinator.engine.generation_state import Sequence, Step, schedule, through_stop, update
from coordinator.engine.head_pruning import HeadStatistics, StreamHeadMasks
from coordinator.engine.router import (
    LayerStatistics,
)
from coordinator.engine.row_batcher import off_loop
from coordinator.engine.session import HopStats, PipelineSession, TokenEvent
from coordinator.engine.speculative_steps import SpeculativeSteps
from coordinator.engine.stage_rebuild import drop_worker
from coordinator.engine.stage_replay import StageRecorder
from coordinator.engine.step_execute import StepExecutor
from coordinator.swarm.cluster import Cluster, NoWorkers
from coordinator.swarm.pipeline import Pipeline
from coordinator.swarm.time_breakdown import TimeTotals
from coordinator.swarm.worker_link import WorkerLost
from coordinator.trust.spot_checks import SpotChecks
from coordinator.trust.verifier import StageChecker
from protocol.control import HEAD_SAMPLE_INTERVAL, Release, Truncate
from protocol.frames import StepKind
from shards.footprint import prefill_rows
from shards.model_ends import ModelEnds

log = logging.getLogger(__name__)


class GenerationFailed(RuntimeError):
    """A request could not complete: no pipeline could be formed within the recovery
    bound after a loss, or it was lost more times than `max_replays`."""


class GenerationEngine:
    """Runs requests through the cluster's pipeline; the router decides skips per token."""

    def __init__(self, ends: ModelEnds, cluster: Cluster, config: ServerConfig,
                 checker: StageChecker | None = None) -> None:
        self.ends = ends
        self.cluster = cluster
        self.config = config
        # rows per prefill pass: what the tabs' memory plan allows (shards.footprint)
        self.prefill_rows = config.prefill_rows or prefill_rows(ends.manifest.model, cluster.compute)
        self.spot_checks = SpotChecks(checker, cluster, off_loop)
        self.step_costs = StepCosts()   # what a decode step and a verified row cost (drafting decisions)
        self._streams = itertools.count(1)
        self._steps = itertools.count(1)
        self.timing = TimeTotals()       # the coordinator's parts of every step (/metrics, /v1/status)
        self.tokens_generated = 0
        self.sequence_replays = 0        # sessions replayed whole after a loss
        self.moves_total = 0
        self.failures_total = 0
        model = ends.manifest.model
        self.layer_statistics = LayerStatistics(model.layers)  # the router's running means
        self.head_statistics = HeadStatistics(model.layers, model.heads)
        self.executor = StepExecutor(ends, cluster, config, self.spot_checks, self.layer_statistics,
                                     self.head_statistics, self.timing)
        self.speculative = SpeculativeSteps(self.executor, self.spot_checks, self.step_costs, self._steps,
                                            self._truncate)

    @property
    def replays_total(self) -> int:
        """Losses recovered: whole-sequence replays and stages rebuilt from their frames."""
        return self.sequence_replays + self.executor.rebuilds


    async def generate(self, request: GenerationRequest, stats: HopStats) -> AsyncIterator[TokenEvent]:
        sequence = Sequence.start(request.prompt_ids, request.params, request.stop_ids)
        session = self._open(await self.cluster.wait_pipeline(self.config.worker_wait_seconds), stats)
        speculation = request.speculation
        # Delta coding predicts each row from the stream's previous row, which a rejected
        # draft would change: speculation needs rows coded independently. A request whose
        # router skips layers or masks heads decodes plainly: those are decisions per
        # one-row decode step, and a verify pass runs every layer and head.
        seeded_sampling = request.params.temperature > 0 and request.params.seed is not None
        drafting = (DraftLength(speculation.max_draft, speculation.adaptive, speculation.method == "self",
                                cost_aware=not seeded_sampling)
                    if speculation.enabled and not request.codec.delta and not request.router.alters_decode_steps
                    else None)
        stats.speculation = speculation.method if drafting else "off"
        losses = 0
        pending = 0.0   # seconds of prefill chunks before the step that samples
        try:
            while sequence.finish_reason is None:
                if session.plan_version != self.cluster.plan_version and (moved := self.cluster.pipeline()):
                    # A new plan is active (a join, or a replan after a loss elsewhere): move at
                    # this step boundary; the next step replays the sequence onto it.
                    await self._close(session)
                    session = self._open(moved, stats)
                    stats.moves += 1
                    self.moves_total += 1
                started = time.perf_counter()
                try:
                    tokens = await self._advance(request, stats, session, sequence, drafting)
                except WorkerLost as error:
                    losses += 1
                    session = await self._recover(session, stats, error, losses)
                    stats.replayed_rows += sequence.length   # the next step re-runs all of them
                    continue
                seconds = time.perf_counter() - started + pending
                if not tokens:   # a prefill chunk: its time counts toward the step that samples
                    pending = seconds
                    continue
                pending = 0.0
                stats.step_seconds.append(seconds)
                for index, token in enumerate(tokens):
                    update(sequence, token)
                    self.tokens_generated += 1
                    yield TokenEvent(token, seconds if index == 0 else 0.0)
                    if sequence.finish_reason is not None:
                        break
        finally:
            await self._close(session)

    async def _advance(self, request: GenerationRequest, stats: HopStats, session: PipelineSession,
                       sequence: Sequence, drafting: DraftLength | None) -> tuple[int, ...]:
        """One step (drafting and verifying when speculation is on); returns the tokens it
        emits. Samples only after all of its I/O, so a loss never consumes the sampler's RNG."""
        if session.cut_to is not None:
            await self._truncate(session, session.cut_to)
        drafts: tuple[int, ...] = ()
        if drafting is not None and session.cached == sequence.length - 1:
            in_flight = session.chunks is not None and bool(session.chunks.chunks)
            length = 0 if in_flight else drafting.next_length(
                self.step_costs, sequence.params.max_tokens - len(sequence.generated))
            if in_flight or (length and self.speculative.pipelines(request, session)):
                return await self.speculative.advance_pipelined(request, stats, session, sequence, drafting, length)
            if length and request.speculation.method == "lookup":
                config = request.speculation
                drafts = lookup_draft(sequence.ids(), length, config.ngram_max, config.ngram_min)
            elif length:
                drafts = await self.speculative.self_drafts(request, stats, session, sequence, length)
        step = schedule(sequence, session.cached, next(self._steps), drafts, self._prefill_chunk())
        started = time.perf_counter()
        logits = await self._execute(request, stats, session, step)               # (1 + drafts, vocab)
        if step.partial:
            session.cached += step.rows
            return ()
        if step.kind in (StepKind.DECODE, StepKind.VERIFY):
            self.step_costs.observe_step(step.rows, time.perf_counter() - started)
        sampling = time.perf_counter()
        verdict = accept_drafts(logits, drafts, request.params, sequence.rng)
        self.executor.spend(stats, step.rows, "sample", time.perf_counter() - sampling)
        tokens = through_stop(verdict.tokens, sequence.stop_ids)
        session.cached += step.rows - len(drafts) + verdict.accepted
        if verdict.accepted < len(drafts):
            session.cut_back_to_cached()
        if drafting is not None and drafts:
            drafting.observe(len(drafts), verdict.accepted)
            stats.drafted += len(drafts)
            stats.accepted += len(tokens) - 1
            stats.verify_passes += 1
        return tokens

    def _prefill_chunk(self) -> int:
        """Rows per prefill pass: what the tabs' memory plan allows, and no more than
        `shared_prefill_rows` while other requests run. A tab runs one pass at a time, and a
        prompt's rows never share a pass with decode rows (row counts differ), so a long
        prompt sent whole holds every decoding stream's next token behind it
        (bench/concurrency.py: inter-token p95 ~0.6 s -> ~3 s at 8 streams); in chunks, their
        steps go in between. Chunks compute the same rows (the graphs are row-invariant)."""
        others_running = sum(self.cluster.sessions.values()) > 1
        return min(self.prefill_rows, self.config.shared_prefill_rows) if others_running else self.prefill_rows

    async def _truncate(self, session: PipelineSession, length: int) -> None:
        """Cut every stage's caches for the stream to `length` positions (control frames
        share each socket with FORWARD frames, so the cut lands before the next step)."""
        for _, link in session.pipeline:
            await link.send_control(Truncate(stream=session.stream, length=length), session.stream)
        session.cached = length
        session.cut_to = None
        if session.recorder is not None:
            session.recorder.truncate(length)

    def _open(self, pipeline: Pipeline, stats: HopStats) -> PipelineSession:
        session = PipelineSession(next(self._streams), pipeline, self.cluster.plan_version,
                                  heads=StreamHeadMasks(self.head_statistics.heads, HEAD_SAMPLE_INTERVAL),
                                  recorder=StageRecorder(len(pipeline), self.config.exact_replay_frames))
        self.cluster.session_opened(session.plan_version)
        stats.stages = len(pipeline)
        return session

    async def _recover(self, session: PipelineSession, stats: HopStats, error: WorkerLost,
                       losses: int) -> PipelineSession:
        """A stage was lost mid-step: drop the session, get a pipeline, replay from scratch."""
        log.warning("stream %d: %s; replaying on a new pipeline", session.stream, error)
        await self._close(session)
        await drop_worker(self.cluster, error)
        if losses > self.config.max_replays:
            self.failures_total += 1
            raise GenerationFailed(f"{error} (lost {losses} times; giving up)") from error
        try:
            pipeline = await self.cluster.wait_pipeline(self.config.recovery_seconds)
        except NoWorkers as waited:
            self.failures_total += 1
            raise GenerationFailed(f"{error}; no pipeline could be formed within "
                                   f"{self.config.recovery_seconds:.0f} s: {waited}") from error
        stats.replays += 1
        self.sequence_replays += 1
        return self._open(pipeline, stats)

    async def _execute(self, request: GenerationRequest, stats: HopStats, session: PipelineSession,
                       step: Step) -> np.ndarray:
        """Plan, run and settle one step (`step_execute`); returns its logits (1 + drafts, vocab)."""
        return await self.executor.execute(request.router, request.codec, stats, session, step)

    async def _close(self, session: PipelineSession) -> None:
        """The session is over: every worker still there frees its caches for the stream."""
        if session.chunks is not None:   # chunks in flight: their frames land before the release
            await session.chunks.drain()
        self.spot_checks.release(session.stream)
        await self.cluster.session_closed(session.plan_version)
        for stage, link in session.pipeline:
            try:
                await link.send_control(Release(stream=session.stream), session.stream)
            except WorkerLost:  # that worker is gone; its caches went with it
                log.debug("release of stream %d skipped on gone worker %s", session.stream, stage.worker)
