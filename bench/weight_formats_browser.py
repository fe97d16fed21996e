"""Decode time of one real decoder layer in headless Chromium (onnxruntime-web, WASM, 1
thread) for each weight format a tab could compute with, and what each costs in accuracy.

The layer's seven matrices (Q, K, V, O, gate, up, down) are swapped for:
- float32 MatMul with the weights inside the graph (float32 shards), and the shipped path:
  the compact shard's graph with its weights file decoded to float32 in the tab;
- int8 weights, per output column (from the float32 weights): DynamicQuantizeMatMul, and
  DynamicQuantizeLinear + MatMulIntegerToFloat (both have WASM SIMD int8 kernels);
- MatMulNBits, block 32, from the float32 weights: 4-bit (uint4, zero point per block) and
  8-bit, at accuracy level 4 (int8 activations) and 0 (float).
Per format: session creation ms, decode ms per layer (1 row on a 32-position cache, median
of 200, in a second pass over all formats so WASM tier-up favours none), and the max
|difference| of the layer's output from float32, relative to the output's largest value. Also: the tab's time to decode the layer's compact weights file.
Usage: .venv/bin/python -m bench.weight_formats_browser [--model gemma3-270m] [--layer N]
       (writes bench/results/weight_formats[_<model>].json)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bench.browser_page import blank_page
from bench.caches import model_cache, shard_cache
from shards.convert import MATRIX_ROLES, convert
from shards.gguf_model import GGUFModel, resolve_model
from shards.graphs import build_layer

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 32


def int8_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(in, out) float32 -> int8 codes and a scale per output column (symmetric)."""
    scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / 127.0
    return np.clip(np.round(weight / scale), -127, 127).astype(np.int8), scale.astype(np.float32)


def nbits_blocks(weight: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(in, out) float32 -> MatMulNBits codes (out, blocks, bytes), scales, packed uint8 zero points."""
    rows = weight.T                                                   # (out, in)
    blocks = rows.reshape(rows.shape[0], -1, BLOCK)
    # the range always spans 0, so the zero point is a code
    low, high = np.minimum(blocks.min(-1, keepdims=True), 0), np.maximum(blocks.max(-1, keepdims=True), 0)
    levels = (1 << bits) - 1
    scale = np.maximum(high - low, 1e-12) / levels
    zero = np.clip(np.round(-low / scale), 0, levels).astype(np.uint8)
    codes = np.clip(np.round(blocks / scale) + zero, 0, levels).astype(np.uint8)
    if bits == 4:
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
        zero = zero.reshape(rows.shape[0], -1)
        zero = np.pad(zero, ((0, 0), (0, zero.shape[1] % 2)))
        zero = zero[:, 0::2] | (zero[:, 1::2] << 4)
    return np.ascontiguousarray(codes), scale.reshape(-1).astype(np.float32), np.ascontiguousarray(zero).reshape(-1)


def with_format(layer: onnx.ModelProto, fmt: str) -> bytes:
    """The layer graph with its weight MatMuls replaced by the format's operator."""
    model = onnx.ModelProto()
    model.CopyFrom(layer)
    graph = model.graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer if init.name in MATRIX_ROLES}
    if fmt == "float32":
        return model.SerializeToString()
    kept = [init for init in graph.initializer if init.name not in weights]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = []
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights:
            nodes.append(node)
            continue
        name, source, out = node.input[1], node.input[0], node.output[0]
        weight = weights[name]
        if fmt.startswith("int8"):
            codes, scale = int8_columns(weight)
            graph.initializer.extend([numpy_helper.from_array(codes, f"{name}_q"),
                                      numpy_helper.from_array(scale, f"{name}_s"),
                                      numpy_helper.from_array(np.zeros(weight.shape[1], np.int8), f"{name}_z")])
            if fmt == "int8-dynamic-quantize-matmul":
                nodes.append(helper.make_node("DynamicQuantizeMatMul", [source, f"{name}_q", f"{name}_s", f"{name}_z"],
                                              [out], name=out, domain="com.microsoft"))
            else:
                nodes.append(helper.make_node("DynamicQuantizeLinear", [source],
                                              [f"{out}_xq", f"{out}_xs", f"{out}_xz"], name=f"{out}_dql"))
                nodes.append(helper.make_node("MatMulIntegerToFloat",
                                              [f"{out}_xq", f"{name}_q", f"{out}_xs", f"{name}_s", f"{out}_xz", f"{name}_z"],
                                              [out], name=out, domain="com.microsoft"))
        else:   # matmulnbits-<bits>bit-level<level>
            bits, level = int(fmt.split("-")[1][0]), int(fmt.split("level")[1])
            codes, scale, zero = nbits_blocks(weight, bits)
            graph.initializer.extend([numpy_helper.from_array(codes, f"{name}_q"), numpy_helper.from_array(scale, f"{name}_s"),
                                      numpy_helper.from_array(zero, f"{name}_z")])
            nodes.append(helper.make_node("MatMulNBits", [source, f"{name}_q", f"{name}_s", f"{name}_z"], [out], name=out,
                                          domain="com.microsoft", K=weight.shape[0], N=weight.shape[1], bits=bits,
                                          block_size=BLOCK, accuracy_level=level))
    del graph.node[:]
    graph.node.extend(nodes)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model.SerializeToString()


SHIPPED = "float32-from-compact-file"   # what a tab runs: the shard's graph, weights decoded in the tab, inlined
EXTERNAL = "float32-from-compact-file-as-external-data"   # the same weights given as onnxruntime-web externalData
FORMATS = ["float32", SHIPPED, EXTERNAL, "int8-dynamic-quantize-matmul", "int8-matmul-integer-to-float",
           "matmulnbits-4bit-level4", "matmulnbits-8bit-level4", "matmulnbits-4bit-level0"]

