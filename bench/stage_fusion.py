"""Would one graph per stage, or graphs that return only the new K/V rows, make a tab faster?

Issue 21 items 3 and 4, measured before building them into the tabs. In headless Chromium
(onnxruntime-web, WASM, the tabs' build and session options), one decode step through
`--layers` real consecutive layers (self-contained native graphs, weights inside) is run four
ways, on a cache of each `--positions` length:

- `per_layer`: one session per layer, past_key/past_value in, whole present_* out (today);
- `fused`: the same layers composed into one graph (names prefixed per layer, each layer's
  hidden_out feeding the next), so a step is one `session.run`;
- `per_layer_new_rows` / `fused_new_rows`: the same graphs, but returning only the new K/V
  rows; the page keeps each layer's cache in a preallocated growing buffer (heads-major, room
  for 64 more positions), appends the new rows, and hands onnxruntime-web a contiguous past
  each step (its public API copies CPU inputs into the WASM heap on every run anyway).

The four ways give bitwise the same hidden state (checked here). Median ms per step over 30
steps, rounds interleaved so that neither way gets the warmer machine. Usage:
  .venv/bin/python -m bench.stage_fusion [--model smollm2-135m] [--layers 15] [--compute float32]
(writes bench/results/stage_fusion[_<model>].json)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import onnx
from onnx import helper

from bench.browser_page import blank_page
from bench.caches import model_cache, shard_cache
from shards.convert import convert
from shards.executor import native_graph_file
from shards.gguf_model import resolve_model

ROOT = Path(__file__).resolve().parent.parent
NEW_ROWS = {"present_key": "k_new", "present_value": "v_new"}   # the layer graph's (batch, kv, seq, head_dim) rows


def _new_rows_output(value: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(value)
    out.name = name
    out.type.tensor_type.shape.dim[2].dim_param = "seq"
    return out


def new_rows_layer(model: onnx.ModelProto) -> onnx.ModelProto:
    """The layer graph with its present_* outputs replaced by the new rows it concatenates."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for index, value in enumerate(out.graph.output):
        if value.name in NEW_ROWS:
            out.graph.output[index].CopyFrom(_new_rows_output(value, NEW_ROWS[value.name]))
    return out


def fuse_layers(models: list[onnx.ModelProto], new_rows: bool) -> onnx.ModelProto:
    """One graph running the layers in order: every name of layer i is prefixed `l{i}/`, except
    `positions` (shared) and `hidden` (the previous layer's hidden_out)."""
    nodes, initializers, outputs = [], [], []
    inputs = [value for value in models[0].graph.input if value.name in ("hidden", "positions")]
    previous = "hidden"
    for index, model in enumerate(models):
        shared = {"positions": "positions", "hidden": previous, "": ""}

        def rename(name: str, index: int = index, shared: dict[str, str] = shared) -> str:
            return shared.get(name, f"l{index}/{name}")

        graph = model.graph
        for value in graph.input:
            if value.name not in ("hidden", "positions"):
                inputs.append(_renamed(value, rename(value.name)))
        for tensor in graph.initializer:
            copy = onnx.TensorProto()
            copy.CopyFrom(tensor)
            copy.name = rename(tensor.name)
            initializers.append(copy)
        for node in graph.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            del copy.input[:], copy.output[:]
            copy.input.extend(rename(name) for name in node.input)
            copy.output.extend(rename(name) for name in node.output)
            copy.name = rename(node.name) if node.name else ""
            nodes.append(copy)
        for value in graph.output:
            if value.name in NEW_ROWS and new_rows:
                outputs.append(_new_rows_output(value, rename(NEW_ROWS[value.name])))
            elif value.name != "hidden_out":
                outputs.append(_renamed(value, rename(value.name)))
        previous = rename("hidden_out")
    last = next(value for value in models[-1].graph.output if value.name == "hidden_out")
    graph = helper.make_graph(nodes, "stage", inputs, [_renamed(last, previous), *outputs], initializers)
    fused = helper.make_model(graph, opset_imports=models[0].opset_import)
    fused.ir_version = models[0].ir_version
    return fused


