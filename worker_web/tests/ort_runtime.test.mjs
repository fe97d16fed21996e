// The router inputs a tab computes from layer outputs (pure helpers of ort_runtime.js).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { headContributions, layerOfFile, truncatePositions, updateRatio } from '../ort_runtime.js';

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

test('truncatePositions keeps the first positions of every KV head', () => {
  // (1, kvHeads=2, positions=3, headDim=2): head 0 = 0..5, head 1 = 10..15
  const data = Float32Array.from([0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15]);
  assert.deepEqual(Array.from(truncatePositions(data, 2, 3, 2, 2)), [0, 1, 2, 3, 10, 11, 12, 13]);
  assert.deepEqual(Array.from(truncatePositions(data, 2, 3, 2, 0)), []);
  assert.deepEqual(Array.from(truncatePositions(data, 2, 3, 2, 3)), Array.from(data));
  assert.throws(() => truncatePositions(data, 2, 3, 2, 4), RangeError);
});

test('layerOfFile reads the layer index from shard file names', () => {
  assert.equal(layerOfFile('layer_07.kv.onnx'), 7);
  assert.equal(layerOfFile('layer_29.onnx'), 29);
  assert.equal(layerOfFile('embedding.onnx'), null);
});