TIMING_JS = """
async ({formats, hidden, kvHeads, headDim, heads, weightsFile, stem}) => {
  const rt = await import('/worker/ort_runtime.js');
  const bt = await import('/worker/batch_tensors.js');
  const SHIPPED = 'float32-from-compact-file';
  const EXTERNAL = 'float32-from-compact-file-as-external-data';
  const { inlineWeights: inline } = await import('/worker/onnx_inline.js');
  const { decodeWeights } = await import('/worker/compact_weights.js');
  const ort = await rt.loadOrt({webgpu: false, threads: 1});
  const out = {};
  const compact = new Uint8Array(await (await fetch(`/shards/${weightsFile}`)).arrayBuffer());
  let started = performance.now();
  for (let i = 0; i < 3; i += 1) decodeWeights(compact, stem);
  out.decode_weights_file_ms = (performance.now() - started) / 3;
  const row = new Float32Array(hidden).map((_, i) => Math.sin(i * 0.37) * 2);
  const prefill = new Float32Array(hidden * 32).map((_, i) => Math.cos(i * 0.11) * 2);
  const mask = bt.floatTensor(ort, new Float32Array(heads).fill(1), [heads]);
  // Two passes over all formats, the second one measured: the first lets V8 tier the WASM
  // code up, which would otherwise count against whichever format comes first.
  for (const fmt of [...formats, ...formats]) {
    const measured = out[fmt] !== undefined;
    const shipped = fmt === SHIPPED;   // the shard's own graph + its weights file decoded here, put inside
    const fromShard = shipped || fmt === EXTERNAL;
    const bytes = new Uint8Array(await (await fetch(fromShard ? `/shards/${stem}.onnx` : `/bench/${fmt}.onnx`)).arrayBuffer());
    started = performance.now();
    let session;
    const external = fmt === EXTERNAL || shipped ? decodeWeights(compact, stem) : undefined;
    const model = shipped ? inline(bytes, new Map(external.map((entry) => [entry.path, entry.data]))).bytes : bytes;
    try { session = await rt.createSession(ort, model, 'wasm', fmt === EXTERNAL ? external : undefined); }
    catch (error) { out[fmt] = {error: String(error).slice(0, 300)}; continue; }
    const create = performance.now() - started;
    const empty = bt.floatTensor(ort, new Float32Array(0), [1, kvHeads, 0, headDim]);
    const first = await session.run({hidden: bt.floatTensor(ort, prefill, [1, 32, hidden]),
      positions: bt.positionsTensor(ort, 0, 32), past_key: empty, past_value: empty, head_mask: mask});
    const feeds = {hidden: bt.floatTensor(ort, row, [1, 1, hidden]), positions: bt.positionsTensor(ort, 32, 1),
      past_key: first.present_key, past_value: first.present_value, head_mask: mask};
    const result = await session.run(feeds);
    const times = [];
    for (let i = 0; i < 200; i += 1) {
      const t = performance.now();
      await session.run(feeds);
      times.push(performance.now() - t);
    }
    times.sort((a, b) => a - b);
    out[fmt] = {create_ms: measured ? out[fmt].create_ms : create, decode_ms: times[100],
      output: Array.from(result.hidden_out.data)};
    await session.release();
  }
  return out;
}
"""


async def main() -> None:

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=3)
    args = parser.parse_args()
    gguf = resolve_model(args.model, model_cache())
    shard_dir, manifest = convert(gguf, progress=False, cache_root=shard_cache())
    config = manifest.model
    layer = build_layer(config, GGUFModel(gguf).layer_weights(args.layer), args.layer)
    folder = Path(tempfile.mkdtemp(prefix="weight-formats-"))
    for fmt in FORMATS:
        if fmt not in (SHIPPED, EXTERNAL):
            (folder / f"{fmt}.onnx").write_bytes(with_format(layer, fmt))
    stem = f"layer_{args.layer:02d}"
    async with blank_page(shard_dir, "formats", {"/bench/": folder}) as page:
        raw = await page.evaluate(TIMING_JS, {"formats": FORMATS, "hidden": config.hidden, "kvHeads": config.kv_heads,
                                              "headDim": config.head_dim, "heads": config.heads,
                                              "weightsFile": f"{stem}.weights", "stem": stem})
    reference = np.asarray(raw["float32"]["output"])
    report = {"model": args.model, "layer": args.layer, "backend": "wasm, 1 thread",
              "decode_weights_file_ms": round(raw["decode_weights_file_ms"], 1), "formats": {}}
    for fmt in FORMATS:
        entry = raw[fmt]
        if "error" in entry:
            report["formats"][fmt] = entry
            continue
        output = np.asarray(entry["output"])
        report["formats"][fmt] = {
            "download_bytes": manifest.files[f"{stem}.onnx"].size + manifest.files[f"{stem}.weights"].size
            if fmt in (SHIPPED, EXTERNAL) else len((folder / f"{fmt}.onnx").read_bytes()),
            "create_ms": round(entry["create_ms"], 1), "decode_ms_per_layer": round(entry["decode_ms"], 3),
            "max_relative_difference": float(np.abs(output - reference).max() / np.abs(reference).max())}
        print(f"{fmt:32} {report['formats'][fmt]}", flush=True)
    suffix = "" if args.model == "smollm2-135m" else f"_{args.model}"
    out = ROOT / "bench" / "results" / f"weight_formats{suffix}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"decode of the compact weights file in the tab: {report['decode_weights_file_ms']} ms; wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
