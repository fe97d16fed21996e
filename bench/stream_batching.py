"""Streams batched into one pass in a real tab: bitwise the same as each alone, and what it costs.

Loads one stage's real layers (SmolLM2: 15) into a LayerRunner in headless Chromium
(onnxruntime-web, WASM) and gives 16 streams caches of different lengths. Then, for
B = 1, 2, 4, 8, 16 streams, a few decode steps in a row (one row per stream per step): every
stream alone (`forward`), and all B in one batched pass per step (`forwardBatch`, what the
tab runs when B frames wait together). Checks that every output row and every layer's cache
are bitwise the solo run's, and times both (median step after the first; the first batched
step pads the streams' caches into one batch, later ones reuse the pass before). The batch former and tab-side batching are in
worker_web/batch_former.js and worker.js; the graph layout in shards/graphs.py.
Usage: .venv/bin/python -m bench.stream_batching [--model smollm2-135m] [--compute int8]
       (writes bench/results/stream_batching[_<model>]_<compute>.json)
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from bench.browser_page import blank_page
from bench.caches import model_cache, shard_cache
from shards.convert import convert
from shards.gguf_model import resolve_model

ROOT = Path(__file__).resolve().parent.parent
COUNTS = (1, 2, 4, 8, 16)

BATCH_JS = """
async ({layers, model, compute, counts, threads, steps}) => {
  const rt = await import('/worker/ort_runtime.js');
  const { layerInitializers } = await import('/worker/int8_weights.js');
  const ort = await rt.loadOrt({webgpu: false, threads});
  const fetchBytes = async (name) => new Uint8Array(await (await fetch(`/shards/${name}`)).arrayBuffer());
  const runner = new rt.LayerRunner(ort, 'wasm', model, compute);
  for (const entry of layers) {
    const name = `layer_${String(entry.index).padStart(2, '0')}`;
    const weights = layerInitializers(await fetchBytes(entry.weights), name, compute);
    await runner.loadLayer(entry.index, await fetchBytes(entry.graph), await fetchBytes(entry.kv_graph), weights);
  }
  const first = layers[0].index, last = layers[layers.length - 1].index + 1;
  const most = Math.max(...counts);
  const lengths = Array.from({length: most}, (_, s) => 5 + ((s * 37) % 120));   // caches of 5 .. 124 positions
  const rows = (count, seed) => new Float32Array(model.hidden * count).map((_, i) => Math.sin(i * 0.013 + seed) * 2);
  for (let s = 0; s < most; s += 1) await runner.forward(s, rows(lengths[s], s), lengths[s], 0, 0n, first, last);
  const caches = (s) => [...runner.streams.get(s).keys()].map((layer) => {
    const { key, value } = runner.cacheData(s, layer);
    return [key.slice(), value.slice()];
  });
  const same = (a, b) => a.length === b.length && a.every((value, i) => Object.is(value, b[i]));
  const median = (values) => values.slice().sort((a, b) => a - b)[Math.floor(values.length / 2)];
  for (let s = 0; s < most; s += 1) { await runner.forward(s, rows(1, s), 1, lengths[s], 0n, first, last); runner.truncate(s, lengths[s]); }   // warm
  const out = {threads: ort.env.wasm.numThreads, lengths: lengths, by_count: {}};
  for (const count of counts) {
    const streams = Array.from({length: count}, (_, s) => s);
    const row = (s, step) => rows(1, 1000 + 17 * s + step);
    // `steps` decode steps in a row per stream: each alone, then all in one pass per step
    const soloOut = [], soloMs = [];
    for (let step = 0; step < steps; step += 1) {
      const started = performance.now();
      for (const s of streams) {
        const result = await runner.forward(s, row(s, step), 1, lengths[s] + step, 0n, first, last);
        soloOut.push(result.output.slice());
      }
      soloMs.push(performance.now() - started);
    }
    const soloCaches = streams.map((s) => caches(s));
    for (const s of streams) runner.truncate(s, lengths[s]);
    let equal = true;
    const batchedMs = [];
    for (let step = 0; step < steps; step += 1) {
      const entries = streams.map((s) => ({stream: s, hidden: row(s, step), position: lengths[s] + step, skipMask: 0n}));
      const started = performance.now();
      const results = await runner.forwardBatch(entries, 1, first, last);
      batchedMs.push(performance.now() - started);
      results.forEach((result, s) => { equal = equal && same(result.output, soloOut[step * count + s]); });
    }
    streams.forEach((s) => caches(s).forEach(([key, value], layer) => {
      equal = equal && same(key, soloCaches[s][layer][0]) && same(value, soloCaches[s][layer][1]);
    }));
    for (const s of streams) runner.truncate(s, lengths[s]);
    // the first step pads the streams' own caches into one batch; later ones reuse the last pass's
    out.by_count[count] = {bitwise_equal: equal, solo_ms: median(soloMs.slice(1)), batched_first_ms: batchedMs[0],
      batched_ms: median(batchedMs.slice(1))};
  }
  await runner.dispose();
  return out;
}
"""


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--compute", default=None, help="int8 | float32 (default: the model's default)")
    parser.add_argument("--layers", type=int, default=0, help="layers in the stage (default: half the model)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="decode steps per stream at each count")
    args = parser.parse_args()
    shard_dir, manifest = convert(resolve_model(args.model, model_cache()), progress=False, cache_root=shard_cache())
    config = manifest.model
    compute = args.compute or manifest.default_compute
    count = args.layers or config.layers // 2
    layers = []
    for index in range(count):
        entry = manifest.layers[index]
        graph, kv_graph = entry.graphs(compute)
        layers.append({"index": index, "weights": entry.weights, "graph": graph, "kv_graph": kv_graph})
    model = {"hidden": config.hidden, "heads": config.heads, "kv_heads": config.kv_heads, "head_dim": config.head_dim}
    async with blank_page(shard_dir, "stream batching") as page:
        raw = await page.evaluate(BATCH_JS, {"layers": layers, "model": model, "compute": compute, "counts": list(COUNTS),
                                             "threads": args.threads, "steps": args.steps})
    report = {"model": config.name, "compute": compute, "layers": count, "backend": f"wasm, {raw['threads']} thread(s)",
              "cache_lengths": raw["lengths"], "by_streams": {}}
    one = raw["by_count"]["1"]["solo_ms"]
    for streams in COUNTS:
        entry = raw["by_count"][str(streams)]
        report["by_streams"][streams] = {
            "bitwise_equal_to_solo": entry["bitwise_equal"],
            "solo_ms_all_streams": round(entry["solo_ms"], 2), "batched_pass_ms": round(entry["batched_ms"], 2),
            "batched_first_pass_ms": round(entry["batched_first_ms"], 2),
            "batched_speedup": round(entry["solo_ms"] / entry["batched_ms"], 2),
            "rows_per_s_batched_vs_one_stream": round(streams * one / entry["batched_ms"], 2)}
        print(f"{streams:2} streams: {report['by_streams'][streams]}", flush=True)
    suffix = "" if args.model == "smollm2-135m" else f"_{args.model}"
    out = ROOT / "bench" / "results" / f"stream_batching{suffix}_{compute}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
