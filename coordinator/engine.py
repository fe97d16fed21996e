"""The generation engine: drives one request's tokens through the pipeline of workers.

Owns the per-request loop: embed (on the coordinator), send the hidden state through
each stage in layer order, run the head, sample, and yield tokens as they come. The
hidden state is quantized once by each sender; the coordinator relays one worker's
RESULT payload to the next worker untouched (only the routing header changes), so a
token crosses N + 1 codec steps for N stages. Never touches HTTP.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from coordinator.cluster import Cluster
from coordinator.config import ServerConfig
from coordinator.worker_link import WorkerLost
from protocol.activation_codec import (
    CodecSettings,
    Route,
    StreamCodecState,
    decode_activation,
    encode_activation,
)
from protocol.frames import FrameKind, retarget
from shards.model_ends import ModelEnds
from shards.sampling import SamplingParams, make_rng, sample_token

log = logging.getLogger(__name__)


class GenerationFailed(RuntimeError):
    """A request could not complete (a worker left, or stopped answering)."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    codec: CodecSettings
    stop_ids: frozenset[int]


@dataclass
class HopStats:
    """Accounting for one request, reported in `usage.tabswarm`."""

    hops: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    stages: int = 0
    step_seconds: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class TokenEvent:
    token: int
    seconds: float


class GenerationEngine:
    def __init__(self, ends: ModelEnds, cluster: Cluster, config: ServerConfig) -> None:
        self.ends = ends
        self.cluster = cluster
        self.config = config
        self._streams = itertools.count(1)
        self.tokens_generated = 0

    async def _run(self, function, *args):
        """Run a native onnxruntime call off the event loop (it releases the GIL)."""
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)

    async def generate(self, request: GenerationRequest, stats: HopStats) -> AsyncIterator[TokenEvent]:
        pipeline = await self.cluster.wait_pipeline(self.config.worker_wait_seconds)
        stream = next(self._streams)
        stats.stages = len(pipeline)
        encoder, decoder = StreamCodecState(), StreamCodecState()
        rng = make_rng(request.params)
        ids = list(request.prompt_ids)
        position = 0
        self.cluster.request_started()
        try:
            hidden = await self._run(self.ends.embed, ids)  # (1, seq, hidden)
            for _ in range(request.params.max_tokens):
                started = time.perf_counter()
                rows = hidden[0]
                first = pipeline[0][0]
                frame = encode_activation(rows, Route(FrameKind.FORWARD, stream, position, first.layer_start,
                                                      first.layer_end), request.codec, encoder)
                for index, (stage, link) in enumerate(pipeline):
                    if index:
                        frame = retarget(frame, FrameKind.FORWARD, stage.layer_start, stage.layer_end)
                    stats.bytes_sent += len(frame)
                    try:
                        frame = await link.call(frame, stream, position, self.config.step_timeout_seconds)
                    except WorkerLost as error:
                        raise GenerationFailed(str(error)) from error
                    stats.bytes_received += len(frame)
                    stats.hops += 1
                _, values = decode_activation(frame, decoder)          # (rows, hidden)
                logits = (await self._run(self.ends.logits, values[None, -1:]))[0, -1]
                token = sample_token(logits, request.params, rng)
                position += len(rows)
                seconds = time.perf_counter() - started
                stats.step_seconds.append(seconds)
                self.tokens_generated += 1
                yield TokenEvent(token, seconds)
                if token in request.stop_ids:
                    return
                hidden = await self._run(self.ends.embed, [token])
        finally:
            await self.cluster.request_finished()
            for stage, link in pipeline:
                try:
                    await link.send_control({"type": "release", "stream": stream}, stream)
                except WorkerLost:  # that worker is gone; its caches went with it
                    log.debug("release of stream %d skipped on gone worker %s", stream, stage.worker)
