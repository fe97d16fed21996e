"""End-to-end decode tokens/s with the router off vs on, through 2 real Chromium tabs,
measured side by side (alternating runs) in one process. Also the skip, bypass and
masked-head counts the pipeline reported. Writes bench/results/router_speed.json.

Usage: .venv/bin/python -m bench.router_speed [--tokens 64] [--runs 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path

from bench.caches import shard_cache
from coordinator.swarm.headless import HeadlessWorkers, worker_url
from shards.convert import convert
from shards.gguf_model import default_model_path
from tests.support import post, running_app, wait_ready

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
SETTINGS = {
    "off": None,
    "predictor t=0.1": {"policy": "predictor", "threshold": 0.1},
    "node t=0.04": {"policy": "node", "node_threshold": 0.04},
    "predictor t=0.2": {"policy": "predictor", "threshold": 0.2},     # past the quality budget: shows the speed side
    "node t=0.15": {"policy": "node", "node_threshold": 0.15},
    "heads f=0.05": {"policy": "off", "prune_heads": 0.05},
}


async def run(tokens: int, runs: int) -> dict:
    directory, _ = convert(default_model_path(), progress=False, cache_root=shard_cache())
    report: dict = {"tokens": tokens, "tabs": 2, "settings": {}}
    async with running_app(directory, join_settle_seconds=1.0) as (_, base):
        headless = HeadlessWorkers("/usr/bin/chromium")
        await headless.start()
        try:
            for index in range(2):
                await headless.open(worker_url(base, f"tab-{index + 1}", 1))
            await wait_ready(base, 2, 300)
            for _ in range(3):  # warm the router's running statistics
                await post(base, "/v1/chat/completions", {"messages": PROMPT, "max_tokens": tokens})
            samples: dict[str, list[dict]] = {name: [] for name in SETTINGS}
            for _ in range(runs):
                for name, router in SETTINGS.items():
                    body = {"messages": PROMPT, "max_tokens": tokens}
                    if router:
                        body["tabswarm"] = {"router": router}
                    status, answer = await post(base, "/v1/chat/completions", body)
                    assert status == 200, answer
                    samples[name].append(answer["usage"]["tabswarm"])
            for name, usages in samples.items():
                report["settings"][name] = {
                    "decode_tok_s_median": statistics.median(u["decode_tokens_per_second"] for u in usages),
                    "layers_skipped_percent": 100 * sum(u["layers_skipped"] for u in usages)
                    / max(1, sum(u["layer_executions"] for u in usages)),
                    "nodes_bypassed": sum(u["nodes_bypassed"] for u in usages),
                    "hops_saved": sum(u["hops_saved"] for u in usages),
                    "heads_pruned": sum(u["heads_pruned"] for u in usages)}
                print(name, json.dumps(report["settings"][name]), flush=True)
        finally:
            await headless.stop()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    report = asyncio.run(run(args.tokens, args.runs))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "router_speed.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
