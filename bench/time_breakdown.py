"""Where a generated token's time goes, through real Chromium tabs, at several context lengths.

For each context length (default 16, 256, 1024 tokens) one greedy completion of `--tokens`
tokens (speculation off, so every generated token is one one-row step) runs after a
warm-up; the coordinator's totals (`/v1/status` timing: embed, encode, relay, stage_wait,
decode, head, sample) and each tab's own report (decode of the frame, layers, encode of
the result) are snapshotted before and after, and their differences divided by the steps
give ms per token. The hop (WebSocket both ways, queues, event loops) is the stage wait
beyond what the tabs spent. Prefill figures are per row of the prompt.

    python -m bench.time_breakdown [--model qwen2.5-coder-1.5b --memory 1024] [--threads 2]

Writes JSON (bench/results/time_breakdown*.json) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from bench.caches import model_cache, shard_cache
from bench.suite import EVALUATION_TEXT, LOAD_TIMEOUT, request
from coordinator.app import API
from coordinator.config import AppConfig, ServerConfig
from coordinator.local_swarm import local_coordinator, status_of, wait_ready
from coordinator.swarm.headless import HeadlessWorkers, worker_url
from coordinator.swarm.time_breakdown import COORDINATOR_PARTS, TAB_PARTS, hop_ms, per_step_ms
from shards.convert import convert
from shards.gguf_model import resolve_model

RESULTS = Path(__file__).resolve().parent / "results"
SETTLE_SECONDS = 1.5   # tabs send their timing after each release; give it time to arrive


def snapshot(status: dict[str, Any]) -> dict[str, Any]:
    return {"coordinator": status["timing"],
            "tabs": {worker["name"]: {"timing": worker["timing"], "layers": worker["layers"]}
                     for worker in status["workers"] if worker["state"] == "ready" and worker["timing"]}}


def window(before: dict[str, Any], after: dict[str, Any], kind: str) -> dict[str, Any]:
    """Per-step ms of every part between two snapshots; prefill figures per row."""
    coordinator = per_step_ms(before["coordinator"], after["coordinator"], kind)
    tabs = []
    for name, tab in sorted(after["tabs"].items(), key=lambda item: item[1]["layers"] or [0]):
        old = before["tabs"].get(name, {}).get("timing") or {}
        tabs.append({"name": name, "layers": tab["layers"]} | per_step_ms(old, tab["timing"], kind))
    entry = {"steps": coordinator["steps"], "rows": coordinator["rows"], "coordinator_ms": coordinator["ms"],
             "tabs": tabs, "hop_ms": hop_ms(coordinator["ms"].get("stage_wait", 0.0), tabs)}
    entry["step_ms"] = round(sum(coordinator["ms"].values()), 3)
    if kind == "prefill" and coordinator["steps"]:
        per_row = coordinator["steps"] / coordinator["rows"]
        entry["per_row_ms"] = {"coordinator": {part: round(ms * per_row, 4) for part, ms in coordinator["ms"].items()},
                               "tab_layers": [round(tab["ms"].get("layers", 0.0) * per_row, 4) for tab in tabs]}
    return entry


def prompt_of(app, tokens: int) -> str:
    """About `tokens` tokens of the evaluation text."""
    text = app[API].ends.text
    source = EVALUATION_TEXT.read_text() if EVALUATION_TEXT.exists() else " ".join(["The sea is wide."] * 2000)
    return text.decode(text.encode(source[:40000])[:tokens])


async def measure(app, base: str, contexts: list[int], tokens: int) -> dict[str, Any]:
    await request(base, {"prompt": prompt_of(app, 32), "max_tokens": 8})   # past every tab's probation
    report: dict[str, Any] = {}
    for context in contexts:
        prompt = prompt_of(app, context)
        for _attempt in range(2):   # the first run warms this length's shapes; the second is measured
            before = snapshot(await status_of(base))
            answer = await request(base, {"prompt": prompt, "max_tokens": tokens,
                                          "tabswarm": {"speculation": {"method": "off"}}})
            await asyncio.sleep(SETTLE_SECONDS)
            after = snapshot(await status_of(base))
        usage = answer["usage"]
        report[str(context)] = {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"],
                                "decode_tok_s": usage["tabswarm"]["decode_tokens_per_second"],
                                "prefill_tok_s": usage["tabswarm"]["prefill_tokens_per_second"],
                                "decode": window(before, after, "decode"), "prefill": window(before, after, "prefill")}
        decode = report[str(context)]["decode"]
        print(f"  context {usage['prompt_tokens']}: {decode['step_ms']} ms per token "
              f"(tabs' layers {[tab['ms'].get('layers') for tab in decode['tabs']]}, hop {decode['hop_ms']})",
              flush=True)
    return report


def table(report: dict[str, Any]) -> str:
    head = ["context", "tok/s", *COORDINATOR_PARTS[:2], "relay", "stage wait", "· tabs' layers",
            "· tabs' codec", "· hop", "decode", "head", "sample"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in report["contexts"].values():
        decode = entry["decode"]
        parts = decode["coordinator_ms"]
        layers = sum(tab["ms"].get("layers", 0.0) for tab in decode["tabs"])
        codec = sum(tab["ms"].get(part, 0.0) for tab in decode["tabs"] for part in TAB_PARTS if part != "layers")
        cells = [entry["prompt_tokens"], entry["decode_tok_s"], parts.get("embed"), parts.get("encode"),
                 parts.get("relay"), parts.get("stage_wait"), round(layers, 3), round(codec, 3), decode["hop_ms"],
                 parts.get("decode"), parts.get("head"), parts.get("sample")]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


async def swarm(shard_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    config = AppConfig(server=ServerConfig(host="127.0.0.1", port=0, join_settle_seconds=1.0, chromium=args.chromium))
    memory = f"&memory={args.memory}" if args.memory else ""
    async with local_coordinator(config, shard_dir) as (app, base):
        headless = HeadlessWorkers(args.chromium)
        await headless.start()
        try:
            for index in range(args.tabs):
                await headless.open(worker_url(base, f"breakdown-tab-{index + 1}", args.threads) + memory)
            status = await wait_ready(base, args.tabs, LOAD_TIMEOUT)
            report = {"stages": [stage["layers"] for stage in status["plan"]], "compute": status["compute"],
                      "threads": sorted({worker["threads"] for worker in status["workers"]})}
            report["contexts"] = await measure(app, base, args.contexts, args.tokens)
        finally:
            await headless.stop()
    return report


def main(args: argparse.Namespace) -> int:
    shard_dir, manifest = convert(resolve_model(args.model, model_cache()), progress=False, cache_root=shard_cache())
    report = {"model": manifest.model.name, "tabs": args.tabs, "tab_threads_asked": args.threads,
              "memory_per_tab_mb": args.memory, "decode_tokens": args.tokens, "cores": os.cpu_count(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    report |= asyncio.run(swarm(shard_dir, args))
    report["table_markdown"] = table(report)
    output = args.output or RESULTS / f"time_breakdown_{manifest.model.name.lower().replace(' ', '-')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1) + "\n")
    print()
    print(report["table_markdown"])
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--tabs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="WASM threads per tab")
    parser.add_argument("--memory", type=int, default=None, metavar="MB")
    parser.add_argument("--tokens", type=int, default=32, help="generated tokens per measured request")
    parser.add_argument("--contexts", type=lambda text: [int(part) for part in text.split(",")],
                        default=[16, 256, 1024])
    parser.add_argument("--output", type=Path)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    raise SystemExit(main(parser.parse_args()))