def _renamed(value: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(value)
    out.name = name
    return out


def write_graphs(shard_dir: Path, manifest, first: int, count: int, compute: str, folder: Path) -> None:
    models = [onnx.load(str(native_graph_file(shard_dir, manifest, index, compute=compute)))
              for index in range(first, first + count)]
    for index, model in enumerate(models):
        onnx.save(model, str(folder / f"layer_{index}.onnx"))
        onnx.save(new_rows_layer(model), str(folder / f"layer_{index}.new.onnx"))
    onnx.save(fuse_layers(models, new_rows=False), str(folder / "stage.onnx"))
    onnx.save(fuse_layers(models, new_rows=True), str(folder / "stage.new.onnx"))


TIMING_JS = """
async ({count, model, positions, rounds}) => {
  const rt = await import('/worker/ort_runtime.js');
  const bt = await import('/worker/batch_tensors.js');
  const ort = await rt.loadOrt({webgpu: false, threads: 1});
  const bytes = async (name) => new Uint8Array(await (await fetch(`/graphs/${name}`)).arrayBuffer());
  const session = async (name) => rt.createSession(ort, await bytes(name), 'wasm');
  const perLayer = [], perLayerNew = [];
  for (let i = 0; i < count; i += 1) {
    perLayer.push(await session(`layer_${i}.onnx`));
    perLayerNew.push(await session(`layer_${i}.new.onnx`));
  }
  const stage = await session('stage.onnx'), stageNew = await session('stage.new.onnx');
  const {kv_heads: kvHeads, head_dim: headDim, hidden, heads} = model;
  const row = Float32Array.from({length: hidden}, (_, i) => Math.sin(i * 0.37) * 2);
  const mask = new ort.Tensor('float32', new Float32Array(heads).fill(1), [heads]);
  const result = {};
  for (const length of positions) {
    const position = bt.positionsTensor(ort, length, 1);
    const filled = (size) => Float32Array.from({length: size}, (_, i) => Math.cos(i * 0.013) * 0.5);
    const kv = () => new ort.Tensor('float32', filled(kvHeads * length * headDim), [1, kvHeads, length, headDim]);
    const caches = Array.from({length: count}, () => ({key: kv(), value: kv()}));
    // A growing heads-major buffer per layer and K/V with room for 64 more positions.
    const capacity = length + 64;
    const buffers = caches.map((cache) => {
      const grow = (tensor) => { const out = new Float32Array(kvHeads * capacity * headDim);
        for (let h = 0; h < kvHeads; h += 1) out.set(tensor.data.subarray(h * length * headDim, (h + 1) * length * headDim), h * capacity * headDim);
        return out; };
      return {key: grow(cache.key), value: grow(cache.value)};
    });
    const past = (buffer) => { const out = new Float32Array(kvHeads * length * headDim);
      for (let h = 0; h < kvHeads; h += 1) out.set(buffer.subarray(h * capacity * headDim, (h * capacity + length) * headDim), h * length * headDim);
      return new ort.Tensor('float32', out, [1, kvHeads, length, headDim]); };
    const append = (buffer, rows) => { for (let h = 0; h < kvHeads; h += 1)
      buffer.set(rows.subarray(h * headDim, (h + 1) * headDim), (h * capacity + length) * headDim); };
    const hiddenIn = () => new ort.Tensor('float32', row.slice(), [1, 1, hidden]);
    const ways = {
      per_layer: async () => { let state = hiddenIn();
        for (let i = 0; i < count; i += 1) {
          const out = await perLayer[i].run({hidden: state, positions: position, past_key: caches[i].key, past_value: caches[i].value, head_mask: mask});
          state = out.hidden_out;
        }
        return state.data; },
      fused: async () => { const feeds = {hidden: hiddenIn(), positions: position};
        for (let i = 0; i < count; i += 1) Object.assign(feeds, {[`l${i}/past_key`]: caches[i].key, [`l${i}/past_value`]: caches[i].value, [`l${i}/head_mask`]: mask});
        return (await stage.run(feeds))[`l${count - 1}/hidden_out`].data; },
      per_layer_new_rows: async () => { let state = hiddenIn();
        for (let i = 0; i < count; i += 1) {
          const out = await perLayerNew[i].run({hidden: state, positions: position, past_key: past(buffers[i].key), past_value: past(buffers[i].value), head_mask: mask});
          append(buffers[i].key, out.k_new.data); append(buffers[i].value, out.v_new.data);
          state = out.hidden_out;
        }
        return state.data; },
      fused_new_rows: async () => { const feeds = {hidden: hiddenIn(), positions: position};
        for (let i = 0; i < count; i += 1) Object.assign(feeds, {[`l${i}/past_key`]: past(buffers[i].key), [`l${i}/past_value`]: past(buffers[i].value), [`l${i}/head_mask`]: mask});
        const out = await stageNew.run(feeds);
        for (let i = 0; i < count; i += 1) { append(buffers[i].key, out[`l${i}/k_new`].data); append(buffers[i].value, out[`l${i}/v_new`].data); }
        return out[`l${count - 1}/hidden_out`].data; },
    };
    const reference = await ways.per_layer();
    const times = {}, equal = {};
    for (const [name, run] of Object.entries(ways)) {
      const output = await run();
      equal[name] = output.every((value, i) => value === reference[i]);
      times[name] = [];
    }
    for (let round = 0; round < rounds; round += 1) for (const [name, run] of Object.entries(ways)) {
      for (let step = 0; step < 10; step += 1) { const started = performance.now(); await run(); times[name].push(performance.now() - started); }
    }
    const median = (values) => { const sorted = [...values].sort((a, b) => a - b); return sorted[sorted.length >> 1]; };
    result[length] = {equal, ms: Object.fromEntries(Object.entries(times).map(([name, values]) => [name, median(values)]))};
  }
  return result;
}
"""


async def measure(folder: Path, shard_dir: Path, count: int, model: dict, positions: list[int]) -> dict:
    async with blank_page(shard_dir, "stage fusion", {"/graphs/": folder}) as page:
        return await page.evaluate(TIMING_JS, {"count": count, "model": model, "positions": positions, "rounds": 3})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", type=int, default=15, help="layers in the stage (default: half of SmolLM2)")
    parser.add_argument("--compute", default=None, help="float32 or int8 (default: the model's)")
    parser.add_argument("--positions", default="16,256,1024")
    args = parser.parse_args()
    shard_dir, manifest = convert(resolve_model(args.model, model_cache()), progress=False, cache_root=shard_cache())
    compute = args.compute or manifest.default_compute
    config = manifest.model
    positions = [int(value) for value in args.positions.split(",")]
    model = {"hidden": config.hidden, "heads": config.heads, "kv_heads": config.kv_heads, "head_dim": config.head_dim}
    with tempfile.TemporaryDirectory() as folder:
        write_graphs(shard_dir, manifest, 0, args.layers, compute, Path(folder))
        raw = await measure(Path(folder), shard_dir, args.layers, model, positions)
    report = {"model": config.name, "compute": compute, "layers": args.layers,
              "backend": "onnxruntime-web WASM in headless Chromium, 1 thread",
              "what": "median ms per decode step through the stage; equal: bitwise the same hidden state as per_layer",
              "positions": {}}
    for length in positions:
        entry = raw[str(length)]
        base = entry["ms"]["per_layer"]
        report["positions"][length] = {
            "equal": entry["equal"],
            "ms": {name: round(value, 2) for name, value in entry["ms"].items()},
            "speedup_vs_per_layer": {name: round(base / value, 3) for name, value in entry["ms"].items()}}
        print(length, report["positions"][length], flush=True)
    suffix = "" if args.model == "smollm2-135m" else f"_{args.model}"
    out = ROOT / "bench" / "results" / f"stage_fusion{suffix}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
