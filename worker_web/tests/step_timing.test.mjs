// The tab's step timing (stats.timing): one-row steps count as decode, more rows as
// prefill; the message carries cumulative ms per part in the shape the coordinator parses
// (coordinator/swarm/time_breakdown.py, tests/unit/test_time_breakdown.py).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StepTiming } from '../step_timing.js';

test('steps accumulate by kind and part', () => {
  const timing = new StepTiming();
  timing.record(1, { decode: 0.1, layers: 4, encode: 0.2 });
  timing.record(1, { decode: 0.1, layers: 6, encode: 0.3 });
  timing.record(40, { decode: 1, layers: 80.00049, encode: 2 });
  assert.deepEqual(timing.toMessage(), {
    decode: { steps: 2, rows: 2, ms: { decode: 0.2, layers: 10, encode: 0.5 } },
    prefill: { steps: 1, rows: 40, ms: { decode: 1, layers: 80, encode: 2 } },
  });
});

test('a fresh tab reports zeros, not missing fields', () => {
  const message = new StepTiming().toMessage();
  assert.deepEqual(message.decode, { steps: 0, rows: 0, ms: { decode: 0, layers: 0, encode: 0 } });
});
