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

from coordinator.cluster import Cluster, Pipeline
from coordinator.config import ServerConfig
from coordinator.head_pruning import HeadStatistics, Masks, StreamHeadMasks, observe_heads
from coordinator.planner import Stage
from coordinator.router import (
    LayerStatistics,
    NodeDecision,
    RouterConfig,
    TokenState,
    decide,
    observe,
    start_token,
)
from coordinator.worker_link import WorkerLink, WorkerLost
from protocol.activation_codec import (
    CodecSettings,
    Route,
    StreamCodecState,
    decode_activation,
    encode_activation,
)
from protocol.control import HEAD_SAMPLE_INTERVAL
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
    router: RouterConfig = field(default_factory=RouterConfig)


@dataclass
class HopStats:
    """Accounting for one request, reported in `usage.tabswarm`."""

    hops: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    stages: int = 0
    layer_executions: int = 0
    layers_skipped: int = 0
    nodes_bypassed: int = 0
    hops_saved: int = 0
    heads_pruned: int = 0          # (token, layer, head) attention executions masked
    step_seconds: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class TokenEvent:
    token: int
    seconds: float


class GenerationEngine:
    """Runs requests through the cluster's pipeline; the router decides skips per token."""

    def __init__(self, ends: ModelEnds, cluster: Cluster, config: ServerConfig) -> None:
        self.ends = ends
        self.cluster = cluster
        self.config = config
        self._streams = itertools.count(1)
        self.tokens_generated = 0
        model = ends.manifest.model
        self.layer_statistics = LayerStatistics(model.layers)  # the router's running means
        self.head_statistics = HeadStatistics(model.layers, model.heads)

    async def _run(self, function, *args):
        """Run a native onnxruntime call off the event loop (it releases the GIL)."""
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)

    async def generate(self, request: GenerationRequest, stats: HopStats) -> AsyncIterator[TokenEvent]:
        pipeline = await self.cluster.wait_pipeline(self.config.worker_wait_seconds)
        stream = next(self._streams)
        stats.stages = len(pipeline)
        encoder, decoder = StreamCodecState(), StreamCodecState()
        routing = TokenState()
        heads = StreamHeadMasks(self.head_statistics.heads, HEAD_SAMPLE_INTERVAL)
        masks_sent: dict[str, Masks | None] = {}   # worker id -> the masks it applies to this stream
        rng = make_rng(request.params)
        ids = list(request.prompt_ids)
        position = 0
        self.cluster.request_started()
        try:
            hidden = await self._run(self.ends.embed, ids)  # (1, seq, hidden)
            for _ in range(request.params.max_tokens):
                started = time.perf_counter()
                rows = hidden[0]
                frame = encode_activation(rows, Route(FrameKind.FORWARD, stream, position), request.codec, encoder)
                start_token(routing)
                heads.update(request.router, self.head_statistics, position, len(rows))
                for stage, link in pipeline:
                    frame = await self._stage(request, stats, routing, stage, link, frame, stream, position,
                                              one_row=len(rows) == 1, heads=heads, masks_sent=masks_sent)
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
            await self._release(pipeline, stream)

    async def _stage(self, request: GenerationRequest, stats: HopStats, routing: TokenState, stage: Stage,
                     link: WorkerLink, frame: bytes, stream: int, position: int, one_row: bool,
                     heads: StreamHeadMasks, masks_sent: dict[str, Masks | None]) -> bytes:
        """One stage for one step: run it (with the router's skip mask) or bypass it."""
        decision = (decide(request.router, self.layer_statistics, routing, position, stage.layer_start,
                           stage.layer_end) if one_row else NodeDecision(0, False))
        stats.layer_executions += stage.size
        stats.layers_skipped += bin(decision.skip_mask).count("1")
        ran = [layer for offset, layer in enumerate(range(stage.layer_start, stage.layer_end))
               if not decision.skip_mask >> offset & 1]
        try:
            masks = heads.masks_for(stage.layer_start, stage.layer_end)
            if masks != masks_sent.get(stage.worker):
                # Control frames and FORWARD frames share the socket, so this lands first.
                await link.send_control({"type": "head_mask", "stream": stream, "layer_start": stage.layer_start,
                                         "masks": [list(row) for row in masks] if masks is not None else []}, stream)
                masks_sent[stage.worker] = masks
            if masks is not None:
                stats.heads_pruned += sum(row.count(0) for layer, row in zip(
                    range(stage.layer_start, stage.layer_end), masks, strict=True) if layer in ran)
            if decision.bypass:
                # Off the critical path: the node gets the hidden state it would have seen and
                # writes K/V for all its layers (K/V-only graphs); nobody waits for it.
                backfill = retarget(frame, FrameKind.FORWARD, stage.layer_start, stage.layer_end,
                                    skip_mask=decision.skip_mask, no_reply=True)
                await link.send(backfill)
                stats.bytes_sent += len(backfill)
                stats.nodes_bypassed += 1
                stats.hops_saved += 1
                observe(request.router, self.layer_statistics, routing, position, stage.layer_start,
                        stage.layer_end, decision, [], [], None)
                return frame   # the next stage gets the same payload
            forward = retarget(frame, FrameKind.FORWARD, stage.layer_start, stage.layer_end,
                               skip_mask=decision.skip_mask)
            stats.bytes_sent += len(forward)
            result = await link.call(forward, stream, position, self.config.step_timeout_seconds)
        except WorkerLost as error:
            raise GenerationFailed(str(error)) from error
        stats.bytes_received += len(result)
        stats.hops += 1
        report = link.take_layer_stats(stream, position)
        if report is not None:
            observe(request.router, self.layer_statistics, routing, position, stage.layer_start, stage.layer_end,
                    decision,
                    [float(r) for r in report["ratios"]], [float(n) for n in report.get("norms", [])],
                    float(report["node_ratio"]))
            if "head_ratios" in report:
                observe_heads(request.router, self.head_statistics, position, stage.layer_start, ran,
                              [[float(r) for r in row] for row in report["head_ratios"]])
        return result

    async def _release(self, pipeline: Pipeline, stream: int) -> None:
        """The request is over: count it out, and have every worker free its caches."""
        await self.cluster.request_finished()
        for stage, link in pipeline:
            try:
                await link.send_control({"type": "release", "stream": stream}, stream)
            except WorkerLost:  # that worker is gone; its caches went with it
                log.debug("release of stream %d skipped on gone worker %s", stream, stage.worker)

