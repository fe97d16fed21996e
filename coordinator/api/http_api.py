"""HTTP handlers: the OpenAI-style API, health and status. Thin I/O over the engine.

Owns turning requests into engine calls and engine events into JSON or SSE. Bad input
becomes a 4xx with an OpenAI-shaped JSON error; nothing here decides about workers.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import replace
from typing import Any

from aiohttp import web

from coordinator.api.activity import RequestRecord
from coordinator.api.admissions import Admissions
from coordinator.api.json_io import read_json_body
from coordinator.api.openai_schema import ParsedRequest, parse_request
from coordinator.api.request_watch import RequestWatch, outcome_of
from coordinator.api.sse_chunks import SSE_HEADERS, ChunkWriter
from coordinator.api.text_stream import TextStream
from coordinator.api.usage_report import usage_report
from coordinator.config import AppConfig
from coordinator.engine.engine_snapshot import EngineSnapshot
from coordinator.engine.generation import GenerationEngine, GenerationFailed
from coordinator.engine.generation_request import GenerationRequest
from coordinator.engine.session import HopStats
from coordinator.swarm.cluster import Cluster, NoWorkers
from coordinator.types import ApiError
from shards.model_ends import ModelEnds
from shards.sampling import SamplingParams
from shards.tokenizer import ChatTemplateError

log = logging.getLogger(__name__)
NO_WORKERS_RETRY_SECONDS = 10   # tabs joining need ~10-30 s to load their layers


class Api:
    def __init__(self, config: AppConfig, ends: ModelEnds, cluster: Cluster, engine: GenerationEngine,
                 watch: RequestWatch) -> None:
        self.config, self.ends, self.cluster, self.engine, self.watch = config, ends, cluster, engine, watch
        source = ends.manifest.source["file"].removesuffix(".gguf")
        self.model_ids = (source, "tabswarm")
        self.admissions = Admissions(config.server.max_active, config.server.max_queue)
        self.started = time.time()
        self.requests_total = 0

    # -- helpers ------------------------------------------------------------------------
    def _prepare(self, parsed: ParsedRequest) -> tuple[list[int], GenerationRequest]:
        try:
            prompt_ids = (self.ends.text.encode_chat(list(parsed.messages)) if parsed.messages is not None
                          else self.ends.text.encode(parsed.prompt or ""))
        except ChatTemplateError as error:
            raise ApiError(400, str(error), "messages") from error
        context = self.ends.manifest.model.context
        room = context - len(prompt_ids)
        if room < 1:
            raise ApiError(400, f"the prompt is {len(prompt_ids)} tokens; the model's context is {context}",
                           "messages" if parsed.messages is not None else "prompt", "context_length_exceeded")
        if parsed.max_tokens_given and parsed.params.max_tokens > room:
            raise ApiError(400, f"prompt ({len(prompt_ids)} tokens) + max_tokens ({parsed.params.max_tokens}) "
                                f"exceeds the context of {context}", "max_tokens", "context_length_exceeded")
        max_tokens = parsed.params.max_tokens if parsed.max_tokens_given else min(
            self.config.server.default_max_tokens, room)
        params = SamplingParams(parsed.params.temperature, parsed.params.top_p, parsed.params.top_k,
                                parsed.params.seed, max_tokens)
        speculation = self.config.speculation
        if parsed.speculation is None and parsed.params.temperature > 0:
            # The default speeds up greedy requests only: a sampled request's draws depend on
            # the drafting decisions, so it speculates only when it asks to.
            speculation = replace(speculation, method="off")
        if parsed.speculation:
            try:
                speculation = replace(speculation, **parsed.speculation)
            except ValueError as error:   # the combination is invalid (the fields were checked one by one)
                raise ApiError(400, str(error), "tabswarm.speculation") from error
        codec = self.config.codecs.get(parsed.codec)   # (no preset uses delta coding, which the engine never speculates with)
        request = GenerationRequest(tuple(prompt_ids), params, codec, self.ends.manifest.stop_set,
                                    parsed.router or self.config.router, speculation)
        return prompt_ids, request

    # -- endpoints ----------------------------------------------------------------------
    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def _complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        endpoint, arrived = ("chat" if chat else "completions"), time.monotonic()
        try:
            parsed = parse_request(await read_json_body(request), chat, self.model_ids, self.config.codecs.names())
            prompt_ids, generation = self._prepare(parsed)
        except ApiError as error:
            self.watch.refused(endpoint, error, arrived)
            raise
        self.requests_total += 1
        stats, admitted = HopStats(), False
        record = self.watch.open(endpoint, arrived, len(prompt_ids), generation.params.max_tokens, parsed.stream,
                                 stats)
        try:
            await self.admissions.enter()
            admitted = True
            if parsed.stream:
                response, outcome = await self._stream(request, parsed, prompt_ids, generation, chat, stats, record)
            else:
                response, outcome = await self._whole(parsed, prompt_ids, generation, chat, stats, record)
        except BaseException as error:   # every ending is counted; the error itself goes on up
            self.watch.close(record, *outcome_of(error), stats)
            raise
        finally:
            if admitted:
                self.admissions.leave()
        self.watch.close(record, outcome, response.status, stats)
        return response

    def _envelope(self, chat: bool, streaming: bool) -> dict[str, Any]:
        kind = ("chat.completion" if chat else "text_completion") + (".chunk" if streaming and chat else "")
        prefix = "chatcmpl" if chat else "cmpl"
        return {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "object": kind, "created": int(time.time()),
                "model": self.model_ids[0]}

    async def _whole(self, parsed: ParsedRequest, prompt_ids: list[int], generation: GenerationRequest,
                     chat: bool, stats: HopStats, record: RequestRecord) -> tuple[web.Response, str]:
        text, tokens = TextStream(self.ends.text.decode, parsed.stop), []
        finish = "length"
        try:
            async for event in self.engine.generate(generation, stats):
                if event.token in generation.stop_ids:
                    finish = "stop"
                    break
                tokens.append(event.token)
                self.watch.token(record)
                text.push(event.token)
                if text.stopped:
                    finish = "stop"
                    break
        except (NoWorkers, GenerationFailed) as error:
            raise self._failure(error) from error
        content = self._stopped_text(text) if text.stopped else text.text()
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            choice["message"] = {"role": "assistant", "content": content}
        else:
            choice["text"] = content
        if parsed.return_token_ids:
            choice["token_ids"] = tokens
        body = self._envelope(chat, False) | {"choices": [choice],
                                                "usage": usage_report(len(prompt_ids), len(tokens), stats)}
        return web.json_response(body), "done"

    @staticmethod
    def _stopped_text(text: TextStream) -> str:
        full = text.text()
        cuts = [full.find(stop) for stop in text.stops if stop in full]
        return full[: min(cuts)] if cuts else full

    async def _stream(self, request: web.Request, parsed: ParsedRequest, prompt_ids: list[int],
                      generation: GenerationRequest, chat: bool, stats: HopStats,
                      record: RequestRecord) -> tuple[web.StreamResponse, str]:
        """The completion as server-sent events. The status line goes out with the first
        token, so a failure before it is still a 503; one after it ends the stream with the
        error as its last event."""
        text, tokens = TextStream(self.ends.text.decode, parsed.stop), []
        response = web.StreamResponse(headers=SSE_HEADERS)
        writer = ChunkWriter(response, self._envelope(chat, True), chat, parsed.return_token_ids)
        outcome, finish = "done", "length"
        try:
            async for event in self.engine.generate(generation, stats):
                if not response.prepared:
                    await response.prepare(request)
                    await writer.opening()
                if event.token in generation.stop_ids:
                    finish = "stop"
                    break
                tokens.append(event.token)
                self.watch.token(record)
                piece = text.push(event.token)
                if piece or parsed.return_token_ids:
                    await writer.piece(piece, token=event.token)
                if text.stopped:
                    finish = "stop"
                    break
            if not text.stopped and (tail := text.finish()):
                await writer.piece(tail)
            await writer.piece(None, finish)
            if parsed.include_usage:
                await writer.event(writer.envelope | {"choices": [],
                                                      "usage": usage_report(len(prompt_ids), len(tokens), stats)})
        except (NoWorkers, GenerationFailed) as error:
            failure = self._failure(error)
            if not response.prepared:
                raise failure from error
            outcome = "failed"   # the status line said 200; the stream ends with the error
            await writer.event(failure.body())
        except (ConnectionResetError, asyncio.CancelledError):  # the client went away: stop generating
            log.info("client disconnected; request abandoned after %d tokens", len(tokens))
            raise
        if not response.prepared:
            await response.prepare(request)
        await writer.done()
        return response, outcome

    @staticmethod
    def _failure(error: NoWorkers | GenerationFailed) -> ApiError:
        """The 503 a request gets when no pipeline could run it, or its generation failed."""
        if isinstance(error, NoWorkers):
            return ApiError(503, str(error), code="no_workers", kind="server_error",
                            retry_after=NO_WORKERS_RETRY_SECONDS)
        return ApiError(503, f"generation failed: {error}", code="worker_lost", kind="server_error")

    async def models(self, request: web.Request) -> web.Response:
        # a base model (no chat template in its GGUF) serves /v1/completions only
        kind = {"base_model": self.ends.manifest.base_model,
                "endpoints": ["/v1/completions"] + ([] if self.ends.manifest.base_model else ["/v1/chat/completions"])}
        data = [{"id": model_id, "object": "model", "created": int(self.started), "owned_by": "tabswarm",
                 "tabswarm": kind} for model_id in self.model_ids]
        return web.json_response({"object": "list", "data": data})

    async def health(self, request: web.Request) -> web.Response:
        ready = self.cluster.pipeline() is not None
        placement = self.cluster.placement()
        return web.json_response({"status": "ok" if ready else "waiting_for_workers", "ready": ready,
                                  "workers": len(self.cluster.workers),
                                  "reason": None if ready else self.cluster.waiting_reason(),
                                  "memory": {"offered_mb": placement["offered_mb"], "layer_mb": placement["layer_mb"],
                                             "holdable_layers": placement["holdable_layers"],
                                             "layers": self.ends.manifest.model.layers,
                                             "shortfall": placement["shortfall"]}})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status_report())

    def status_report(self) -> dict[str, Any]:
        """What `/v1/status` answers (the dashboard's stream sends it too), from one snapshot
        of the engine's counters."""
        load = self.admissions.load()
        engine = EngineSnapshot.of(self.engine)
        return {
            "model": self.model_ids[0], "layers": self.ends.manifest.model.layers,
            "base_model": self.ends.manifest.base_model, "compute": self.cluster.compute,
            "uptime_seconds": round(time.time() - self.started, 1),
            "queue": {"active": load.active, "waiting": load.queued, "max_active": self.admissions.max_active,
                      "max_waiting": self.admissions.max_queue},
            "requests_total": self.requests_total, "tokens_generated": engine.tokens_generated,
            "timing": engine.timing.as_dict(),   # the coordinator's parts; each worker's own under workers
            "verification": engine.verification() | {"fraction": self.config.server.verify_fraction,
                                                     "probation_steps": self.config.server.verify_probation_steps},
            "speculation": self._speculation_status(engine),
            "churn": {"replays": engine.replays, "moves": engine.moves, "failed_after_loss": engine.failures,
                      "standby_workers": self.config.server.standby_workers,
                      "recovery_seconds": self.config.server.recovery_seconds},
            "codecs": self.config.codecs.names(), "default_codec": self.config.codecs.default,
            "router": {"default_policy": self.config.router.policy, "skip_rate_per_layer": engine.skip_rates(),
                       "skipped_per_layer": list(engine.skipped_per_layer),
                       "mean_ratio_per_layer": [round(r, 4) for r in engine.mean_ratio_per_layer],
                       "default_prune_heads": self.config.router.prune_heads,
                       "head_samples_per_layer": list(engine.head_samples_per_layer)},
        } | self.cluster.status()

    def _speculation_status(self, engine: EngineSnapshot) -> dict[str, Any]:
        """The server's default and the measured step costs its drafting decisions use."""
        default = self.config.speculation

        def milliseconds(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 2)

        return {"default_method": default.method, "max_draft": default.max_draft,
                "one_row_step_ms": milliseconds(engine.one_row_step),
                "extra_verified_row_ms": milliseconds(engine.extra_verified_row),
                "draft_step_ms": milliseconds(engine.draft_step)}
