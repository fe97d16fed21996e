"""A worker for integration tests: the real protocol over a real WebSocket, layers run
with native onnxruntime (shards.executor.LayerStack) instead of a browser.

It behaves like the browser worker where the protocol says so (and batches as it does: the
FORWARD frames already received when it takes one run as one pass, `LayerStack.forward_batch`):
it holds a set of layers
(assign loads more, retain drops the rest), refuses a frame whose position is not its
cache length for that stream (error `bad-position`), truncates on `truncate`, and echoes
each FORWARD's step id in its RESULT. Test knobs make it misbehave like real tabs do:
`freeze()` (a frozen background tab: socket open, nothing answered), `kill()` (a crash:
the connection drops without a close handshake), `refuse` (a tab whose layers moved),
`desync_next()` (its cache for a stream loses a position, as after a bug).

Its WebSocket client is the `websockets` library, not aiohttp's: the coordinator's aiohttp
server is tested against an independent implementation of the protocol's transport.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from protocol.activation_codec import (
    CodecSettings,
    Route,
    StreamCodecState,
    decode_activation,
    encode_activation,
)
from protocol.boundary_rounding import BoundaryRounding
from protocol.control import (
    HEAD_SAMPLE_INTERVAL,
    Assign,
    ControlMessage,
    ErrorReport,
    HeadMask,
    Heartbeat,
    Hello,
    LayerStats,
    Ready,
    Release,
    Retain,
    Truncate,
    decode_control,
    encode_control,
)
from protocol.frames import VERSION, Encoding, Flag, FrameKind, Header, parse_frame
from shards.executor import CacheMismatch, LayerReport, LayerStack
from shards.manifest import load_manifest
from shards.stream_batch import StreamRows


@dataclass(frozen=True)
class _Frame:
    """A FORWARD frame admitted for a pass: its header, rows (rows, hidden), skipped layers,
    and whether it asked for layer statistics."""

    header: Header
    values: np.ndarray
    skipped: frozenset[int]
    report: bool


class FakeWorker:
    def __init__(self, base_url: str, shard_dir: Path, name: str, benchmark_ms: float = 10.0,
                 memory_mb: float | None = None, answer: bool = True, refuse: bool = False, token: str = "",
                 delay_seconds: float = 0.0, corrupt: str | None = None, corrupt_after: int = 0,
                 allocation_cap: int | None = None) -> None:
        self.base_url, self.shard_dir, self.name = base_url, shard_dir, name
        self.benchmark_ms, self.memory_mb, self.answer = benchmark_ms, memory_mb, answer
        self.refuse = refuse   # answer FORWARD frames with a not-assigned error, as a tab whose layers moved
        self.frozen = False
        self.token = token
        self.delay_seconds = delay_seconds   # extra time per step: a slow device
        # a lying worker: "noise", "sign" (flipped signs), "scale" (x1.05), "stale" (the previous output)
        self.corrupt = corrupt
        self._previous_out: dict[int, np.ndarray] = {}
        self.corrupt_after = corrupt_after   # honest for this many steps first (past its probation)
        self.allocation_cap = allocation_cap  # loading more layers than this runs out of memory (as a tab would)
        self.assignments: list[tuple[int, int]] = []
        self.manifest = load_manifest(shard_dir)
        self.stack: LayerStack | None = None
        self.assigned: tuple[int, int] | None = None
        self.decoders: dict[int, StreamCodecState] = {}
        self.encoders: dict[int, StreamCodecState] = {}
        self.frames_seen = 0
        self.steps_served = 0
        self.reports_asked = 0         # one-row frames that asked for layer_stats (REPORT)
        self.skip_masks: list[tuple[int, int, bool]] = []   # (position, skip mask, no reply) per FORWARD
        self.passes: list[int] = []    # frames per pass run (streams batched together)
        self.released: list[int] = []
        self.retained: list[tuple[int, int]] = []
        self.errors_sent: list[ErrorReport] = []
        self.head_masks: dict[int, dict[int, np.ndarray]] = {}   # stream -> layer -> (heads,) mask
        self.head_mask_messages: list[HeadMask] = []
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self._desync = False
        self._assignments: asyncio.Task | None = None

    async def start(self) -> FakeWorker:
        query = f"?token={self.token}" if self.token else ""
        # No compression (the coordinator's endpoint accepts none); frames up to 64 MiB.
        self.socket: ClientConnection = await connect(self.base_url.replace("http", "ws") + "/ws/worker" + query,
                                                      compression=None, max_size=64 * 2**20)
        hello = Hello(protocol=VERSION, backend="native-test", threads=1, benchmark_ms=self.benchmark_ms,
                      worker=self.name, memory_mb=self.memory_mb or None)
        await self.socket.send(encode_control(hello))
        self._inbox: deque[bytes] = deque()
        self._arrived = asyncio.Event()
        self.task = asyncio.create_task(self._loop())
        self.worker = asyncio.create_task(self._work())
        return self

    def holds(self) -> set[int]:
        return set(self.stack.layers) if self.stack else set()

    def freeze(self) -> None:
        """Stop answering anything (FORWARDs and heartbeats) while keeping the socket open."""
        self.frozen = True

    def desync_next(self) -> None:
        """Lose the last cached position of the next FORWARD's stream before running it."""
        self._desync = True

    async def _loop(self) -> None:
        """Read messages as they arrive (also while a pass runs) into the inbox."""
        try:
            async for message in self.socket:
                if not isinstance(message, bytes):
                    break
                if self.frozen:
                    continue
                self._inbox.append(message)
                self._arrived.set()
        except ConnectionClosed:   # closed without a clean close frame: the code is still recorded
            pass
        finally:
            self.close_code = self.socket.close_code
            self.closed.set()

    async def _work(self) -> None:
        """Answer the inbox in order: a control message alone, and the FORWARD frames waiting
        together (distinct streams, up to the next control message) as one batch, as a tab does."""
        while True:
            while not self._inbox:
                self._arrived.clear()
                await self._arrived.wait()
            message = self._inbox.popleft()
            if self.frozen:
                continue
            header, _ = parse_frame(message)
            if header.kind == FrameKind.CONTROL:
                await self._control(decode_control(message))
                continue
            await asyncio.sleep(0)          # frames already on the socket join this batch
            batch, streams = [message], {header.stream}
            while self._inbox:
                waiting, _ = parse_frame(self._inbox[0])
                if waiting.kind != FrameKind.FORWARD or waiting.stream in streams:
                    break
                batch.append(self._inbox.popleft())
                streams.add(waiting.stream)
            await self._serve(batch)

    async def _serve(self, batch: list[bytes]) -> None:
        """Decode each frame (refusing those the protocol says to), run the rest in passes of
        frames with the same layers, rows and rounding, and answer each."""
        admitted = [frame for data in batch if (frame := await self._admit(data)) is not None]
        passes: dict[tuple, list[_Frame]] = {}
        for frame in admitted:
            header = frame.header
            key = (header.layer_start, header.layer_end, header.rows, header.has(Flag.ROUND_LAYERS),
                   header.encoding, header.block)
            passes.setdefault(key, []).append(frame)
        for frames in passes.values():
            self.passes.append(len(frames))
            layers = range(frames[0].header.layer_start, frames[0].header.layer_end)
            if not layers:  # an echo: no layers
                reports = [LayerReport(frame.values[None]) for frame in frames]
            else:
                assert self.stack is not None
                items = [StreamRows(frame.header.stream, frame.values[None], frame.header.position, frame.skipped,
                                    self.head_masks.get(frame.header.stream), frame.report,
                                    frame.report and frame.header.position % HEAD_SAMPLE_INTERVAL == 0)
                         for frame in frames]
                reports = await asyncio.get_running_loop().run_in_executor(None, functools.partial(
                    self.stack.forward_batch, items, layers, BoundaryRounding.of(frames[0].header)))
            if self.delay_seconds:
                await asyncio.sleep(self.delay_seconds)
            for frame, report in zip(frames, reports, strict=True):
                await self._reply(frame, report)

    async def _admit(self, data: bytes) -> _Frame | None:
        """A FORWARD frame decoded and checked, or None when it was refused (or is not answered)."""
        header, _ = parse_frame(data)
        self.frames_seen += 1
        if not self.answer:
            return None
        stream = header.stream
        if self.refuse:
            await self._error("not-assigned", f"layers [{header.layer_start}, {header.layer_end}) are not loaded",
                              stream, header.step)
            return None
        header, values = decode_activation(data, self.decoders.setdefault(stream, StreamCodecState()))
        layers = range(header.layer_start, header.layer_end)
        if layers and (self.stack is None or not self.stack.holds(layers)):
            await self._error("not-assigned", f"layers [{layers.start}, {layers.stop}) are not loaded", stream,
                              header.step)
            return None
        if layers and self.stack is not None:
            if self._desync and self.stack.cache_length(stream, layers) > 0:
                self._desync = False
                self.stack.truncate(stream, self.stack.cache_length(stream, layers) - 1)
            try:
                self.stack.check_position(stream, layers, header.position)
            except CacheMismatch as error:   # the protocol's refusal: this stream only
                await self._error("bad-position", str(error), stream, header.step)
                return None
        skipped = frozenset(header.layer_start + bit for bit in range(64) if header.skip_mask >> bit & 1)
        report = header.rows == 1 and header.has(Flag.REPORT) and not header.has(Flag.NO_REPLY)
        self.reports_asked += report
        return _Frame(header, values, skipped, report)

    async def _reply(self, frame: _Frame, report: LayerReport) -> None:
        header, values, stream = frame.header, frame.values, frame.header.stream
        out = report.hidden
        layers = range(header.layer_start, header.layer_end)
        if self.corrupt and layers and self.steps_served >= self.corrupt_after:
            out = self._corrupted(stream, out)
        self.skip_masks.append((header.position, header.skip_mask, header.has(Flag.NO_REPLY)))
        if header.has(Flag.NO_REPLY) or self.frozen:
            return
        if frame.report and layers:
            node_ratio = float(np.linalg.norm(out[0] - values) / np.linalg.norm(values))
            stats = LayerStats(position=header.position, ratios=report.ratios, norms=report.norms,
                               node_ratio=node_ratio, head_ratios=report.head_ratios
                               if header.position % HEAD_SAMPLE_INTERVAL == 0 else None)
            await self.socket.send(encode_control(stats, stream))
        settings = CodecSettings(encoding=header.encoding, block=header.block, delta=header.has(Flag.DELTA),
                                 run_length=header.encoding == Encoding.INT8_BLOCK,
                                 round_layers=header.has(Flag.ROUND_LAYERS))
        route = Route(FrameKind.RESULT, stream, header.position, header.layer_start, header.layer_end,
                      header.skip_mask, step=header.step, step_kind=header.step_kind)
        await self.socket.send(encode_activation(out[0], route, settings,
                                                 self.encoders.setdefault(stream, StreamCodecState())))
        self.steps_served += 1

    def _corrupted(self, stream: int, out: np.ndarray) -> np.ndarray:
        """(1, rows, hidden) as a lying worker would answer it."""
        honest = out.copy()
        if self.corrupt == "noise":
            out = np.random.default_rng(len(self._previous_out)).standard_normal(out.shape).astype(np.float32) * 3
        elif self.corrupt == "sign":
            out = -out
        elif self.corrupt == "scale":
            out = out * np.float32(1.05)
        elif self.corrupt == "drift":   # honest, with compounded rounding flips: 2% of each row's norm, spread out
            noise = np.random.default_rng(len(self._previous_out)).standard_normal(out.shape).astype(np.float32)
            out = out + noise * np.float32(0.02 / np.sqrt(out.shape[-1])) * np.linalg.norm(out, axis=-1, keepdims=True)
        elif self.corrupt == "stale":
            previous = self._previous_out.get(stream)
            out = previous[:, -1:].repeat(out.shape[1], axis=1) if previous is not None else out
        self._previous_out[stream] = honest
        return out

    async def _control(self, message: ControlMessage) -> None:
        match message:
            case Assign():
                # Like the tab: assignments load one after another outside the message loop,
                # so heartbeats and frames for held layers are answered while layers load.
                previous = self._assignments

                async def assign_after_previous() -> None:
                    if previous is not None:
                        await asyncio.shield(previous)
                    await self._assign(message)

                self._assignments = asyncio.create_task(assign_after_previous())
            case Retain(layer_start=start, layer_end=end):
                self.retained.append((start, end))
                if self.stack:
                    self.stack.retain(range(start, end))
            case Truncate(stream=stream, length=length):
                if self.stack:
                    try:
                        self.stack.truncate(stream, length)
                    except CacheMismatch as error:
                        await self._error("bad-truncate", str(error), stream)
            case HeadMask(stream=stream, layer_start=start, masks=masks):
                self.head_mask_messages.append(message)
                self.head_masks[stream] = {start + offset: np.array(mask, dtype=np.float32)
                                           for offset, mask in enumerate(masks)}
            case Release(stream=stream):
                self.released.append(stream)
                self.head_masks.pop(stream, None)
                self.decoders.pop(stream, None)
                self.encoders.pop(stream, None)
                if self.stack:
                    self.stack.release(stream)
            case Heartbeat():
                await self.send_control(Heartbeat(time=0.0))

    async def _assign(self, message: Assign) -> None:
        start, end = message.layer_start, message.layer_end
        self.assignments.append((start, end))
        loop = asyncio.get_running_loop()
        compute = message.compute or "float32"
        if self.stack is None or self.stack.compute != compute:
            self.stack = await loop.run_in_executor(None, LayerStack, self.shard_dir, self.manifest, start, end, 1,
                                                    compute)
        else:   # keep what it holds; load what is missing
            await loop.run_in_executor(None, self.stack.load, range(start, end))
        if self.allocation_cap is not None and len(self.stack.layers) > self.allocation_cap:
            # out of memory part way: the tab keeps what it managed and says so
            kept = sorted(self.stack.layers)[:self.allocation_cap]
            self.stack.retain(range(kept[0], kept[-1] + 1) if kept else range(0))
            await self.send_control(ErrorReport(code="out-of-memory", message="could not allocate",
                                                holds=sorted(self.stack.layers)))
            return
        self.assigned = (start, end)
        await self.send_control(Ready(layer_start=start, layer_end=end, load_ms=1.0))

    async def _error(self, code: str, text: str, stream: int, step: int | None = None) -> None:
        message = ErrorReport(code=code, message=text, stream=stream, step=step)
        self.errors_sent.append(message)
        await self.socket.send(encode_control(message, stream))

    async def send_control(self, message: ControlMessage) -> None:
        await self.socket.send(encode_control(message))

    async def send_raw(self, data: bytes) -> None:
        await self.socket.send(data)

    async def kill(self) -> None:
        """Drop the connection without a WebSocket close handshake (a crashed tab)."""
        self.frozen = True
        self.socket.transport.abort()
        self.task.cancel()
        self.worker.cancel()
        self.stack = None   # a gone tab's memory goes with it (tests start many workers)

    async def stop(self) -> None:
        await self.socket.close()
        self.task.cancel()
        self.worker.cancel()
        self.stack = None
