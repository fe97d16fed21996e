"""The worker WebSocket endpoint (/ws/worker): reads frames and hands them on.

Thin I/O: RESULT frames go to the link's waiting call, control messages to the
cluster. A malformed frame closes that socket with the decoder's reason (code 1003);
a message out of protocol order closes it with 1008. Other sockets carry on.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import WSMsgType, web

from coordinator.swarm.cluster import Cluster
from coordinator.swarm.step_timing import StallPolicy
from coordinator.swarm.worker_lifecycle import WorkerState
from coordinator.swarm.worker_link import WorkerLink
from coordinator.trust.access import AccessConfig, worker_decision
from protocol.control import (
    ErrorReport,
    Heartbeat,
    Hello,
    LayerStats,
    Leave,
    Progress,
    Ready,
    Stats,
    decode_control,
)
from protocol.errors import FrameError
from protocol.frames import HEADER_SIZE, MAX_PAYLOAD, VERSION, FrameKind, parse_frame

log = logging.getLogger(__name__)

CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY = 1008


class ProtocolViolation(Exception):
    """A well-formed frame sent out of order (e.g. a RESULT before hello)."""


class WorkerLeaving(Exception):
    """The worker said `leave`: close normally."""


async def handle_worker(request: web.Request, cluster: Cluster, access: AccessConfig) -> web.StreamResponse:
    token = request.query.get("token")
    refusal = worker_decision(access, token)
    if refusal is not None:   # before the upgrade: no socket, no protocol
        log.warning("refused a worker from %s: %s", request.remote, refusal)
        return web.json_response({"error": {"message": refusal, "type": "permission_error", "param": None,
                                            "code": "invalid_join_token"}}, status=403)
    socket = web.WebSocketResponse(compress=False, max_msg_size=HEADER_SIZE + MAX_PAYLOAD)
    await socket.prepare(request)
    server = cluster.config
    stall = StallPolicy(floor_seconds=server.stall_floor_seconds, factor=server.stall_factor,
                        initial_seconds=server.step_timeout_seconds)
    link = WorkerLink(cluster.next_worker_id(), socket, request.remote or "?", stall)
    link.token = token or ""
    reason = "connection closed"
    try:
        async for message in socket:
            if message.type == WSMsgType.BINARY:
                try:
                    await _dispatch(cluster, link, message.data)
                except FrameError as error:  # malformed frame: this socket only
                    reason = f"{error.reason}: {error.detail}"
                    log.warning("closing worker %s: %s", link.id, reason)
                    await link.close(CLOSE_UNSUPPORTED_DATA, reason)
                    break
                except WorkerLeaving as error:  # a goodbye, not an error
                    reason = f"worker left: {error}"
                    await link.close(1000, reason)
                    break
                except ProtocolViolation as error:  # well-formed but out of order
                    reason = str(error)
                    log.warning("closing worker %s: %s", link.id, reason)
                    await link.close(CLOSE_POLICY, reason)
                    break
            elif message.type == WSMsgType.TEXT:
                reason = "text message: this endpoint speaks binary frames only"
                await link.close(CLOSE_UNSUPPORTED_DATA, reason)
                break
            elif message.type == WSMsgType.ERROR:
                reason = f"socket error: {socket.exception()}"
                break
    finally:
        await cluster.leave(link, reason)
    return socket


async def _dispatch(cluster: Cluster, link: WorkerLink, data: bytes) -> None:
    header, _ = parse_frame(data)
    cluster.heard_from(link)
    if header.kind == FrameKind.RESULT:
        if link.info.state == WorkerState.JOINING:
            raise ProtocolViolation("a RESULT before hello")
        link.deliver_result(data, header)
        return
    if header.kind == FrameKind.FORWARD:
        raise ProtocolViolation("workers do not send FORWARD frames")
    message = decode_control(data)
    if link.info.state == WorkerState.JOINING and not isinstance(message, Hello):
        raise ProtocolViolation(f"expected hello, got {message.TYPE}")
    match message:
        case Hello():
            await _hello(cluster, link, message)
        case Ready():
            await cluster.ready(link, message)
        case Progress(done=done, total=total):
            cluster.loading_progress(link, done, total)
        case LayerStats():
            link.keep_layer_stats(header.stream, message)
        case Stats():
            cluster.worker_stats(link, message)
        case ErrorReport(code="out-of-memory", holds=holds):
            await cluster.allocation_failed(link, [layer for layer in holds or [] if isinstance(layer, int)],
                                            message.message)
        case ErrorReport(stream=stream):
            log.warning("worker %s reports %s: %s", link.id, message.code, message.message)
            if stream is not None:  # that stream's step will get no RESULT: fail it now, not at the timeout
                link.fail_stream(stream, f"{message.code}: {message.message}")
        case Leave(reason=reason):
            raise WorkerLeaving(reason)
        case Heartbeat():
            pass   # last_seen was updated above
        case _:   # coordinator -> tab messages (assign, retain, ...) have no business here
            raise ProtocolViolation(f"workers do not send {message.TYPE}")


async def _hello(cluster: Cluster, link: WorkerLink, hello: Hello) -> None:
    if hello.protocol != VERSION:
        raise ProtocolViolation(f"worker speaks protocol {hello.protocol}, coordinator {VERSION}")
    banned = cluster.banned_reason(link.remote, hello.worker or "")
    if banned is not None:
        raise ProtocolViolation(f"refused until the coordinator restarts: {banned}"[:120])
    await cluster.join(link, hello)


async def heartbeat_loop(cluster: Cluster, interval: float) -> None:
    """Ping every worker; drop those silent for three intervals (a frozen or hidden tab);
    let the plan follow measured speeds."""
    while True:
        await asyncio.sleep(interval)
        await cluster.replan_if_speeds_changed()
        now = time.monotonic()
        for link in list(cluster.workers.values()):
            if now - link.info.last_seen > 3 * interval:
                await link.close(CLOSE_POLICY, f"no heartbeat for {now - link.info.last_seen:.0f} s")
                await cluster.leave(link, "heartbeat timeout")
                continue
            try:
                await link.send_control(Heartbeat(time=time.time()))
            except Exception as error:  # a send racing a close; the reader loop will clean up
                log.debug("heartbeat to %s failed: %s", link.id, error)
