// What a tab runs for a FORWARD frame and how it answers: the runner entry, the RESULT's
// route and codec settings, the boundary rounding and the layer_stats message.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeActivation, Encoding, Flag, Kind, newStreamState, parseFrame, encodeActivation, roundTrip, StepKind } from '../codec.js';
import { HEAD_SAMPLE_INTERVAL } from '../control_messages.js';
import { boundaryRounding, layerStatsMessage, resultRoute, resultSettings, runnerEntry } from '../frame_replies.js';

const COLUMNS = 96;
const row = (seed) => Float32Array.from({ length: COLUMNS }, (_, i) => Math.sin(i * 0.7 + seed) * 3);
const header = (overrides = {}) => ({ stream: 5, position: 16, rows: 1, layerStart: 3, layerEnd: 9, skipMask: 0b100n,
  step: 41, stepKind: StepKind.DECODE, flags: Flag.REPORT, encoding: Encoding.INT8_BLOCK, block: 32, ...overrides });

test('router statistics only for a one-row frame that asks and wants a reply; head ratios every HEAD_SAMPLE_INTERVAL positions', () => {
  const hidden = row(1);
  const measured = runnerEntry(header(), hidden);
  assert.deepEqual({ ...measured, hidden: undefined }, { stream: 5, hidden: undefined, position: 16, skipMask: 0b100n,
    measure: true, sampleHeads: true });
  assert.equal(measured.hidden, hidden);
  assert.equal(runnerEntry(header({ position: HEAD_SAMPLE_INTERVAL + 1 }), hidden).sampleHeads, false);
  assert.equal(runnerEntry(header({ flags: 0 }), hidden).measure, false);
  assert.equal(runnerEntry(header({ flags: Flag.REPORT | Flag.NO_REPLY }), hidden).measure, false);
  assert.equal(runnerEntry(header({ rows: 4, stepKind: StepKind.PREFILL }), hidden).measure, false);
  assert.equal(runnerEntry(header(), hidden, true).measure, false);
});

test('a RESULT goes back on the frame\'s route, in its encoding, and a delta stream stays closed-loop', () => {
  const sent = newStreamState();
  const received = newStreamState();
  const answered = newStreamState();
  const decoded = newStreamState();
  for (let step = 0; step < 3; step += 1) {
    const route = { kind: Kind.FORWARD, stream: 5, position: 16 + step, layerStart: 3, layerEnd: 9, skipMask: 0b100n,
      step: 41 + step, stepKind: StepKind.DECODE };
    const settings = { encoding: Encoding.INT8_BLOCK, block: 32, delta: true, runLength: true, keyInterval: 64 };
    const forward = decodeActivation(encodeActivation(row(step), 1, COLUMNS, route, settings, sent), received);
    const output = forward.values.map((value) => value * 0.5 + 1);
    const bytes = encodeActivation(output, 1, COLUMNS, resultRoute(forward.header), resultSettings(forward.header, 64),
      answered);
    const result = decodeActivation(bytes, decoded);
    const { kind, stream, position, layerStart, layerEnd, skipMask, step: id, stepKind, encoding, block } = result.header;
    assert.deepEqual({ kind, stream, position, layerStart, layerEnd, skipMask, id, stepKind, encoding, block },
      { kind: Kind.RESULT, stream: 5, position: 16 + step, layerStart: 3, layerEnd: 9, skipMask: 0b100n, id: 41 + step,
        stepKind: StepKind.DECODE, encoding: Encoding.INT8_BLOCK, block: 32 });
    assert.equal((result.header.flags & Flag.DELTA) !== 0, true);
    const worst = Math.max(...output.map((value, i) => Math.abs(value - result.values[i])));
    assert.ok(worst < 0.05, `int8 answer off by ${worst}`);
  }
  assert.equal(resultSettings(header(), 0).keyInterval, 64);   // no interval in the assignment: the protocol's
  assert.equal(parseFrame(encodeActivation(row(0), 1, COLUMNS, resultRoute(header({ encoding: Encoding.FLOAT32, block: 0 })),
    resultSettings(header({ encoding: Encoding.FLOAT32, block: 0 })))).header.encoding, Encoding.FLOAT32);
});

test('boundary rounding: the frame encoding\'s round trip when it asks, none for float32 or when it does not', () => {
  const values = Float32Array.from([...row(2), ...row(3)]);
  const rounding = boundaryRounding(header({ flags: Flag.ROUND_LAYERS }), COLUMNS);
  assert.deepEqual(rounding(values, 2), roundTrip(values, 2, COLUMNS, Encoding.INT8_BLOCK, 32));
  assert.notDeepEqual(rounding(values, 2), values);
  assert.equal(boundaryRounding(header({ flags: 0 }), COLUMNS), null);
  assert.equal(boundaryRounding(header({ flags: Flag.ROUND_LAYERS, encoding: Encoding.FLOAT32, block: 0 }), COLUMNS), null);
});

test('layer_stats carries head ratios only on a sampled position', () => {
  const result = { ratios: [0.1, 0.2], norms: [3, 4], nodeRatio: 0.25, headRatios: [[0.5, 0.5]] };
  const sampled = layerStatsMessage(header(), { sampleHeads: true }, result);
  assert.deepEqual(sampled, { type: 'layer_stats', position: 16, ratios: [0.1, 0.2], norms: [3, 4], node_ratio: 0.25,
    head_ratios: [[0.5, 0.5]] });
  assert.equal('head_ratios' in layerStatsMessage(header(), { sampleHeads: false }, result), false);
});
