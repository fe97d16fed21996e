"""Speculative steps that are more than one pass: self-drafting, and pipelined lookup chunks.

Owns two ways a speculating request's step runs besides "draft by lookup, verify in one
pass" (which `generation` does inline):
- self-speculative drafting: greedy DECODE steps under the draft router (skips and node
  bypasses), then a cut back, since the draft rows' K/V came from a shallower model;
- pipelined lookup speculation (greedy, 2+ stages): drafts go in chunks, one per stage in
  flight; a step settles the oldest chunk, and a chunk leaving stage 1 launches the next
  (`pipelined_speculation` holds the rules).
Every worker I/O goes through the step executor; the session's cache length and cut are
kept here as `generation` keeps them for plain steps. Never touches HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

import numpy as np

from coordinator.engine.drafting import DraftLength, StepCosts
from coordinator.engine.generation_request import GenerationRequest
from coordinator.engine.generation_state import Sequence, Step, through_stop
from coordinator.engine.pipelined_speculation import Chunk, ChunkPipeline, settle_oldest
from coordinator.engine.session import HopStats, PipelineSession
from coordinator.engine.step_execute import StepExecutor
from coordinator.trust.spot_checks import SpotChecks
from protocol.frames import StepKind


class SpeculativeSteps:
    """Runs self-drafting and pipelined chunks for the engine, sharing its step ids and costs."""

    def __init__(self, executor: StepExecutor, spot_checks: SpotChecks, step_costs: StepCosts,
                 step_ids: Iterator[int], truncate: Callable[[PipelineSession, int], Awaitable[None]]) -> None:
        self.executor = executor
        self.spot_checks = spot_checks
        self.step_costs = step_costs
        self.step_ids = step_ids
        self.truncate = truncate

    @staticmethod
    def pipelines(request: GenerationRequest, session: PipelineSession) -> bool:
        """Whether this request's drafts go in chunks, one per stage in flight: greedy lookup
        speculation asked for, on 2+ stages."""
        speculation = request.speculation
        return (speculation.pipelined and speculation.method == "lookup" and request.params.temperature == 0.0
                and len(session.pipeline) > 1)

    async def advance_pipelined(self, request: GenerationRequest, stats: HopStats, session: PipelineSession,
                                sequence: Sequence, drafting: DraftLength, length: int) -> tuple[int, ...]:
        """Settle the oldest verify chunk in flight (launching the first, of `length` drafts,
        from the confirmed state when none is); returns the tokens it emits. A rejection
        drains the later chunks and cuts the caches back before the next step."""
        if session.chunks is None:
            config = request.speculation

            def blocked() -> bool:
                return any(self.spot_checks.on_probation(link) for _, link in session.pipeline)

            session.chunks = ChunkPipeline(
                len(session.pipeline), length + 1, len(sequence.prompt_ids) + sequence.params.max_tokens,
                sequence.stop_ids, (config.ngram_max, config.ngram_min), blocked=blocked)
        chunks = session.chunks
        if not chunks.chunks:
            chunks.rows = length + 1
            self._launch(request, stats, session, chunks.start(sequence.ids(), session.cached))
        settled = await settle_oldest(chunks, request.params, sequence.rng)
        tokens = through_stop(settled.verdict.tokens, sequence.stop_ids)
        session.cached += 1 + settled.verdict.accepted
        if settled.launched_past:   # the caches hold rows past the accepted ones
            session.cut_back_to_cached()
        if settled.drafted:
            drafting.observe(settled.drafted, settled.accepted)
            chunks.rows = max(drafting.length, 1) + 1
            stats.drafted += settled.drafted
            stats.accepted += settled.accepted
            stats.verify_passes += 1
        return tokens

    def _launch(self, request: GenerationRequest, stats: HopStats, session: PipelineSession, chunk: Chunk) -> None:
        """Start a chunk's step; when it leaves stage 1, the next chunk (if any) starts."""
        chunks = session.chunks
        assert chunks is not None
        step = chunks.step(chunk, next(self.step_ids))
        stats.most_in_flight = max(stats.most_in_flight, len(chunks.chunks))

        def first_hop_done() -> None:
            if (following := chunks.follow()) is not None:
                self._launch(request, stats, session, following)

        chunk.task = asyncio.get_running_loop().create_task(self.executor.execute(
            request.router, request.codec, stats, session, step, after_first_hop=first_hop_done, rebuild=False))

    async def self_drafts(self, request: GenerationRequest, stats: HopStats, session: PipelineSession,
                          sequence: Sequence, length: int) -> tuple[int, ...]:
        """Draft greedily with the draft router's skips and node bypasses (one pipeline pass
        per token), then cut the caches back: draft rows' K/V came from a shallower model."""
        draft_router = request.speculation.draft_router
        base = session.cached
        drafts: list[int] = []
        token = sequence.ids(base)[0]
        for _ in range(length):
            started = time.perf_counter()
            step = Step(next(self.step_ids), StepKind.DECODE, session.cached, (token,))
            logits = await self.executor.execute(draft_router, request.codec, stats, session, step)  # (1, vocab)
            token = int(np.argmax(logits[-1]))
            session.cached += 1
            self.step_costs.observe_draft(time.perf_counter() - started)
            stats.draft_steps += 1
            drafts.append(token)
            if token in sequence.stop_ids:
                break
        await self.truncate(session, base)
        return tuple(drafts)
