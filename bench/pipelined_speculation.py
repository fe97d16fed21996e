"""Pipelined speculation for one stream, through 2 and 3 Chromium tabs, against plain decoding
and today's lookup speculation (one verify pass at a time).

For each tab count, one coordinator (`serve --headless-workers N --standby 0`: N real
Chromium tabs, WASM, int8 codec, N stages) gets the same greedy requests with
`tabswarm.speculation` off, lookup, and lookup with `pipelined` (drafts in chunks, one per
stage in flight; coordinator/engine/pipelined_speculation.py), alternated per prompt (the
order rotates), on input-grounded prompts (summarise, edit code, quote) and open chat
(bench/speculation_prompts.py). Reported per tab count, method and category: median decode
tok/s, its ratio to plain decoding on the same prompts, acceptance, the most chunks in
flight, and whether the tokens equal plain decoding's.

Writes bench/results/pipelined_speculation.json. Usage:
  .venv/bin/python -m bench.pipelined_speculation [--tokens 64] [--prompts 2] [--tabs 2 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import aiohttp

from bench.ab_decode import wait_ready
from bench.speculation import RESULTS, ROOT, complete, summarise
from bench.speculation_prompts import prompt_sets

PORT = 8643
METHODS: dict[str, dict[str, Any]] = {
    "plain": {"method": "off"},
    "lookup": {"method": "lookup", "max_draft": 6},
    "lookup_pipelined": {"method": "lookup", "max_draft": 6, "pipelined": True},
}


def start_coordinator(tabs: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "coordinator.cli", "serve", "--host", "127.0.0.1",
                             "--port", str(PORT), "--headless-workers", str(tabs), "--standby", "0"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


async def wait_stages(session: aiohttp.ClientSession, base: str, stages: int, timeout: float = 300) -> None:
    """Until the plan has one stage per tab (tabs join one by one)."""
    await wait_ready(session, base, timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with session.get(base + "/v1/status") as response:
            status = await response.json()
        if status["ready"] and len(status["plan"]) == stages:
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the plan never reached {stages} stages")


async def measure_tabs(tabs: int, tokens: int, prompts: int) -> dict[str, Any]:
    process = start_coordinator(tabs)
    base = f"http://127.0.0.1:{PORT}"
    sets = prompt_sets()
    categories = {"input_grounded": [p for name in ("summarize", "code_edit", "quote") for p in sets[name][:prompts]],
                  "open_chat": sets["open_chat"][:prompts]}
    runs: dict[str, dict[str, list[dict]]] = {category: {method: [] for method in METHODS} for category in categories}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as session:
            await wait_stages(session, base, tabs)
            await complete(session, base, sets["open_chat"][-1], METHODS["plain"], 16)   # warm-up
            rotation = 0
            for category, messages_list in categories.items():
                for index, messages in enumerate(messages_list):
                    names = list(METHODS)
                    names = names[rotation % 3:] + names[:rotation % 3]
                    rotation += 1
                    for name in names:
                        runs[category][name].append(await complete(session, base, messages, METHODS[name], tokens))
                    line = ", ".join(f"{name} {runs[category][name][-1]['decode_tok_s']}" for name in METHODS)
                    print(f"{tabs} tabs, {category} {index + 1}: {line}", flush=True)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    return {"tabs": tabs, "stages": tabs,
            "categories": {category: {method: summarise(method_runs, by_method["plain"] if method != "plain" else None)
                                      for method, method_runs in by_method.items()}
                           for category, by_method in runs.items()},
            "runs": {category: {method: [{key: value for key, value in run.items() if key != "ids"}
                                         for run in method_runs] for method, method_runs in by_method.items()}
                     for category, by_method in runs.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per grounded kind and of open chat")
    parser.add_argument("--tabs", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--output", default=str(RESULTS / "pipelined_speculation.json"))
    args = parser.parse_args()
    report: dict[str, Any] = {"tokens_per_request": args.tokens, "codec": "int8", "by_tabs": []}
    for tabs in args.tabs:
        report["by_tabs"].append(asyncio.run(measure_tabs(tabs, args.tokens, args.prompts)))
    RESULTS.mkdir(exist_ok=True)
    with open(args.output, "w") as out:
        out.write(json.dumps(report, indent=1) + "\n")
    print(json.dumps({f"{entry['tabs']} tabs": {category: {method: (summary.get("median_decode_tok_s"),
                                                                      summary.get("speedup_median"),
                                                                      summary.get("identical_to_plain"))
                                                             for method, summary in methods.items()}
                                                  for category, methods in entry["categories"].items()}
                      for entry in report["by_tabs"]}, indent=1))


if __name__ == "__main__":
    main()
