"""Many requests at once through 2 tabs, and llama-server with parallel slots, side by side.

Measures in one run on this machine (issue 23's must-show, and the baseline for batching):
  - each of 16 distinct chat prompts alone (greedy, speculation off): its tokens and rate;
  - 1, 4, 8 and 16 of them at once (streamed): aggregate decode tok/s (completion tokens
    of all streams / wall seconds from the first request to the last token), and whether
    every stream's tokens equal its solo run;
  - at 8 streams: p50/p95 time to first token and inter-token latency, and the same with a
    long prompt (~900 tokens) arriving half a second in;
  - llama-server (`-np 16 -cb -t 2`, the same GGUF, no repacking) with the same prompts and
    concurrency levels: aggregate tok/s, so the ratio 8 streams / 1 stream sits next to ours.
Writes bench/results/concurrency.json. Usage:
  .venv/bin/python -m bench.concurrency [--model gemma3-270m] [--codec int8|int8-stable] [--tokens 32]
      [--skip-anchor] [--output PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from bench.caches import model_cache, shard_cache
from bench.llama_anchor import binaries
from bench.suite import EVALUATION_TEXT
from coordinator.config import AppConfig, ServerConfig
from coordinator.local_swarm import local_coordinator, status_of, wait_ready
from coordinator.swarm.headless import HeadlessWorkers, worker_url
from coordinator.swarm.time_breakdown import per_step_ms
from shards.convert import convert
from shards.gguf_model import resolve_model

RESULTS = Path(__file__).resolve().parent / "results"
TOPICS = ("the sea", "volcanoes", "bees", "the moon", "rivers", "owls", "glaciers", "deserts", "comets", "coral reefs",
          "thunderstorms", "mushrooms", "whales", "forests", "caves", "tides")
CHAT_PROMPTS = [f"Tell me three facts about {topic}." for topic in TOPICS]
BASE_PROMPTS = [f"Three facts about {topic}:" for topic in TOPICS]   # a base model (no chat template)
LEVELS = (1, 4, 8, 16)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values) or [float("nan")]
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def stream(base: str, body: dict[str, Any], ids: bool) -> dict[str, Any]:
    """One streamed chat completion (or plain completion, for a body with a `prompt`): token
    ids (or text pieces), arrival times, when it started."""
    body = body | {"stream": True, "stream_options": {"include_usage": True}}
    if ids:
        body["tabswarm"] = body.get("tabswarm", {}) | {"return_token_ids": True}
    started = time.monotonic()
    tokens: list[Any] = []
    times: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as session, \
            session.post(base + ("/v1/completions" if "prompt" in body else "/v1/chat/completions"), json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"request failed ({response.status}): {await response.text()}")
        async for line in response.content:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"stream error: {event['error']}")
            for choice in event.get("choices", []):
                text = choice["text"] if "text" in choice else choice.get("delta", {}).get("content")
                pieces = choice.get("token_ids", []) if ids else [text]
                for piece in pieces:
                    if piece:
                        tokens.append(piece)
                        times.append(time.monotonic())
    return {"tokens": tokens, "times": times, "started": started}


def latencies(streams: list[dict[str, Any]]) -> dict[str, Any]:
    first = [s["times"][0] - s["started"] for s in streams if s["times"]]
    gaps = [later - earlier for s in streams for earlier, later in zip(s["times"], s["times"][1:], strict=False)]
    ms = 1000.0
    return {"ttft_p50_ms": round(percentile(first, 0.5) * ms, 1), "ttft_p95_ms": round(percentile(first, 0.95) * ms, 1),
            "itl_p50_ms": round(percentile(gaps, 0.5) * ms, 1), "itl_p95_ms": round(percentile(gaps, 0.95) * ms, 1)}


async def concurrent(base: str, bodies: list[dict[str, Any]], ids: bool,
                     late: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], float]:
    """Run `bodies` at once (and `late` half a second in); returns their streams and the
    aggregate tok/s of `bodies` alone (from the first start to the last token)."""
    started = time.monotonic()
    tasks = [asyncio.create_task(stream(base, body, ids)) for body in bodies]
    if late is not None:
        await asyncio.sleep(0.5)
        tasks.append(asyncio.create_task(stream(base, late, ids)))
    done = await asyncio.gather(*tasks)
    streams = done[:len(bodies)]
    ended = max(s["times"][-1] for s in streams if s["times"])
    return streams, sum(len(s["tokens"]) for s in streams) / (ended - started)


async def swarm_counters(base: str) -> dict[str, Any]:
    """What the swarm's status says of its passes and its steps' timing (None for llama-server)."""
    async with aiohttp.ClientSession() as session, session.get(base + "/v1/status") as response:
        if response.status != 200:
            return {}
        status = await response.json()
    if "workers" not in status:
        return {}
    return {"timing": status.get("timing", {}), "clock": time.monotonic(), "cpu": time.process_time(),
            "compute_ms": {worker["name"]: worker.get("compute_ms") or 0.0 for worker in status["workers"]},
            "passes": {worker["name"]: worker.get("passes") or {"passes": 0, "frames": 0, "largest": 0}
                       for worker in status["workers"]}}


def swarm_level(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Streams per tab pass and the coordinator's per-step ms over one level (empty for llama-server)."""
    if not after:
        return {}
    passes = {}
    for name, now in after["passes"].items():
        was = before.get("passes", {}).get(name) or {"passes": 0, "frames": 0}
        count = now["passes"] - was["passes"]
        passes[name] = round((now["frames"] - was["frames"]) / count, 2) if count else None
    wall = after["clock"] - before["clock"]
    busy = {name: round((ms - before["compute_ms"].get(name, 0.0)) / 1000 / wall, 2)
            for name, ms in after["compute_ms"].items()}
    return {"streams_per_pass": passes, "tab_busy_share": busy,
            "coordinator_cpu_share": round((after["cpu"] - before["cpu"]) / wall, 2),
            "decode_step_ms": per_step_ms(before.get("timing", {}), after["timing"])}


