"""HTTP handlers: the OpenAI-style API, health and status. Thin I/O over the engine.

Owns turning requests into engine calls and engine events into JSON or SSE. Bad input
becomes a 4xx with an OpenAI-shaped JSON error; nothing here decides about workers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import replace
from typing import Any

from aiohttp import web

from coordinator.api.activity import RequestRecord
from coordinator.api.openai_schema import ParsedRequest, parse_request
from coordinator.api.request_watch import RequestWatch, outcome_of
from coordinator.api.text_stream import TextStream
from coordinator.config import AppConfig
from coordinator.engine.engine_snapshot import EngineSnapshot
from coordinator.engine.generation import GenerationEngine, GenerationFailed, GenerationRequest
from coordinator.engine.scheduler import Admission, Load, admit, next_from_queue
from coordinator.engine.session import HopStats
from coordinator.swarm.cluster import Cluster, NoWorkers
from coordinator.types import ApiError
from shards.model_ends import ModelEnds
from shards.sampling import SamplingParams
from shards.tokenizer import ChatTemplateError

log = logging.getLogger(__name__)
BUSY_RETRY_SECONDS = 2          # a full queue drains in seconds at decode speed
NO_WORKERS_RETRY_SECONDS = 10   # tabs joining need ~10-30 s to load their layers
MAX_BODY = 4 << 20
MAX_JSON_DEPTH = 32


def _nesting(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (iterative: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                return depth
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


class Admissions:
    """Counts and a FIFO of waiters; the decisions come from scheduler.admit (pure)."""

    def __init__(self, max_active: int, max_queue: int) -> None:
        self.max_active, self.max_queue = max_active, max_queue
        self.active = 0
        self.waiters: list[asyncio.Future[None]] = []

    def load(self) -> Load:
        return Load(self.active, len(self.waiters))

    async def enter(self) -> None:
        decision = admit(self.load(), self.max_active, self.max_queue)
        if decision is Admission.REFUSE:
            raise ApiError(429, f"the server is busy: {self.active} requests running and {len(self.waiters)} "
                                "waiting; retry later", code="rate_limit_exceeded", kind="rate_limit_error",
                           retry_after=BUSY_RETRY_SECONDS)
        if decision is Admission.QUEUE:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
                elif waiter.done():  # admitted just as the client left: hand the slot on
                    self.leave()
                raise
        else:
            self.active += 1

    def leave(self) -> None:
        self.active -= 1
        if next_from_queue(self.load(), self.max_active):
            self.active += 1
            self.waiters.pop(0).set_result(None)


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
    async def _body(self, request: web.Request) -> Any:
        if request.content_length and request.content_length > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
        raw = await request.read()
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
        try:
            body = json.loads(raw)
        except RecursionError as error:  # nesting deep enough to exhaust the parser's stack
            raise ApiError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from error
        except (ValueError, UnicodeDecodeError) as error:  # malformed JSON, or an integer too long to parse
            raise ApiError(400, f"the request body is not valid JSON: {str(error)[:200]}") from error
        if _nesting(body) > MAX_JSON_DEPTH:
            raise ApiError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
        return body

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
            parsed = parse_request(await self._body(request), chat, self.model_ids, self.config.codecs.names())
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

    @staticmethod
    def _usage(prompt_ids: list[int], completion: int, stats: HopStats) -> dict[str, Any]:
        steps = sorted(stats.step_seconds)
        return {"prompt_tokens": len(prompt_ids), "completion_tokens": completion,
                "total_tokens": len(prompt_ids) + completion,
                "tabswarm": {"stages": stats.stages, "hops": stats.hops, "bytes_sent": stats.bytes_sent,
                             "layer_executions": stats.layer_executions, "layers_skipped": stats.layers_skipped,
                             "nodes_bypassed": stats.nodes_bypassed, "hops_saved": stats.hops_saved,
                             "heads_pruned": stats.heads_pruned, "bytes_received": stats.bytes_received,
                             "replays": stats.replays, "moves": stats.moves, "replayed_rows": stats.replayed_rows,
                             "speculation": {"method": stats.speculation, "drafted": stats.drafted,
                                             "accepted": stats.accepted, "verify_passes": stats.verify_passes,
                                             "draft_steps": stats.draft_steps,
                                             "most_in_flight": stats.most_in_flight},
                             "timing": stats.timing.as_dict(),
                             "hops_per_token": round(stats.hops / completion, 3) if completion else None,
                             "prefill_tokens_per_second": round(len(prompt_ids) / stats.step_seconds[0], 1)
                             if stats.step_seconds and stats.step_seconds[0] > 0 else None,
                             # the first step (the prompt) yields one token; the others may yield several
                             "decode_tokens_per_second": round((completion - 1) / sum(stats.step_seconds[1:]), 2)
                             if len(steps) > 1 and sum(stats.step_seconds[1:]) > 0 else None}}

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
        except NoWorkers as error:
            raise ApiError(503, str(error), code="no_workers", kind="server_error",
                           retry_after=NO_WORKERS_RETRY_SECONDS) from error
        except GenerationFailed as error:
            raise ApiError(503, f"generation failed: {error}", code="worker_lost", kind="server_error") from error
        content = self._stopped_text(text) if text.stopped else text.text()
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            choice["message"] = {"role": "assistant", "content": content}
        else:
            choice["text"] = content
        if parsed.return_token_ids:
            choice["token_ids"] = tokens
        body = self._envelope(chat, False) | {"choices": [choice],
                                                "usage": self._usage(prompt_ids, len(tokens), stats)}
        return web.json_response(body), "done"

    @staticmethod
    def _stopped_text(text: TextStream) -> str:
        full = text.text()
        cuts = [full.find(stop) for stop in text.stops if stop in full]
        return full[: min(cuts)] if cuts else full

    async def _stream(self, request: web.Request, parsed: ParsedRequest, prompt_ids: list[int],
                      generation: GenerationRequest, chat: bool, stats: HopStats,
                      record: RequestRecord) -> tuple[web.StreamResponse, str]:
        text, tokens = TextStream(self.ends.text.decode, parsed.stop), []
        outcome = "done"
        envelope = self._envelope(chat, True)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        started = False

        async def send(piece: str | None, finish: str | None = None, token: int | None = None) -> None:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if chat:
                choice["delta"] = {} if piece is None else {"content": piece}
            else:
                choice["text"] = piece or ""
            if token is not None and parsed.return_token_ids:
                choice["token_ids"] = [token]
            await response.write(f"data: {json.dumps(envelope | {'choices': [choice]})}\n\n".encode())

        finish = "length"
        try:
            async for event in self.engine.generate(generation, stats):
                if not started:
                    await response.prepare(request)
                    started = True
                    if chat:
                        first = envelope | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                          "finish_reason": None}]}
                        await response.write(f"data: {json.dumps(first)}\n\n".encode())
                if event.token in generation.stop_ids:
                    finish = "stop"
                    break
                tokens.append(event.token)
                self.watch.token(record)
                piece = text.push(event.token)
                if piece or parsed.return_token_ids:
                    await send(piece, token=event.token)
                if text.stopped:
                    finish = "stop"
                    break
            if not text.stopped:
                tail = text.finish()
                if tail:
                    await send(tail)
            await send(None, finish)
            if parsed.include_usage:
                usage = envelope | {"choices": [], "usage": self._usage(prompt_ids, len(tokens), stats)}
                await response.write(f"data: {json.dumps(usage)}\n\n".encode())
        except (NoWorkers, GenerationFailed) as error:
            code = "no_workers" if isinstance(error, NoWorkers) else "worker_lost"
            failure = ApiError(503, str(error) if isinstance(error, NoWorkers) else f"generation failed: {error}",
                               code=code, kind="server_error")
            if not started:
                raise failure from error
            outcome = "failed"   # the status line said 200; the stream ends with the error
            await response.write(f"data: {json.dumps(failure.body())}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):  # the client went away: stop generating
            log.info("client disconnected; request abandoned after %d tokens", len(tokens))
            raise
        if not started:
            await response.prepare(request)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response, outcome

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


@web.middleware
async def json_errors(request: web.Request, handler):
    """ApiError -> its status and OpenAI error body; aiohttp's own 4xx (404, 405) get the same shape."""
    try:
        return await handler(request)
    except ApiError as error:
        return web.json_response(error.body(), status=error.status, headers=error.headers())
    except web.HTTPException as error:
        if error.status < 400 or not request.path.startswith("/v1"):
            raise
        body = ApiError(error.status, error.reason or "error", code=str(error.status)).body()
        return web.json_response(body, status=error.status)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:  # a bug, not bad input: log it, answer in the API's shape
        log.exception("internal error on %s %s", request.method, request.path)
        body = ApiError(500, "internal error (see the coordinator's log)", kind="server_error").body()
        return web.json_response(body, status=500)
