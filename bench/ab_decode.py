"""Decode tok/s of two source trees of tabswarm, side by side, alternated, in one run.

Starts one coordinator per tree (`python -m coordinator.cli serve --headless-workers 2`,
each on its own port, imported from that tree), then alternates identical greedy
requests between them and compares `usage.tabswarm.decode_tokens_per_second`. Used to
measure what a change costs per token (e.g. the churn bookkeeping: `--tree` at the
commit before it and `--tree .`). A tree needs `node_modules` (symlinked from this one
if missing). Writes bench/results/ab_decode.json.

Usage: .venv/bin/python -m bench.ab_decode --tree /tmp/old --tree . [--rounds 6]
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

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]


def start(tree: Path, port: int) -> subprocess.Popen:
    if not (tree / "node_modules").exists():
        (tree / "node_modules").symlink_to(ROOT / "node_modules")
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.Popen([sys.executable, "-m", "coordinator.cli", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--headless-workers", "2"], cwd=tree, env=environment,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


async def wait_ready(session: aiohttp.ClientSession, base: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with session.get(base + "/health") as response:
                if (await response.json())["ready"]:
                    return
        except aiohttp.ClientError:   # not listening yet
            pass
        await asyncio.sleep(0.5)
    raise TimeoutError(f"{base} never became ready")


async def decode_rate(session: aiohttp.ClientSession, base: str, tokens: int) -> float:
    body = {"messages": PROMPT, "max_tokens": tokens}
    async with session.post(base + "/v1/chat/completions", json=body) as response:
        answer = await response.json()
    return float(answer["usage"]["tabswarm"]["decode_tokens_per_second"])


async def run(trees: list[Path], rounds: int, tokens: int) -> dict:
    processes = [start(tree, 8600 + index) for index, tree in enumerate(trees)]
    bases = [f"http://127.0.0.1:{8600 + index}" for index in range(len(trees))]
    rates: list[list[float]] = [[] for _ in trees]
    try:
        async with aiohttp.ClientSession() as session:
            for base in bases:
                await wait_ready(session, base)
            for base in bases:   # warm-up
                await decode_rate(session, base, tokens)
            for round_index in range(rounds):
                order = range(len(trees)) if round_index % 2 == 0 else reversed(range(len(trees)))
                for index in order:
                    rates[index].append(await decode_rate(session, bases[index], tokens))
                print(f"round {round_index + 1}: " + ", ".join(f"{r[-1]:.1f}" for r in rates), flush=True)
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(30)
    medians = [statistics.median(r) for r in rates]
    return {"trees": [str(tree) for tree in trees], "tokens_per_request": tokens, "rounds": rounds,
            "decode_tok_s": rates, "median_tok_s": medians,
            "ratio_last_to_first": round(medians[-1] / medians[0], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tree", type=Path, action="append", required=True)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    report = asyncio.run(run([tree.resolve() for tree in args.tree], args.rounds, args.tokens))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ab_decode.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({"median_tok_s": report["median_tok_s"], "ratio": report["ratio_last_to_first"]}))


if __name__ == "__main__":
    main()
