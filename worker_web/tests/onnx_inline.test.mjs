// Putting decoded weights inside a graph's bytes (onnx_inline.js): a graph with an external
// initializer, made self-contained, runs in onnxruntime-web and gives native onnxruntime's output.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import * as ort from 'onnxruntime-web';
import { inlineWeights } from '../onnx_inline.js';

const vector = JSON.parse(readFileSync(new URL('../../shards/vectors/inline_graph.json', import.meta.url)));
const hex = (text) => Uint8Array.from(text.match(/../g) || [], (pair) => parseInt(pair, 16));
ort.env.wasm.numThreads = 1;

test('an external initializer becomes inline and the graph runs to the recorded output', async () => {
  const weights = new Map([[vector.location, hex(vector.weights)]]);
  const { bytes, replaced } = inlineWeights(hex(vector.model), weights);
  assert.equal(replaced, 1);
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'] });
  const result = await session.run({ x: new ort.Tensor('float32', Float32Array.from(vector.x), [1, 6]) });
  const got = Array.from(result.y.data);
  got.forEach((value, i) => assert.ok(Math.abs(value - vector.y[i]) <= 1e-5 * Math.max(1, Math.abs(vector.y[i])), `${i}: ${value} vs ${vector.y[i]}`));
});

test('missing or mis-sized weights are refused with the initializer named', () => {
  assert.throws(() => inlineWeights(hex(vector.model), new Map()), /no data for initializer w/);
  const short = new Map([[vector.location, new Uint8Array(8)]]);
  assert.throws(() => inlineWeights(hex(vector.model), short), /w: 8 bytes, its dims need 120/);
});
