"""What compact weights change for a tab, per model: float32 shards (weights inside the
graphs, the format before) against compact shards (the GGUF's blocks, decoded in the tab).

For each format, one coordinator and one headless Chromium (WASM, 1 thread):
- cold join: a fresh browser profile opens a tab that must hold every layer; bytes it
  downloaded, load time the tab reports, seconds until the pipeline serves;
- warm rejoin: that tab closes and a new one opens in the same profile (shards in the
  browser's Cache Storage): the same figures;
- the tab's float32 weight bytes and JS heap as it reports them;
- decode: tok/s of 3 greedy requests of 48 tokens and the tab's ms per step, per layer.
Bytes a tab downloads for k layers are also given from the manifests (shard files only).
Usage: .venv/bin/python -m bench.compact_join [--model gemma3-270m]
       (writes bench/results/compact_join[_<model>].json)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from bench.caches import model_cache, shard_cache
from bench.suite import decode_rate
from coordinator.config import AppConfig, RuntimeConfig, ServerConfig
from coordinator.local_swarm import local_coordinator, status_of, wait_ready
from coordinator.swarm.headless import HeadlessWorkers, worker_url
from shards.convert import convert
from shards.gguf_model import resolve_model

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def layer_bytes(manifest) -> int:
    return sum(manifest.files[name].size for index in range(manifest.model.layers)
               for name in manifest.layer_files(index))


async def join(base: str, headless: HeadlessWorkers, name: str) -> tuple[str, dict[str, Any]]:
    started = time.perf_counter()
    target = await headless.open(worker_url(base, name, 1))
    status = await wait_ready(base, 1, 900)
    worker = status["workers"][0]
    return target, {"seconds_to_serving": round(time.perf_counter() - started, 2),
                    "tab_load_ms": round(worker["load_ms"]), "cached": worker["cached"],
                    "downloaded_bytes": worker["downloaded_bytes"], "weight_bytes": worker["weight_bytes"],
                    "memory_mb": worker["memory_mb"]}


async def measure(weights: str, model: str, tokens: int, head: str = "compact") -> dict[str, Any]:
    shard_dir, manifest = convert(resolve_model(model, model_cache()), progress=False, cache_root=shard_cache(), weights=weights)
    config = AppConfig(server=ServerConfig(host="127.0.0.1", port=0, join_settle_seconds=0.5, chromium=CHROMIUM),
                       runtime=RuntimeConfig(head=head))
    report: dict[str, Any] = {"format": manifest.weight_format["stored"], "layers": manifest.model.layers,
                              "shard_bytes_all_layers": layer_bytes(manifest)}
    async with local_coordinator(config, shard_dir) as (_, base):
        headless = HeadlessWorkers(CHROMIUM)
        await headless.start()
        try:
            target, report["cold"] = await join(base, headless, "cold")
            rates = [await decode_rate(base, MESSAGES, tokens) for _ in range(3)]
            status = await status_of(base)
            step_ms = status["workers"][0]["step_ms"]
            report["decode"] = {"tok_s": round(sorted(rates)[1], 2), "step_ms": step_ms,
                                "ms_per_layer": round(step_ms / manifest.model.layers, 3) if step_ms else None}
            await headless.close_tab(target)
            while (await status_of(base))["workers"]:
                await asyncio.sleep(0.2)
            _, report["warm"] = await join(base, headless, "warm")
        finally:
            await headless.stop()
    print(json.dumps({weights: report}), flush=True)
    return report


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--only", choices=("float32", "gguf"), help="measure one format (no file written)")
    parser.add_argument("--head", default="compact", choices=("compact", "float32"))
    args = parser.parse_args()
    if args.only:
        await measure(args.only, args.model, args.tokens, args.head)
        return
    report = {weights: await measure(weights, args.model, args.tokens) for weights in ("float32", "gguf")}
    before, after = report["float32"]["shard_bytes_all_layers"], report["gguf"]["shard_bytes_all_layers"]
    report["bytes_ratio"] = round(after / before, 4)
    suffix = "" if args.model == "smollm2-135m" else f"_{args.model}"
    out = ROOT / "bench" / "results" / f"compact_join{suffix}.json"
    out.write_text(json.dumps({"model": args.model, **report}, indent=1) + "\n")
    print(f"wrote {out}: bytes per tab {after / 1e6:.1f} MB vs {before / 1e6:.1f} MB ({report['bytes_ratio']:.1%})")


if __name__ == "__main__":
    asyncio.run(main())
