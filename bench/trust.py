"""Trust benchmark: what each attack gets, and what spot-checking costs.

1. Attacks, against a real coordinator (fake workers speaking the real protocol over real
   sockets, native onnxruntime, so the honest reference is exact):
   unauthenticated client; unauthenticated worker; a worker claiming 0.01 ms and 64 GB;
   corrupting workers (noise, sign flips, x1.05, stale positions) that lie from their
   first step, and the same that lie only after their probation. Per attack: what
   happened, steps/seconds to detection, and whether any wrong token reached a client.
2. Cost, through 2 real Chromium tabs (WASM), one app, requests alternated with the
   checker on (default: probation 4 steps, then 1/16 sampled) and off: decode tok/s,
   coordinator CPU per checked step, and the largest |difference| / allowed seen in
   passing checks (how close honest WASM results come to the bound).
Writes bench/results/trust.json. Usage: .venv/bin/python -m bench.trust
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import aiohttp

from bench.caches import shard_cache
from coordinator.app import ENGINE
from coordinator.swarm.headless import HeadlessWorkers, worker_url
from coordinator.trust.access import AccessConfig
from shards.convert import convert
from shards.executor import ReferenceExecutor
from shards.gguf_model import default_model_path
from tests.integration.fake_worker import FakeWorker
from tests.support import COLOURS, post, reference_tokens, running_app, status_of, wait_ready

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]


async def status_code(url: str, headers: dict | None = None, body: bytes | None = None) -> int:
    async with aiohttp.ClientSession() as session:
        method = session.post if body is not None else session.get
        async with method(url, data=body, headers=headers or {}) as response:
            return response.status


async def edge_attacks(directory: Path) -> list[dict]:
    rows = []
    access = AccessConfig(api_keys=("secret-key",), join_secret="join-secret")
    async with running_app(directory, access=access) as (_, base):
        rows.append({"attack": "client without an API key", "result": await status_code(base + "/v1/status"),
                     "wrong_answers": 0})
        async with aiohttp.ClientSession() as session:
            try:
                await session.ws_connect(base.replace("http", "ws") + "/ws/worker")
                outcome = "upgraded (bad)"
            except aiohttp.WSServerHandshakeError as error:
                outcome = f"HTTP {error.status} before the upgrade"
        rows.append({"attack": "worker without a join token", "result": outcome, "wrong_answers": 0})
        deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
        rows.append({"attack": "JSON nested 5,000 deep", "result": await status_code(
            base + "/v1/chat/completions", {"Authorization": "Bearer secret-key",
                                            "Content-Type": "application/json"}, deep), "wrong_answers": 0})
    async with running_app(directory, join_settle_seconds=0.3, standby_workers=0) as (_, base):
        liar = await FakeWorker(base, directory, "liar", benchmark_ms=0.01, memory_mb=65536).start()
        honest = [await FakeWorker(base, directory, f"honest-{i}", benchmark_ms=10.0).start() for i in range(2)]
        status = await wait_ready(base, 3)
        names = {worker["id"]: worker["name"] for worker in status["workers"]}
        layers = {names[s["worker"]]: s["layers"][1] - s["layers"][0] for s in status["plan"]}
        rows.append({"attack": "worker claiming 0.01 ms and 64 GB", "result": f"layers given: {layers}",
                     "wrong_answers": 0})
        for worker in [liar, *honest]:
            await worker.stop()
    return rows


async def corrupting(directory: Path, reference: ReferenceExecutor, corrupt: str, after: int) -> dict:
    async with running_app(directory) as (_, base):
        honest = [await FakeWorker(base, directory, f"honest-{i}").start() for i in range(2)]
        await wait_ready(base, 2)
        liar = await FakeWorker(base, directory, "liar", corrupt=corrupt, corrupt_after=after).start()
        while not ((s := await status_of(base))["standbys"] and s["standbys"][0]["ready"]):
            await asyncio.sleep(0.05)
        await honest[1].stop()
        await wait_ready(base, 2)
        want = reference_tokens(reference, COLOURS, "lossless", 24, [])
        wrong, requests, started = 0, 0, time.monotonic()
        while (await status_of(base))["verification"]["failed"] == 0 and requests < 40:
            code, body = await post(base, "/v1/chat/completions", {
                "messages": COLOURS, "max_tokens": 24, "tabswarm": {"codec": "lossless", "return_token_ids": True}})
            requests += 1
            if code != 200 or body["choices"][0]["token_ids"] != want:
                wrong += 1
        detected = (await status_of(base))["verification"]["failed"] > 0
        result = {"attack": f"corrupting worker: {corrupt}" + (f" after {after} honest steps" if after else ""),
                  "result": "evicted and refused" if detected else "NOT detected",
                  "liar_steps_served": liar.steps_served, "corrupted_steps": max(liar.steps_served - after, 0),
                  "seconds_to_detection": round(time.monotonic() - started, 2), "requests": requests,
                  "wrong_answers": wrong}
        for worker in (honest[0], liar):
            await worker.stop()
        return result


async def checking_cost(directory: Path, rounds: int, tokens: int) -> dict:
    async with running_app(directory, join_settle_seconds=1.0) as (app, base):
        headless = HeadlessWorkers("/usr/bin/chromium")
        await headless.start()
        try:
            for index in range(2):
                await headless.open(worker_url(base, f"tab-{index + 1}", 1))
            await wait_ready(base, 2, 300)
            engine = app[ENGINE]
            checker = engine.spot_checks.checker
            rates: dict[str, list[float]] = {"on": [], "off": []}
            await post(base, "/v1/chat/completions", {"messages": PROMPT, "max_tokens": tokens})   # probation
            before = engine.spot_checks.counters.passed, engine.spot_checks.counters.seconds
            for round_index in range(rounds):
                for setting in (("on", "off") if round_index % 2 == 0 else ("off", "on")):
                    engine.spot_checks.checker = checker if setting == "on" else None
                    _, body = await post(base, "/v1/chat/completions", {"messages": PROMPT, "max_tokens": tokens})
                    rates[setting].append(body["usage"]["tabswarm"]["decode_tokens_per_second"])
                print(f"round {round_index + 1}: on {rates['on'][-1]}, off {rates['off'][-1]}", flush=True)
            engine.spot_checks.checker = checker
            checks = engine.spot_checks.counters.passed - before[0]
            status = await status_of(base)
        finally:
            await headless.stop()
    return {"decode_tok_s_checking_on": statistics.median(rates["on"]),
            "decode_tok_s_checking_off": statistics.median(rates["off"]), "rates": rates,
            "checks_during_on_runs": checks,
            "cpu_ms_per_checked_step": round(1000 * (engine.spot_checks.counters.seconds - before[1]) / max(checks, 1), 2),
            "failed_checks_on_honest_tabs": status["verification"]["failed"],
            "worst_passed_ratio": status["verification"]["worst_passed_ratio"]}


async def run() -> dict:
    directory, _ = convert(default_model_path(), progress=False, cache_root=shard_cache())
    reference = ReferenceExecutor(directory, threads=1)
    report: dict = {"machine": {"cores": os.cpu_count()}}
    rows = await edge_attacks(directory)
    for corrupt in ("noise", "sign", "scale", "stale"):
        rows.append(await corrupting(directory, reference, corrupt, 0))
        print(json.dumps(rows[-1]), flush=True)
    rows.append(await corrupting(directory, reference, "scale", 40))
    print(json.dumps(rows[-1]), flush=True)
    report["attacks"] = rows
    report["checking_cost"] = await checking_cost(directory, 6, 64)
    print(json.dumps(report["checking_cost"]), flush=True)
    return report


def main() -> None:
    report = asyncio.run(run())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "trust.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {RESULTS / 'trust.json'}")


if __name__ == "__main__":
    main()