def request_body(text: str, chat: bool, tokens: int, extension: dict[str, Any]) -> dict[str, Any]:
    """A greedy request for `text`: a chat message, or a plain prompt for a base model."""
    prompt: dict[str, Any] = {"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text}
    return prompt | {"max_tokens": tokens, "temperature": 0, **extension}


async def measure(base: str, tokens: int, extension: dict[str, Any], ids: bool, chat: bool = True) -> dict[str, Any]:
    """Solo runs, then each concurrency level, then 8 streams with a long prompt arriving."""
    bodies = [request_body(text, chat, tokens, extension) for text in (CHAT_PROMPTS if chat else BASE_PROMPTS)]
    await concurrent(base, bodies[:2], ids)   # warm-up (and past the tabs' probation checks)
    solo = []
    for body in bodies:
        streams, rate = await concurrent(base, [body], ids)
        solo.append({"tokens": streams[0]["tokens"], "tok_s": rate})
    one = statistics.median(entry["tok_s"] for entry in solo)
    report: dict[str, Any] = {"solo_median_tok_s": round(one, 2), "levels": {}}
    for level in LEVELS:
        before = await swarm_counters(base)
        streams, rate = await concurrent(base, bodies[:level], ids)
        inside = swarm_level(before, await swarm_counters(base))
        equal = sum(s["tokens"] == solo[i]["tokens"] for i, s in enumerate(streams))
        report["levels"][str(level)] = {"aggregate_tok_s": round(rate, 2), "ratio_to_one_stream": round(rate / one, 2),
                                        "equal_to_solo": f"{equal}/{level}", **latencies(streams), **inside}
        print(f"  {level:2d} streams: {rate:6.2f} tok/s ({rate / one:.2f}x one), {equal}/{level} equal to solo, "
              f"{latencies(streams)} {inside}", flush=True)
    long_prompt = " ".join(EVALUATION_TEXT.read_text().split()[:700])
    late = request_body(f"Summarise: {long_prompt}", chat, 4, extension)
    streams, rate = await concurrent(base, bodies[:8], ids, late)
    equal = sum(s["tokens"] == solo[i]["tokens"] for i, s in enumerate(streams))
    report["8_with_long_prompt"] = {"aggregate_tok_s": round(rate, 2), "equal_to_solo": f"{equal}/8",
                                    **latencies(streams)}
    print(f"   8 streams + a long prompt: {rate:.2f} tok/s, {equal}/8 equal, {latencies(streams)}", flush=True)
    return report


async def swarm(args: argparse.Namespace) -> dict[str, Any]:
    directory, manifest = convert(args.model_path, progress=False, cache_root=shard_cache())
    args.chat = not manifest.base_model
    server = ServerConfig(host="127.0.0.1", port=0, join_settle_seconds=1.0, chromium=args.chromium,
                          max_active=16, max_queue=64)
    async with local_coordinator(AppConfig(server=server), directory) as (_, base):
        headless = HeadlessWorkers(args.chromium)
        await headless.start()
        try:
            for tab in (1, 2):
                await headless.open(worker_url(base, f"concurrency-tab-{tab}", 1))
            status = await wait_ready(base, 2, 600)
            print(f"swarm: 2 tabs, stages {[stage['layers'] for stage in status['plan']]}, codec {args.codec}",
                  flush=True)
            extension = {"tabswarm": {"codec": args.codec, "speculation": {"method": "off"}}}
            report = await measure(base, args.tokens, extension, ids=True, chat=args.chat)
            status = await status_of(base)
            # what moved under load: plans activated after the first, replays, evictions
            report["plans_activated"] = [event["stages"] for event in status["events"] if event["event"] == "plan"]
            report["events"] = dict(sorted(Counter(event["event"] for event in status["events"]).items()))
            report["churn"] = status["churn"]
            print(f"  plans: {report['plans_activated']}; events {report['events']}", flush=True)
            return report
        finally:
            await headless.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def llama_server(slots: int, model_path: Path) -> AsyncIterator[str]:
    folder = binaries()
    port = free_port()
    command = [str(folder / "llama-server"), "-m", str(model_path), "-t", "2", "-np", str(slots), "-cb",
               "-c", str(slots * 2048), "--port", str(port), "--no-repack"]
    process = subprocess.Popen(command, env={**os.environ, "LD_LIBRARY_PATH": str(folder)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(240):
                with contextlib.suppress(aiohttp.ClientError):   # not listening yet
                    async with session.get(base + "/health") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.5)
            else:
                raise RuntimeError("llama-server did not become healthy in 120 s")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


async def anchor(args: argparse.Namespace) -> dict[str, Any]:
    async with llama_server(16, args.model_path) as base:
        print("llama-server -np 16 -cb -t 2:", flush=True)
        return await measure(base, args.tokens, {}, ids=False, chat=args.chat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a known model's name or a GGUF path")
    parser.add_argument("--codec", default="int8")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--skip-anchor", action="store_true")
    parser.add_argument("--output", default=str(RESULTS / "concurrency.json"))
    args = parser.parse_args()
    args.model_path = resolve_model(args.model, model_cache())
    report: dict[str, Any] = {"machine": {"cores": os.cpu_count()}, "model": args.model, "tokens_per_request": args.tokens,
                              "codec": args.codec, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    report["swarm_2_tabs"] = asyncio.run(swarm(args))
    if not args.skip_anchor:
        report["llama_server"] = asyncio.run(anchor(args))
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
