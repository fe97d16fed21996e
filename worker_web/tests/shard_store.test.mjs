import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { sha256Fallback } from '../shard_store.js';

test('the fallback sha256 matches node:crypto', () => {
  for (const size of [0, 1, 55, 56, 63, 64, 65, 1000, 100000]) {
    const bytes = Uint8Array.from({ length: size }, (_, i) => (i * 31 + 7) & 0xff);
    assert.equal(sha256Fallback(bytes), createHash('sha256').update(bytes).digest('hex'));
  }
});
