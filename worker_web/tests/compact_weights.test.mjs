// The tab's GGUF block decoders against the vectors Python generated (shards/vectors/):
// every kept type decodes to the gguf reference dequantizer's float32 values, bit for bit.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { BLOCK_TYPES, decodeWeights, readHeader } from '../compact_weights.js';

const vectors = JSON.parse(readFileSync(new URL('../../shards/vectors/weights.json', import.meta.url)));
const hex = (text) => Uint8Array.from(text.match(/../g) || [], (pair) => parseInt(pair, 16));
const file = hex(vectors.file);

test('the vectors cover every kept GGUF type', () => {
  const { tensors } = readHeader(file);
  assert.deepEqual(tensors.map((tensor) => tensor.type).sort(), Object.keys(BLOCK_TYPES).sort());
});

const decoded = new Map(decodeWeights(file, vectors.stem).map((entry) => [entry.path, entry.data]));
for (const [name, expected] of Object.entries(vectors.expected)) {
  test(`${name} decodes to the gguf reference values bit for bit`, () => {
    const data = decoded.get(`${vectors.stem}.${name}`);
    assert.ok(data, `no external data for ${name}`);
    const want = hex(expected.float32);
    assert.equal(data.length, want.length);
    const got = new Uint32Array(data.buffer, data.byteOffset, data.length / 4);
    const ref = new Uint32Array(want.buffer);
    const first = got.findIndex((bits, i) => bits !== ref[i]);
    assert.equal(first, -1, `first difference at value ${first}: ${got[first]?.toString(16)} vs ${ref[first]?.toString(16)}`);
  });
}

test('a truncated or foreign file is refused with a reason', () => {
  assert.throws(() => readHeader(file.subarray(0, file.length - 100)), /does not fit/);
  assert.throws(() => readHeader(new Uint8Array(64)), /bad magic/);
});
