"""Churn benchmark through real Chromium tabs: tabs closed mid-stream, tabs joining under load.

Measures, on this machine, with the real model and the default int8 codec:
  - fault runs: a streamed greedy request of `--tokens` tokens; after k tokens (several kill
    points, several runs) a stage tab is closed. Per trial: completed?, tokens identical to
    the same request without a loss?, and the **stall** = the longest gap between streamed
    tokens after the close. Two layouts of 3 tabs, alternated: `standby` (2 stages + 1 full
    replica, the default) and `no-standby` (3 stages; the 2 survivors must load the lost
    range: here from the browser's Cache Storage, which every tab of one browser shares, so
    this is a warm reload; a new device would also download it). After each trial a new
    tab is opened and the layout restored before the next.
  - join under load: 1 tab serving 2 back-to-back request loops; a second tab opens; time
    from opening it to its join, its layers ready, and its first step served; and the
    longest token gap the running streams saw while they moved to the new plan.
  - bookkeeping cost: coordinator time spent per step in schedule + update (pure, in-process),
    against a decode step's time through the tabs.
Writes bench/results/churn.json. Usage: .venv/bin/python -m bench.churn [--runs 2]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import time
from pathlib import Path

from bench.caches import shard_cache
from coordinator.app import CLUSTER
from coordinator.engine.generation_state import Sequence, schedule, update
from coordinator.swarm.headless import HeadlessWorkers, worker_url
from shards.convert import convert
from shards.gguf_model import default_model_path
from shards.sampling import SamplingParams
from tests.support import running_app, status_of, stream_tokens

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]


async def stream(base: str, tokens: int, on_token=None) -> dict:
    """One streamed greedy request: token ids, arrival times, error events."""
    streamed = await stream_tokens(base, {"messages": PROMPT, "max_tokens": tokens}, on_token)
    return {"ids": streamed.ids, "times": streamed.times, "errors": streamed.errors}


async def wait_layout(base: str, stages: int, standbys: int, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = await status_of(base)
        ready_standbys = [s for s in status["standbys"] if s["ready"]]
        if (status["ready"] and len(status["plan"]) == stages and len(ready_standbys) == standbys
                and not status["replan_pending"]):
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"layout of {stages} stages + {standbys} standbys not reached: {status}")
        await asyncio.sleep(0.2)


class Tabs:
    def __init__(self, headless: HeadlessWorkers, base: str) -> None:
        self.headless, self.base = headless, base
        self.by_name: dict[str, str] = {}
        self.count = 0

    async def open(self) -> str:
        self.count += 1
        name = f"tab-{self.count}"
        self.by_name[name] = await self.headless.open(worker_url(self.base, name, 1))
        return name

    async def close(self, name: str) -> None:
        await self.headless.close_tab(self.by_name.pop(name))


async def fault_trials(directory: Path, layout: str, kill_points: list[int], runs: int, tokens: int) -> list[dict]:
    standby = 1 if layout == "standby" else 0
    stages, standbys = (2, 1) if standby else (3, 0)
    trials = []
    async with running_app(directory, join_settle_seconds=1.0, standby_workers=standby,
                           recovery_seconds=60.0) as (_, base):
        headless = HeadlessWorkers("/usr/bin/chromium")
        await headless.start()
        tabs = Tabs(headless, base)
        try:
            for _ in range(3):
                await tabs.open()
            await wait_layout(base, stages, standbys)
            clean = await stream(base, tokens)
            for run, kill_at in itertools.product(range(runs), kill_points):
                status = await wait_layout(base, stages, standbys)
                victim = next(w["name"] for w in status["workers"] if w["id"] == status["plan"][-1]["worker"])
                closed: list[float] = []

                async def close_at(count: int, kill_at: int = kill_at, victim: str = victim,
                                   closed: list[float] = closed) -> None:
                    if count == kill_at:
                        closed.append(time.monotonic())
                        await tabs.close(victim)

                result = await asyncio.wait_for(stream(base, tokens, close_at), 300)
                after = [t for t in result["times"] if t >= closed[0]] if closed else []
                gaps = [later - earlier for earlier, later in itertools.pairwise([closed[0], *after])] if after else []
                trial = {"layout": layout, "run": run, "kill_at": kill_at,
                         "completed": len(result["ids"]) == len(clean["ids"]) and not result["errors"],
                         "identical": result["ids"] == clean["ids"], "errors": result["errors"],
                         "first_difference": next((i for i, (a, b) in enumerate(zip(result["ids"], clean["ids"],
                                                                                   strict=False)) if a != b), None),
                         "stall_seconds": round(max(gaps), 3) if gaps else None}
                trials.append(trial)
                print(json.dumps(trial), flush=True)
                await tabs.open()
        finally:
            await headless.stop()
    return trials


async def join_under_load(directory: Path, tokens: int) -> dict:
    async with running_app(directory, join_settle_seconds=1.0) as (app, base):
        headless = HeadlessWorkers("/usr/bin/chromium")
        await headless.start()
        tabs = Tabs(headless, base)
        try:
            await tabs.open()
            await wait_layout(base, 1, 0)
            stop = asyncio.Event()
            gaps: list[tuple[float, float]] = []   # (arrival time, gap since the stream's previous token)

            async def traffic() -> None:
                while not stop.is_set():
                    last: list[float] = []

                    async def note(count: int, last: list[float] = last) -> None:
                        now = time.monotonic()
                        if last:
                            gaps.append((now, now - last[0]))
                        last[:] = [now]

                    await stream(base, tokens, note)

            loops = [asyncio.create_task(traffic()) for _ in range(2)]
            await asyncio.sleep(5.0)                     # steady traffic first
            opened = time.monotonic()
            name = await tabs.open()
            marks: dict[str, float] = {}
            while "first_step" not in marks:
                status = await status_of(base)
                worker = next((w for w in status["workers"] if w["name"] == name), None)
                if worker is not None:
                    marks.setdefault("joined", time.monotonic() - opened)
                    if worker["state"] == "ready":
                        marks.setdefault("ready", time.monotonic() - opened)
                    if worker["steps"] > 0:
                        marks.setdefault("first_step", time.monotonic() - opened)
                if time.monotonic() - opened > 300:
                    raise TimeoutError("the joining tab never served a step")
                await asyncio.sleep(0.05)
            await asyncio.sleep(3.0)
            stop.set()
            await asyncio.gather(*loops)
            before = max((gap for at, gap in gaps if at < opened), default=None)
            around = max((gap for at, gap in gaps if at >= opened), default=None)
            return {"seconds_to_join": round(marks["joined"], 2), "seconds_to_ready": round(marks["ready"], 2),
                    "seconds_to_first_step": round(marks["first_step"], 2),
                    "longest_token_gap_before_join_seconds": round(before, 3) if before else None,
                    "longest_token_gap_from_join_on_seconds": round(around, 3) if around else None,
                    "plan_versions": app[CLUSTER].plan_version}
        finally:
            await headless.stop()


def bookkeeping_cost(steps: int = 20_000) -> dict:
    """Coordinator time per step for the new state: schedule + update over a Sequence."""
    sequence = Sequence.start(tuple(range(40)), SamplingParams(max_tokens=steps + 1), frozenset({-1}))
    cached = 0
    started = time.perf_counter()
    for index in range(steps):
        step = schedule(sequence, cached, index)
        cached += step.rows
        update(sequence, 7)
    per_step = (time.perf_counter() - started) / steps
    return {"schedule_update_microseconds_per_step": round(per_step * 1e6, 2)}


def summarize(trials: list[dict]) -> dict:
    stalls = [t["stall_seconds"] for t in trials if t["stall_seconds"] is not None]
    return {"trials": len(trials), "completed": sum(t["completed"] for t in trials),
            "identical": sum(t["identical"] for t in trials),
            "stall_median_seconds": round(statistics.median(stalls), 3) if stalls else None,
            "stall_worst_seconds": round(max(stalls), 3) if stalls else None}


async def run(args: argparse.Namespace) -> dict:
    directory, _ = convert(default_model_path(), progress=False, cache_root=shard_cache())
    report: dict = {"machine": {"cores": os.cpu_count()}, "tokens_per_request": args.tokens,
                    "kill_points": args.kill_at, "runs": args.runs}
    report["bookkeeping"] = bookkeeping_cost()
    print(json.dumps(report["bookkeeping"]), flush=True)
    trials: list[dict] = []
    for layout in ("standby", "no-standby"):
        trials += await fault_trials(directory, layout, args.kill_at, args.runs, args.tokens)
    report["trials"] = trials
    report["fault"] = {layout: summarize([t for t in trials if t["layout"] == layout])
                       for layout in ("standby", "no-standby")}
    print(json.dumps(report["fault"]), flush=True)
    report["join_under_load"] = await join_under_load(directory, 32)
    print(json.dumps(report["join_under_load"]), flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=80)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--kill-at", type=int, nargs="+", default=[12, 30, 55])
    args = parser.parse_args()
    report = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "churn.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
