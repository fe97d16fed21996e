// The batch former on headers alone: which waiting frames share a pass.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Encoding, Flag } from '../codec.js';
import { formPasses, passKey } from '../batch_former.js';

const frame = (stream, { rows = 1, start = 0, end = 15, flags = 0, encoding = Encoding.INT8_BLOCK, block = 64 } = {}) => (
  { stream, rows, layerStart: start, layerEnd: end, flags, encoding, block });

test('decode rows of every waiting stream share one pass, in arrival order', () => {
  const headers = [frame(4), frame(9), frame(2), frame(7)];
  assert.deepEqual(formPasses(headers), [[0, 1, 2, 3]]);
});

test('frames of other layers, other row counts or other rounding run in passes of their own', () => {
  const headers = [frame(1), frame(2, { rows: 64 }), frame(3), frame(4, { start: 15, end: 30 }),
    frame(5, { flags: Flag.ROUND_LAYERS }), frame(6, { rows: 64 }), frame(7, { flags: Flag.ROUND_LAYERS })];
  assert.deepEqual(formPasses(headers), [[0, 2], [1, 5], [3], [4, 6]]);
});

test('a pass holds at most its row budget: a long prompt\'s chunks spill into the next pass', () => {
  const headers = [frame(1, { rows: 200 }), frame(2, { rows: 200 }), frame(3, { rows: 200 })];
  assert.deepEqual(formPasses(headers, { rows: 400 }), [[0, 1], [2]]);
  const decodes = Array.from({ length: 40 }, (_, stream) => frame(stream));
  const passes = formPasses(decodes, { streams: 16 });
  assert.deepEqual(passes.map((pass) => pass.length), [16, 16, 8]);
  assert.deepEqual(passes.flat(), decodes.map((_, index) => index));
});

test('echoes (no layers: a measured round trip) are each their own pass', () => {
  assert.deepEqual(formPasses([frame(1, { start: 3, end: 3 }), frame(2, { start: 3, end: 3 })]), [[0], [1]]);
});

test('float32 frames ignore the rounding flag (nothing to round)', () => {
  const plain = frame(1, { encoding: Encoding.FLOAT32 });
  const flagged = frame(2, { encoding: Encoding.FLOAT32, flags: Flag.ROUND_LAYERS });
  assert.equal(passKey(plain), passKey(flagged));
});
