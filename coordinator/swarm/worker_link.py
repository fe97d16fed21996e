"""One worker tab's WebSocket, as the coordinator sees it: a thin I/O layer.

Owns sending frames, matching RESULT frames to the calls waiting for them, and failing
those calls when the socket goes away. Decides nothing about plans or requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from aiohttp import web

from coordinator.swarm.planner import Stage
from coordinator.swarm.step_timing import StallPolicy, StepHistogram, StepTimer
from coordinator.swarm.worker_info import WorkerInfo
from protocol.control import ControlMessage, LayerStats, encode_control
from protocol.frames import Header

log = logging.getLogger(__name__)


class WorkerLost(RuntimeError):
    """The worker holding a stage went away, stalled, or refused a step during a request.

    `stalled`: it did not answer within its step-time bound (the worker should be evicted);
    `refused`: it answered the step with an error (the stream is replayed, the worker stays).
    """

    def __init__(self, message: str, worker: str = "", stalled: bool = False, refused: bool = False) -> None:
        super().__init__(message)
        self.worker, self.stalled, self.refused = worker, stalled, refused


class WorkerLink:
    def __init__(self, worker_id: str, socket: web.WebSocketResponse, remote: str,
                 stall: StallPolicy | None = None) -> None:
        self.id = worker_id
        self.socket = socket
        self.remote = remote
        self.info = WorkerInfo()
        self.timer = StepTimer(stall or StallPolicy())
        self.step_times = StepHistogram()   # every step it served (/metrics)
        self._pending: dict[tuple[int, int], asyncio.Future[bytes]] = {}
        self._pending_rows: dict[tuple[int, int], int] = {}   # rows of each unanswered call
        self._calls = 0                                       # FORWARD calls made (sent) so far
        self._layer_stats: dict[tuple[int, int], LayerStats] = {}
        self._send_lock = asyncio.Lock()
        self.closed = False
        self.frames_sent = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.steps_served = 0
        self.token = ""            # the join token it presented (rotation drops old ones)
        self.checked_steps = 0     # results that passed a native re-run (probation ends at a few)

    def holds(self, stage: Stage) -> bool:
        return all(layer in self.info.holds for layer in range(stage.layer_start, stage.layer_end))

    async def send(self, frame: bytes) -> None:
        if self.closed:
            raise WorkerLost(f"worker {self.id} is gone", self.id)
        async with self._send_lock:
            try:
                await self.socket.send_bytes(frame)
            except (ConnectionResetError, RuntimeError) as error:  # socket closed under us
                raise WorkerLost(f"worker {self.id} is gone: {error}", self.id) from error
        self.frames_sent += 1
        self.bytes_sent += len(frame)

    async def send_control(self, message: ControlMessage, stream: int = 0) -> None:
        await self.send(encode_control(message, stream))

    async def call(self, frame: bytes, stream: int, step: int, rows: int) -> bytes:
        """Send a FORWARD frame and wait for the RESULT of the same (stream, step), no
        longer than this worker's step-time bound (then WorkerLost with stalled=True)."""
        key = (stream, step)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        queued = sum(self._pending_rows.values())   # the tab runs these first (or in the same pass)
        self._pending[key] = future
        self._pending_rows[key] = rows
        bound = self.timer.bound(rows, queued)
        started = time.monotonic()
        calls_before = self._calls
        self._calls += 1
        try:
            await self.send(frame)
            result = await asyncio.wait_for(future, bound)
        except TimeoutError as error:
            raise WorkerLost(f"worker {self.id} ({self.info.name}) stalled: no answer to a {rows}-row step "
                             f"within {bound:.1f} s", self.id, stalled=True) from error
        finally:
            self._pending.pop(key, None)
            self._pending_rows.pop(key, None)
        elapsed = time.monotonic() - started
        # frames sent after this one while it waited may have shared its pass (the tab batches
        # the frames that wait together): then its time is not a lone row's either
        joined = self._calls - calls_before - 1
        self.timer.observe(rows, elapsed, queued + joined)
        self.step_times.observe(elapsed)
        return result

    def deliver_result(self, frame: bytes, header: Header) -> None:
        """A RESULT frame arrived (already checked by parse_frame): wake the call waiting
        for it (late ones, e.g. for a stream already replayed elsewhere, are dropped)."""
        self.bytes_received += len(frame)
        self.steps_served += 1
        future = self._pending.get((header.stream, header.step))
        if future is not None and not future.done():
            future.set_result(frame)

    def keep_layer_stats(self, stream: int, message: LayerStats) -> None:
        """A layer_stats report; it precedes its RESULT on the socket."""
        if len(self._layer_stats) > 4096:  # reports nobody took (e.g. abandoned requests)
            self._layer_stats.clear()
        self._layer_stats[(stream, message.position)] = message

    def take_layer_stats(self, stream: int, position: int) -> LayerStats | None:
        return self._layer_stats.pop((stream, position), None)

    def fail_stream(self, stream: int, reason: str) -> None:
        """The worker cannot answer this stream's pending step (e.g. a replan moved its
        layers away mid-request): the waiting call raises WorkerLost at once."""
        for (pending_stream, _), future in self._pending.items():
            if pending_stream == stream and not future.done():
                future.set_exception(WorkerLost(f"worker {self.id} ({self.info.name}) failed the step: {reason}",
                                                self.id, refused=True))

    def fail_all(self, reason: str) -> None:
        self.closed = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(WorkerLost(f"worker {self.id} ({self.info.name}) left: {reason}", self.id))
        self._pending.clear()
        self._pending_rows.clear()

    async def close(self, code: int, reason: str) -> None:
        self.fail_all(reason)
        if not self.socket.closed:
            await self.socket.close(code=code, message=reason[:120].encode())

    def status(self) -> dict[str, Any]:
        info = self.info
        return {
            "id": self.id, "name": info.name, "remote": self.remote, "state": str(info.state),
            "backend": info.backend, "threads": info.threads, "benchmark_ms": info.benchmark_ms,
            "memory_mb": info.memory_mb, "memory_used_mb": round(info.memory_used_mb, 1) if info.memory_used_mb else None,
            "memory_used_seconds_ago": round(time.monotonic() - info.memory_used_at, 1) if info.memory_used_at else None,
            "heap_mb": round(info.heap_mb, 1) if info.heap_mb else None, "allocation_cap": info.allocation_cap,
            "agent": info.agent, "role": info.role, "page": info.page,
            "layers": [info.stage.layer_start, info.stage.layer_end] if info.stage else None,
            "holds": _ranges(info.holds),
            "step_ms": round(self.timer.one_row_seconds * 1000, 2) if self.timer.one_row_seconds else None,
            "load_ms": info.load_ms, "cached": info.cached,
            "downloaded_bytes": info.downloaded_bytes, "weight_bytes": info.weight_bytes,
            "progress": list(info.progress) if info.progress else None,
            "tokens": info.tokens, "compute_ms": round(info.compute_ms, 1),
            "timing": info.timing.as_dict() if info.timing else None,
            "streams_per_pass": round(info.passes.streams_per_pass, 2) if info.passes else None,
            "passes": dataclasses.asdict(info.passes) if info.passes else None,
            "seconds_since_seen": round(time.monotonic() - info.last_seen, 1),
            "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received, "steps": self.steps_served,
        }


def _ranges(layers: frozenset[int]) -> list[list[int]]:
    """{0, 1, 2, 7, 8} -> [[0, 3], [7, 9]]: held layers as half-open ranges."""
    ranges: list[list[int]] = []
    for layer in sorted(layers):
        if ranges and ranges[-1][1] == layer:
            ranges[-1][1] = layer + 1
        else:
            ranges.append([layer, layer + 1])
    return ranges
