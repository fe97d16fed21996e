"""int8 against float32 compute in a real tab: ms per layer in Chromium (onnxruntime-web,
WASM), through the shipped path (worker_web: the layer's compact weights file decoded in the
page into float32 matrices or int8 codes and scales, put inside its graphs, run by
LayerRunner), and the tab's memory for those layers as the browser measures it.

Per compute format, `--layers` consecutive real layers are loaded (enough that their weights
exceed the CPU caches, as in a real stage), then: decode steps (1 row on a 32-position
cache; median of 30 passes, the second of two rounds so WASM tier-up favours neither) and a
prefill chunk (the rows per pass the coordinator sends for this model). The quality side of
the same question is bench/int8_quality.py.
Usage: .venv/bin/python -m bench.int8_speed_browser [--model qwen2.5-coder-1.5b] [--layers 4]
       (writes bench/results/int8_speed_browser[_<model>].json)
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from bench.browser_page import blank_page
from bench.caches import model_cache, shard_cache
from shards.convert import convert
from shards.footprint import layer_bytes, prefill_rows
from shards.gguf_model import resolve_model

ROOT = Path(__file__).resolve().parent.parent

TIMING_JS = """
async ({layers, model, computes, rows, threads}) => {
  const rt = await import('/worker/ort_runtime.js');
  const { layerInitializers } = await import('/worker/int8_weights.js');
  const ort = await rt.loadOrt({webgpu: false, threads});
  const out = {threads: ort.env.wasm.numThreads};
  const fetchBytes = async (name) => new Uint8Array(await (await fetch(`/shards/${name}`)).arrayBuffer());
  const row = new Float32Array(model.hidden).map((_, i) => Math.sin(i * 0.37) * 2);
  const chunk = new Float32Array(model.hidden * rows).map((_, i) => Math.cos(i * 0.11) * 2);
  for (const round of [0, 1]) for (const compute of computes) {
    const runner = new rt.LayerRunner(ort, 'wasm', model, compute);
    let started = performance.now();
    for (const entry of layers) {
      const name = `layer_${String(entry.index).padStart(2, '0')}`;
      const weights = layerInitializers(await fetchBytes(entry.weights), name, compute);
      await runner.loadLayer(entry.index, await fetchBytes(entry[compute].graph), await fetchBytes(entry[compute].kv_graph), weights);
    }
    const loadMs = performance.now() - started;
    const first = layers[0].index, last = layers[layers.length - 1].index + 1;
    const prefill32 = new Float32Array(model.hidden * 32).map((_, i) => Math.cos(i * 0.07));
    await runner.forward(1, prefill32, 32, 0, 0n, first, last);
    const decode = [];
    for (let step = 0; step < 30; step += 1) {
      started = performance.now();
      await runner.forward(1, row, 1, 32, 0n, first, last);   // the cache is cut back to 32 after each step
      decode.push(performance.now() - started);
      runner.truncate(1, 32);
    }
    const prefill = [];
    for (let pass = 0; pass < 3; pass += 1) {
      started = performance.now();
      await runner.forward(2 + pass, chunk, rows, 0, 0n, first, last);
      prefill.push(performance.now() - started);
    }
    decode.sort((a, b) => a - b); prefill.sort((a, b) => a - b);
    if (round === 1) {
      out[compute] = {load_ms: loadMs, decode_ms_per_layer: decode[15] / layers.length,
        prefill_ms_per_layer_row: prefill[1] / layers.length / rows};
    }
    await runner.dispose();
  }
  const measured = await performance.measureUserAgentSpecificMemory();
  out.page_memory_mb_after = measured.bytes / 2 ** 20;
  return out;
}
"""


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--first", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, help="default: bench/results/int8_speed_browser[_<model>].json")
    args = parser.parse_args()
    shard_dir, manifest = convert(resolve_model(args.model, model_cache()), progress=False, cache_root=shard_cache())
    config = manifest.model
    layers = []
    for index in range(args.first, args.first + args.layers):
        entry = manifest.layers[index]
        layers.append({"index": index, "weights": entry.weights,
                       **{compute: dict(zip(("graph", "kv_graph"), entry.graphs(compute), strict=True))
                          for compute in manifest.compute_formats}})
    model = {"hidden": config.hidden, "heads": config.heads, "kv_heads": config.kv_heads, "head_dim": config.head_dim}
    rows = prefill_rows(config, "int8")
    async with blank_page(shard_dir, "int8 speed") as page:
        raw = await page.evaluate(TIMING_JS, {"layers": layers, "model": model, "rows": rows, "threads": args.threads,
                                              "computes": list(manifest.compute_formats)})
    report = {"model": config.name, "layers": args.layers, "backend": f"wasm, {raw['threads']} thread(s)",
              "prefill_rows": rows, "formats": {}}
    for compute in manifest.compute_formats:
        entry = raw[compute]
        report["formats"][compute] = {
            "decode_ms_per_layer": round(entry["decode_ms_per_layer"], 3),
            "prefill_ms_per_layer_per_row": round(entry["prefill_ms_per_layer_row"], 3),
            "load_ms_per_layer": round(entry["load_ms"] / args.layers, 1),
            "weight_mb_per_layer": round(layer_bytes(config, compute) / 2**20, 1)}
        print(f"{compute:8} {report['formats'][compute]}", flush=True)
    float32, int8 = report["formats"]["float32"], report["formats"]["int8"]
    report["int8_speedup_decode"] = round(float32["decode_ms_per_layer"] / int8["decode_ms_per_layer"], 3)
    report["int8_speedup_prefill"] = round(float32["prefill_ms_per_layer_per_row"] / int8["prefill_ms_per_layer_per_row"], 3)
    suffix = "" if args.model == "smollm2-135m" else f"_{args.model}"
    out = args.output or ROOT / "bench" / "results" / f"int8_speed_browser{suffix}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"int8 vs float32: decode {report['int8_speedup_decode']}x, prefill {report['int8_speedup_prefill']}x; "
          f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
