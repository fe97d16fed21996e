"""Pipeline speed benchmark: the in-process reference against 1, 2 and 3 Chromium tabs.

Measures, side by side in one run on this machine:
  - decode tokens/s of one stream: reference executor; 1 tab with all layers; 2 and 3 tabs;
    pipeline efficiency = N-tab tok/s / 1-tab tok/s;
  - per-hop overhead: round trips of echo frames (a FORWARD with no layers), one token of
    the default int8 codec: coordinator encode + send + tab decode/encode + send + decode;
  - aggregate tokens/s of 8 concurrent streams / 1 stream, on 2 and 3 tabs;
  - time for a new tab to serve: cold (empty browser cache) and after a reload (cached).
Writes bench/results/pipeline_speed.json. Usage: .venv/bin/python -m bench.pipeline_speed
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

from bench.caches import shard_cache
from bench.suite import STORY, decode_rate, hop_overhead, reference
from coordinator.swarm.headless import HeadlessWorkers, worker_url
from shards.convert import convert
from shards.gguf_model import default_model_path
from tests.support import post, running_app, wait_ready

RESULTS = Path(__file__).resolve().parent / "results"


async def median_decode_rate(base: str, tokens: int, repeats: int = 3) -> float:
    """Plain decoding (speculation off, like the reference figure it is compared with)."""
    return statistics.median([await decode_rate(base, STORY, tokens) for _ in range(repeats)])


async def aggregate_rate(base: str, streams: int, tokens: int) -> float:
    prompts = [[{"role": "user", "content": f"Tell me fact number {i + 1} about the sea."}] for i in range(streams)]
    started = time.perf_counter()
    results = await asyncio.gather(*(post(base, "/v1/chat/completions", {"messages": p, "max_tokens": tokens})
                                     for p in prompts))
    elapsed = time.perf_counter() - started
    return sum(body["usage"]["completion_tokens"] for _, body in results) / elapsed


async def run(args: argparse.Namespace) -> dict:
    directory, _ = convert(default_model_path(), progress=False, cache_root=shard_cache())
    report: dict = {"machine": {"cores": os.cpu_count()}, "tokens_per_request": args.tokens}
    report["reference_in_process_tok_s"] = reference(directory, 128, args.tokens, 3)[0]["decode_tok_s"]
    print(f"reference executor (native onnxruntime, in-process): {report['reference_in_process_tok_s']:.1f} tok/s",
          flush=True)
    async with running_app(directory, join_settle_seconds=1.0, max_active=16, max_queue=64) as (app, base):
        headless = HeadlessWorkers("/usr/bin/chromium")
        await headless.start()
        try:
            started = time.perf_counter()
            first = await headless.open(worker_url(base, "tab-1", args.threads))
            await wait_ready(base, 1, 300)
            report["new_tab_cold_seconds"] = time.perf_counter() - started
            await headless.close_tab(first)
            await asyncio.sleep(1.0)
            started = time.perf_counter()
            await headless.open(worker_url(base, "tab-1", args.threads))
            status = await wait_ready(base, 1, 300)
            report["new_tab_cached_seconds"] = time.perf_counter() - started
            report["new_tab_cached_flag"] = status["workers"][0]["cached"]
            print(f"new tab serving: cold {report['new_tab_cold_seconds']:.1f} s, "
                  f"reloaded {report['new_tab_cached_seconds']:.1f} s (cached={report['new_tab_cached_flag']})",
                  flush=True)
            report["hop_echo"] = await hop_overhead(app)
            print(f"per-hop echo round trip: median {report['hop_echo']['median_ms']:.2f} ms, "
                  f"p95 {report['hop_echo']['p95_ms']:.2f} ms", flush=True)
            report["tabs"] = {}
            for count in (1, 2, 3):
                if count > 1:  # one more tab (tabs join ~1 s after opening: count, don't poll)
                    await headless.open(worker_url(base, f"tab-{count}", args.threads))
                await wait_ready(base, count, 300)
                entry = {"decode_tok_s": await median_decode_rate(base, args.tokens)}
                if count >= 2:
                    single = await aggregate_rate(base, 1, args.tokens)
                    multi = await aggregate_rate(base, 8, args.tokens)
                    entry |= {"throughput_1_stream_tok_s": single, "throughput_8_streams_tok_s": multi,
                              "concurrency_gain": multi / single}
                report["tabs"][str(count)] = entry
                print(f"{count} tab(s): {json.dumps(entry)}", flush=True)
        finally:
            await headless.stop()
    one = report["tabs"]["1"]["decode_tok_s"]
    report["pipeline_efficiency"] = {n: report["tabs"][n]["decode_tok_s"] / one for n in ("2", "3")}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="WASM threads per tab")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "pipeline_speed.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["pipeline_efficiency"]), f"\nwrote {out}")


if __name__ == "__main__":
    main()
