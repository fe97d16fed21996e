// The router inputs a tab computes from layer outputs (pure helpers of ort_runtime.js).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cacheOfEntry, padCaches } from '../batch_tensors.js';
import { layerOfFile } from '../ort_runtime.js';
import { headContributions, updateRatio } from '../update_ratios.js';

test('updateRatio gives |after - before| / |before|, |after| and |before|', () => {
  const { ratio, norm, inputNorm } = updateRatio(Float32Array.from([3, 4]), Float32Array.from([3, 4 + 2.5]));
  assert.ok(Math.abs(ratio - 0.5) < 1e-7);
  assert.ok(Math.abs(norm - Math.hypot(3, 6.5)) < 1e-6);
  assert.equal(inputNorm, 5);
});

test('headContributions turns squared head norms into ratios of the input norm', () => {
  const ratios = headContributions(5, Float32Array.from([25, 6.25, -1e-9]));
  assert.deepEqual(ratios.map((r) => Number(r.toFixed(6))), [1, 0.5, 0]);  // rounding below 0 clamps to 0
});

test('cacheOfEntry keeps the first positions of every KV head of one batch entry', () => {
  // (2 entries, 2 kv heads, 3 positions, head_dim 2): entry e, head h, position p, d -> 100e + 10h + 2p + d
  const data = Float32Array.from({ length: 24 }, (_, i) => {
    const [e, h, p, d] = [Math.floor(i / 12), Math.floor(i / 6) % 2, Math.floor(i / 2) % 3, i % 2];
    return 100 * e + 10 * h + 2 * p + d;
  });
  assert.deepEqual(Array.from(cacheOfEntry(data, 0, 2, 3, 2, 2)), [0, 1, 2, 3, 10, 11, 12, 13]);
  assert.deepEqual(Array.from(cacheOfEntry(data, 1, 2, 3, 2, 1)), [100, 101, 110, 111]);
  assert.deepEqual(Array.from(cacheOfEntry(data, 0, 2, 3, 2, 0)), []);
  assert.deepEqual(Array.from(cacheOfEntry(data, 1, 2, 3, 2, 3)), Array.from(data.subarray(12)));
});

test('padCaches lays streams out as batch entries, zeros after each up to the longest', () => {
  // one kv head, head_dim 1: stream a holds [1, 2], stream b [7] (as entry 1 of a two-entry tensor of 3 slots)
  const a = { data: Float32Array.from([1, 2]), entry: 0, total: 2 };
  const b = { data: Float32Array.from([0, 0, 0, 7, 0, 0]), entry: 1, total: 3 };
  assert.deepEqual(Array.from(padCaches([a, b], [2, 1], 1, 1)), [1, 2, 7, 0]);
  assert.deepEqual(Array.from(padCaches([b, a], [1, 2], 1, 1)), [7, 0, 1, 2]);
});

test('layerOfFile reads the layer index from shard file names', () => {
  assert.equal(layerOfFile('layer_07.kv.onnx'), 7);
  assert.equal(layerOfFile('layer_29.onnx'), 29);
  assert.equal(layerOfFile('embedding.onnx'), null);
});
