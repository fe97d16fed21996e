// int8 compute in the tab against the vectors Python generated (shards/vectors/int8.json):
// the same codes and scales, bit for bit, for a hand-made matrix (exact .5 steps round away
// from zero, an all-zero group) and for every matrix of a compact weights file.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { int8Group, layerInitializers, quantizeInt8 } from '../int8_weights.js';

const vectors = JSON.parse(readFileSync(new URL('../../shards/vectors/int8.json', import.meta.url)));
const hex = (text) => Uint8Array.from(text.match(/../g) || [], (pair) => parseInt(pair, 16));
const toHex = (bytes) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');

test('the rounding rule: codes and scales equal numpy\'s', () => {
  const { values, inputs, outputs, group, codes, scales } = vectors.matrix;
  const raw = hex(values);
  const result = quantizeInt8(new Float32Array(raw.buffer), inputs, outputs, group);
  assert.equal(toHex(result.codes), codes);
  assert.equal(toHex(result.scales), scales);
  assert.deepEqual(Array.from(result.codes.slice(0, 18).filter((_, i) => i % 3 === 0)), [-127, 1, 2, -2, 3, -1]);
});

test('group sizes: 64, else 32, else float32', () => {
  assert.equal(int8Group(1536), 64);
  assert.equal(int8Group(96), 32);
  assert.equal(int8Group(40), null);
});

for (const compute of ['float32', 'int8']) {
  test(`a weights file's ${compute} initializers equal Python's bytes`, () => {
    const got = layerInitializers(hex(vectors.file), vectors.stem, compute);
    const want = vectors.expected[compute];
    assert.deepEqual([...got.keys()].sort(), Object.keys(want).sort());
    for (const [location, bytes] of got) assert.equal(toHex(bytes), want[location], location);
  });
}

test('an int8 projection made in the tab runs in onnxruntime-web to native onnxruntime\'s output', async () => {
  const ort = await import('onnxruntime-web');
  const { externalLocations } = await import('../onnx_inline.js');
  ort.env.wasm.numThreads = 1;
  const weights = layerInitializers(hex(vectors.file), vectors.stem, 'int8');
  const model = hex(vectors.graph.model);
  const locations = externalLocations(model);
  assert.deepEqual(locations.sort(), [`${vectors.stem}.q_weight#int8`, `${vectors.stem}.q_weight#scales`]);
  const externalData = locations.map((path) => ({ path, data: weights.get(path) }));
  const session = await ort.InferenceSession.create(model, { executionProviders: ['wasm'], externalData });
  const result = await session.run({ x: new ort.Tensor('float32', Float32Array.from(vectors.graph.x), [1, 3, 128]) });
  const want = vectors.graph.y;
  const scale = Math.max(...want.map(Math.abs));
  Array.from(result.y.data).forEach((value, i) => assert.ok(Math.abs(value - want[i]) <= 1e-5 * scale, `${i}: ${value} vs ${want[i]}`));
});
