"""A worker for integration tests: the real protocol over a real WebSocket, layers run
with native onnxruntime (shards.executor.LayerStack) instead of a browser."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import aiohttp
import numpy as np

from protocol.activation_codec import (
    CodecSettings,
    Route,
    StreamCodecState,
    decode_activation,
    encode_activation,
)
from protocol.control import HEAD_SAMPLE_INTERVAL, decode_control, encode_control
from protocol.frames import Encoding, Flag, FrameKind, parse_frame
from shards.executor import LayerStack
from shards.manifest import load_manifest


class FakeWorker:
    def __init__(self, base_url: str, shard_dir: Path, name: str, benchmark_ms: float = 10.0,
                 memory_mb: float | None = None, answer: bool = True, refuse: bool = False) -> None:
        self.base_url, self.shard_dir, self.name = base_url, shard_dir, name
        self.benchmark_ms, self.memory_mb, self.answer = benchmark_ms, memory_mb, answer
        self.refuse = refuse   # answer FORWARD frames with a not-assigned error, as a tab whose layers moved
        self.manifest = load_manifest(shard_dir)
        self.stack: LayerStack | None = None
        self.assigned: tuple[int, int] | None = None
        self.decoders: dict[int, StreamCodecState] = {}
        self.encoders: dict[int, StreamCodecState] = {}
        self.frames_seen = 0
        self.skip_masks: list[tuple[int, int, bool]] = []   # (position, skip mask, no reply) per FORWARD
        self.released: list[int] = []
        self.head_masks: dict[int, dict[int, np.ndarray]] = {}   # stream -> layer -> (heads,) mask
        self.head_mask_messages: list[dict] = []
        self.close_code: int | None = None
        self.closed = asyncio.Event()

    async def start(self) -> FakeWorker:
        self.session = aiohttp.ClientSession()
        self.socket = await self.session.ws_connect(self.base_url.replace("http", "ws") + "/ws/worker")
        hello = {"type": "hello", "protocol": 1, "backend": "native-test", "threads": 1,
                 "benchmark_ms": self.benchmark_ms, "worker": self.name}
        if self.memory_mb:
            hello["memory_mb"] = self.memory_mb
        await self.socket.send_bytes(encode_control(hello))
        self.task = asyncio.create_task(self._loop())
        return self

    async def _loop(self) -> None:
        try:
            async for message in self.socket:
                if message.type != aiohttp.WSMsgType.BINARY:
                    break
                await self._handle(message.data)
        finally:
            self.close_code = self.socket.close_code
            self.closed.set()

    async def _handle(self, data: bytes) -> None:
        header, _ = parse_frame(data)
        if header.kind == FrameKind.CONTROL:
            message = decode_control(data)
            if message["type"] == "assign":
                await self._assign(message)
            elif message["type"] == "head_mask":
                self.head_mask_messages.append(message)
                self.head_masks[message["stream"]] = {
                    message["layer_start"] + offset: np.array(mask, dtype=np.float32)
                    for offset, mask in enumerate(message["masks"])}
            elif message["type"] == "release":
                self.released.append(message["stream"])
                self.head_masks.pop(message["stream"], None)
                self.decoders.pop(message["stream"], None)
                self.encoders.pop(message["stream"], None)
                if self.stack:
                    self.stack.release(message["stream"])
            elif message["type"] == "heartbeat":
                await self.send_control({"type": "heartbeat", "time": 0.0})
            return
        self.frames_seen += 1
        if not self.answer:
            return
        if self.refuse:
            await self.send_control({"type": "error", "code": "not-assigned", "stream": header.stream,
                                     "message": f"layers [{header.layer_start}, {header.layer_end}) are not loaded"})
            return
        stream = header.stream
        header, values = decode_activation(data, self.decoders.setdefault(stream, StreamCodecState()))
        assert self.stack is not None
        skipped = frozenset(header.layer_start + bit for bit in range(64) if header.skip_mask >> bit & 1)
        positions = np.arange(header.position, header.position + header.rows, dtype=np.int64)[None]
        loop = asyncio.get_running_loop()
        ratios: list[float] = []
        norms: list[float] = []
        if header.layer_start == header.layer_end:  # an echo: no layers
            out = values[None]
        else:
            report = await loop.run_in_executor(None, functools.partial(
                self.stack.forward_reporting, stream, values[None], positions, skipped,
                head_masks=self.head_masks.get(stream),
                measure_heads=header.position % HEAD_SAMPLE_INTERVAL == 0))
            out, ratios, norms = report.hidden, report.ratios, report.norms
        self.skip_masks.append((header.position, header.skip_mask, header.has(Flag.NO_REPLY)))
        if header.has(Flag.NO_REPLY):
            return
        if header.rows == 1 and header.layer_start != header.layer_end:
            node_ratio = float(np.linalg.norm(out[0] - values) / np.linalg.norm(values))
            stats = {"type": "layer_stats", "position": header.position, "ratios": ratios, "norms": norms,
                     "node_ratio": node_ratio}
            if header.position % HEAD_SAMPLE_INTERVAL == 0:
                stats["head_ratios"] = report.head_ratios
            await self.socket.send_bytes(encode_control(stats, stream))
        settings = CodecSettings(encoding=header.encoding, block=header.block, delta=header.has(Flag.DELTA),
                                 run_length=header.encoding == Encoding.INT8_BLOCK)
        route = Route(FrameKind.RESULT, stream, header.position, header.layer_start, header.layer_end,
                      header.skip_mask)
        await self.socket.send_bytes(encode_activation(out[0], route, settings,
                                                       self.encoders.setdefault(stream, StreamCodecState())))

    async def _assign(self, message: dict) -> None:
        start, end = message["layer_start"], message["layer_end"]
        loop = asyncio.get_running_loop()
        self.stack = await loop.run_in_executor(None, LayerStack, self.shard_dir, self.manifest, start, end, 1)
        self.assigned = (start, end)
        await self.send_control({"type": "ready", "layer_start": start, "layer_end": end, "load_ms": 1.0})

    async def send_control(self, message: dict) -> None:
        await self.socket.send_bytes(encode_control(message))

    async def send_raw(self, data: bytes) -> None:
        await self.socket.send_bytes(data)

    async def stop(self) -> None:
        await self.socket.close()
        await self.session.close()
        self.task.cancel()
