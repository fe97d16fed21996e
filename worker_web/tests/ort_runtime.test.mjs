// The router inputs a tab computes from layer outputs (pure helpers of ort_runtime.js).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { headContributions, updateRatio } from '../ort_runtime.js';

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
