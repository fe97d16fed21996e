"""Pipelined speculation for one stream: up to one verify chunk per stage in flight.

A plain verify step keeps one stage busy at a time: stage 1 runs [x, d1..dk], then stage
2, then the head; the other stages wait. Here a greedy stream's drafts are cut into
chunks, and a new chunk goes to stage 1 as soon as the previous one leaves it, so with N
stages up to N chunks are in flight, each at a later position and each verified at full
depth (the SpecPipe / PipeInfer idea). Chunk j+1 starts with the token chunk j's last row
is expected to produce (the prompt-lookup continuation of everything launched so far).

When chunk j's logits arrive, `settle` decides (pure) what it emits, exactly as a verify
pass of the same rows would (`acceptance.accept_drafts`): its accepted drafts and the
corrected or bonus token. If every draft was accepted and the bonus is chunk j+1's first
id, chunk j+1 is still valid and the stream goes on; otherwise every later chunk is
wasted: they are drained (their frames are already on the sockets) and the caches cut back
to the accepted length with the existing truncate. Greedy only: the tokens then equal
plain decoding's token for token (row-invariant graphs), where a sampled stream's random
draws would depend on how its drafts were cut.

Ordering: a chunk goes to stage s+1 in the same event-loop turn its stage-s result
arrives, and the next chunk is launched from that turn at stage 1; so every stage gets a
stream's chunks in position order. A chunk never goes ahead of a worker on probation (its
result is checked before it is relayed): none is launched while one is in the pipeline.
Owns no sockets: the engine hands it a function that runs one step.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from coordinator.engine.acceptance import Verdict, accept_drafts
from coordinator.engine.drafting import lookup_draft
from coordinator.engine.generation_state import Step, through_stop
from coordinator.swarm.worker_link import WorkerLost
from protocol.frames import StepKind
from shards.sampling import SamplingParams


@dataclass
class Chunk:
    position: int                       # row 0's position
    ids: tuple[int, ...]
    task: asyncio.Task[np.ndarray] | None = None   # the running step: logits (rows, vocab)


@dataclass(frozen=True)
class Settled:
    """What the head chunk's logits mean for the stream."""

    verdict: Verdict
    chained: bool        # the next chunk in flight is still valid (every draft and the bonus agreed)
    drafted: int         # drafts this settle judged (including the next chunk's first id)
    accepted: int
    launched_past: bool = False   # caches hold rows past the accepted ones (set by settle_oldest)


def settle(logits: np.ndarray, head: Chunk, following: Chunk | None, params: SamplingParams,
           rng: np.random.Generator) -> Settled:
    """The head chunk's verdict (logits (rows, vocab)); `following`: the chunk launched after it."""
    verdict = accept_drafts(logits, head.ids[1:], params, rng)
    complete = verdict.accepted == len(head.ids) - 1
    chained = following is not None and complete and verdict.tokens[-1] == following.ids[0]
    drafted = len(head.ids) - 1 + (following is not None and complete)
    return Settled(verdict, chained, drafted, verdict.accepted + chained)


async def settle_oldest(chunks: ChunkPipeline, params: SamplingParams, rng: np.random.Generator) -> Settled:
    """Wait for the oldest chunk in flight and settle it; when the chain breaks, drain the
    later chunks (re-raising a lost worker's WorkerLost: the engine replays the sequence)."""
    head = chunks.chunks[0]
    assert head.task is not None
    try:
        logits = await head.task                                             # (rows, vocab)
    except WorkerLost:
        await chunks.drain()
        raise
    chunks.chunks.popleft()
    settled = settle(logits, head, chunks.chunks[0] if chunks.chunks else None, params, rng)
    chunks.streak = settled.verdict.accepted == len(head.ids) - 1
    if settled.chained:
        return settled
    launched_past = not chunks.streak or bool(chunks.chunks)
    failure = await chunks.drain()
    if isinstance(failure, WorkerLost):
        raise failure
    return replace(settled, launched_past=launched_past)


@dataclass
class ChunkPipeline:
    """One stream's chunks in flight, oldest first, and every id they were launched with."""

    depth: int                          # stages: chunks in flight at most
    rows: int                           # ids per chunk
    max_ids: int                        # prompt + max_tokens: nothing is launched past it
    stop_ids: frozenset[int]
    ngram: tuple[int, int] = (3, 1)     # (ngram_max, ngram_min) of the lookup
    ids: list[int] = field(default_factory=list)     # confirmed ids, then every launched draft
    chunks: deque[Chunk] = field(default_factory=deque)
    launching: bool = False             # new chunks may still go out (off after a rejection)
    # The last settled chunk accepted every draft. Only then does a chunk follow another:
    # lookup drafts come in runs (a passage being copied), and a chunk launched after a
    # rejected one is wasted time on every stage (open chat: 0.86x plain without this rule).
    streak: bool = False
    blocked: Callable[[], bool] = lambda: False      # a stage's results are gated (probation)

    def start(self, confirmed: tuple[int, ...], cached: int) -> Chunk:
        """The first chunk from the confirmed state: the last id plus its lookup drafts (others
        follow it once it leaves stage 1 if the chunk settled before it accepted all of its)."""
        self.ids = list(confirmed)
        self.launching = True
        drafts = self._drafts(self.rows - 1)
        self.ids.extend(drafts)
        chunk = Chunk(cached, (confirmed[-1], *drafts))
        self.chunks.append(chunk)
        return chunk

    def follow(self) -> Chunk | None:
        """The next chunk, starting where the last one ends, or None (full, stopped, no draft)."""
        if (not self.launching or not self.streak or not self.chunks or len(self.chunks) >= self.depth
                or self.blocked()):
            return None
        last = self.chunks[-1]
        if last.ids[-1] in self.stop_ids:
            return None
        drafts = self._drafts(self.rows)
        if not drafts:
            return None
        self.ids.extend(drafts)
        chunk = Chunk(last.position + len(last.ids), drafts)
        self.chunks.append(chunk)
        return chunk

    def _drafts(self, length: int) -> tuple[int, ...]:
        length = min(length, self.max_ids - len(self.ids))
        return through_stop(lookup_draft(self.ids, length, *self.ngram) if length > 0 else (), self.stop_ids)

    def step(self, chunk: Chunk, step_id: int) -> Step:
        kind = StepKind.VERIFY if len(chunk.ids) > 1 or chunk is not self.chunks[0] else StepKind.DECODE
        return Step(step_id, kind, chunk.position, chunk.ids, chunk.ids[1:])

    async def drain(self) -> BaseException | None:
        """Stop launching and wait for every chunk in flight (their frames are on the sockets:
        a truncate or release sent now must land after them); returns the first failure."""
        self.launching = False
        tasks = [chunk.task for chunk in self.chunks if chunk.task is not None]
        self.chunks.clear()
        failures = [result for result in await asyncio.gather(*tasks, return_exceptions=True)
                    if isinstance(result, BaseException)]
        return failures[0] if failures else None
