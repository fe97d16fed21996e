"""What a tab's memory really holds for a number of layers, as the browser measures it
(`performance.measureUserAgentSpecificMemory`, after a garbage collection: JS heap,
WebAssembly memory, buffers), next to what the planner assumes (`shards.footprint`).

One Chromium page loads consecutive real layers through the shipped path (LayerRunner: the
compact weights file made into the compute format's initializers, given to onnxruntime-web
as externalData) and measures after 1, 4, 7 and 14 layers; a line through the points gives
the fixed part and the cost per layer. The WASM heap never shrinks, so each point includes
the high-water mark of loading the last layer.
Usage: .venv/bin/python -m bench.tab_memory [--model qwen2.5-coder-1.5b] [--compute int8]
       (writes bench/results/tab_memory[_<model>].json)
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np

from bench.browser_page import blank_page
from bench.caches import model_cache, shard_cache
from shards.convert import convert
from shards.footprint import TabFootprint
from shards.gguf_model import resolve_model

ROOT = Path(__file__).resolve().parent.parent
MEASURE_JS = """
async ({layers, model, compute, checkpoints}) => {
  const rt = await import('/worker/ort_runtime.js');
  const { layerInitializers } = await import('/worker/int8_weights.js');
  const measure = async () => (await performance.measureUserAgentSpecificMemory()).bytes / 2 ** 20;
  const ort = await rt.loadOrt({webgpu: false, threads: 1});
  const runner = new rt.LayerRunner(ort, 'wasm', model, compute);
  const fetchBytes = async (name) => new Uint8Array(await (await fetch(`/shards/${name}`)).arrayBuffer());
  const out = {empty_mb: await measure(), points: []};
  for (const [count, entry] of layers.entries()) {
    const name = `layer_${String(entry.index).padStart(2, '0')}`;
    await runner.loadLayer(entry.index, await fetchBytes(entry.graph), await fetchBytes(entry.kv_graph),
      layerInitializers(await fetchBytes(entry.weights), name, compute));
    if (checkpoints.includes(count + 1)) out.points.push([count + 1, await measure()]);
  }
  return out;
}
"""


async def measure(shard_dir: Path, layers: list[dict], model: dict, compute: str, checkpoints: list[int]) -> dict:
    async with blank_page(shard_dir, "tab memory") as page:
        return await page.evaluate(MEASURE_JS, {"layers": layers, "model": model, "compute": compute,
                                                "checkpoints": checkpoints})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--compute", default=None)
    parser.add_argument("--checkpoints", default="1,4,7,14")
    args = parser.parse_args()
    shard_dir, manifest = convert(resolve_model(args.model, model_cache()), progress=False, cache_root=shard_cache())
    config, compute = manifest.model, args.compute or manifest.default_compute
    checkpoints = [int(point) for point in args.checkpoints.split(",")]
    layers = [{"index": index, "weights": manifest.layers[index].weights,
               **dict(zip(("graph", "kv_graph"), manifest.layers[index].graphs(compute), strict=True))}
              for index in range(max(checkpoints))]
    model = {"hidden": config.hidden, "heads": config.heads, "kv_heads": config.kv_heads, "head_dim": config.head_dim}
    raw = asyncio.run(measure(shard_dir, layers, model, compute, checkpoints))
    counts, used = np.array([point[0] for point in raw["points"]]), np.array([point[1] for point in raw["points"]])
    per_layer, fixed = np.polyfit(counts, used, 1)
    plan = TabFootprint.of(config, compute)
    report = {"model": config.name, "compute": compute, "empty_page_mb": round(raw["empty_mb"], 1),
              "measured_mb_by_layers": {int(count): round(float(mb), 1) for count, mb in zip(counts, used, strict=True)},
              "fit": {"fixed_mb": round(float(fixed), 1), "per_layer_mb": round(float(per_layer), 1)},
              "planner": {"fixed_mb": round(plan.overhead_mb, 1), "per_layer_mb": round(plan.layer_mb, 1),
                          "predicted_mb_by_layers": {int(count): round(plan.needed_mb(int(count)), 1)
                                                     for count in counts}}}
    print(json.dumps(report, indent=1))
    suffix = "" if args.model == "smollm2-135m" else f"_{args.model}"
    out = ROOT / "bench" / "results" / f"tab_memory{suffix}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
