// What the KV cache's trip through onnxruntime-web costs per layer and step, apart from
// attention: a graph that only concatenates the new row to past_key/past_value (as every
// layer graph does), run with the public API (inputs copied into the WASM heap, present_*
// copied out). Node runs the same WASM build the tabs do. Called by bench/kv_copy.py:
//   node bench/kv_copy.mjs <graph.onnx> <kv_heads> <head_dim> <positions,...>
// prints one JSON line: {positions: median ms per layer}.
import { readFileSync } from 'node:fs';
import * as ort from 'onnxruntime-web';

const [graph, kvHeads, headDim, positions] = process.argv.slice(2);
ort.env.wasm.numThreads = 1;
const session = await ort.InferenceSession.create(readFileSync(graph), { enableCpuMemArena: false });
const tensor = (length) => new ort.Tensor('float32', new Float32Array(Number(kvHeads) * length * Number(headDim)).fill(0.5),
  [1, Number(kvHeads), length, Number(headDim)]);
const result = {};
for (const length of positions.split(',').map(Number)) {
  const times = [];
  for (let run = 0; run < 41; run += 1) {
    const feeds = { past_key: tensor(length), past_value: tensor(length), new_key: tensor(1), new_value: tensor(1) };
    const started = performance.now();
    await session.run(feeds);
    times.push(performance.now() - started);
  }
  times.sort((a, b) => a - b);
  result[length] = Math.round(times[20] * 1000) / 1000;
}
console.log(JSON.stringify(result));
