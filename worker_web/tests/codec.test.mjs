// The JS codec against the golden vectors Python generated (protocol/vectors/):
// every frame decodes to the recorded values and re-encodes to the same bytes.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import {
  roundTrip, decodeActivation, encodeActivation, float16Bits, float16Value, FrameError, newStreamState,
  runLengthDecode, runLengthEncode,
} from '../codec.js';
import { decodeControl, encodeControl, SCHEMAS } from '../control_messages.js';

const vectors = (name) => JSON.parse(readFileSync(new URL(`../../protocol/vectors/${name}`, import.meta.url)));
const hex = (text) => Uint8Array.from(text.match(/../g) || [], (pair) => parseInt(pair, 16));
const toHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
const floats = (text) => new Float32Array(hex(text).buffer);
const { activation, invalid, round_trip: roundTrips } = vectors('activation.json');
const control = vectors('control.json');

const settingsOf = (s) => ({ encoding: s.encoding, block: s.block, delta: s.delta, runLength: s.run_length, keyInterval: s.key_interval,
  roundLayers: s.round_layers });

for (const vector of activation) {
  test(`activation vector ${vector.name}: decodes to the recorded values`, () => {
    const state = newStreamState();
    for (const frame of vector.frames) {
      const { header, values } = decodeActivation(hex(frame.frame), state);
      assert.equal(header.rows, frame.rows);
      assert.equal(header.columns, frame.columns);
      assert.equal(header.position, frame.position);
      assert.equal(header.stream, vector.stream);
      assert.equal(header.step, frame.step);
      assert.equal(header.stepKind, frame.step_kind);
      assert.deepEqual(Array.from(values), Array.from(floats(frame.decoded)));
    }
  });
  test(`activation vector ${vector.name}: encodes to the same bytes`, () => {
    const state = newStreamState();
    for (const frame of vector.frames) {
      const route = { kind: vector.kind, stream: vector.stream, position: frame.position, layerStart: vector.layer_start,
        layerEnd: vector.layer_end, skipMask: BigInt(vector.skip_mask || 0), noReply: Boolean(vector.no_reply),
        step: frame.step, stepKind: frame.step_kind };
      const bytes = encodeActivation(floats(frame.input), frame.rows, frame.columns, route, settingsOf(vector.settings), state);
      assert.equal(toHex(bytes), frame.frame);
    }
  });
}

for (const vector of invalid) {
  test(`invalid frame ${vector.name} is rejected with reason ${vector.reason}`, () => {
    assert.throws(() => decodeActivation(hex(vector.frame)), (error) => error instanceof FrameError && error.reason === vector.reason);
  });
}

test('boundary rounding: the same bits as Python', () => {
  assert.ok(roundTrips.length >= 4);
  for (const { name, encoding, block, rows, columns, input, rounded } of roundTrips) {
    const values = new Float32Array(hex(input).buffer.slice(0));
    const out = roundTrip(values, rows, columns, encoding, block);
    assert.equal(toHex(new Uint8Array(out.buffer, out.byteOffset, out.byteLength)), rounded, name);
  }
});

test('control messages: same bytes both ways', () => {
  for (const { message, frame } of control.messages) {
    assert.equal(toHex(encodeControl(message, 9)), frame);
    assert.deepEqual(decodeControl(hex(frame)), message);
  }
});

test('control schemas agree with Python', () => {
  const pythonTypes = { int: 'int', float: 'number', str: 'str', bool: 'bool', list: 'list', dict: 'dict' };
  const fromPython = Object.fromEntries(Object.entries(control.schemas).map(([kind, fields]) => [kind,
    Object.fromEntries(Object.entries(fields).map(([name, [types, required]]) => [name, [types.map((t) => pythonTypes[t]), required]]))]));
  assert.deepEqual(JSON.parse(JSON.stringify(SCHEMAS)), fromPython);
});

test('malformed control vectors are refused naming their field', () => {
  assert.ok(control.malformed.length >= 5);
  for (const { name, frame, reason, field } of control.malformed) {
    assert.throws(() => decodeControl(hex(frame)), (error) => error.reason === reason && error.message.includes(field), name);
  }
});

test('control message with a missing field is rejected', () => {
  assert.throws(() => encodeControl({ type: 'release' }), (error) => error.reason === 'bad-control');
});

test('float16 round trip and rounding match IEEE', () => {
  assert.equal(float16Bits(1.0), 0x3c00);
  assert.equal(float16Bits(65504), 0x7bff);
  assert.equal(float16Bits(65520), 0x7c00);
  assert.equal(float16Bits(2 ** -24), 0x0001);
  assert.equal(float16Bits(1 + 2 ** -11), 0x3c00); // tie rounds to even
  assert.equal(float16Bits(1 + 3 * 2 ** -11), 0x3c02);
  for (let bits = 0; bits < 0x7c00; bits += 1) assert.equal(float16Bits(float16Value(bits)), bits);
});

test('run-length coding round-trips long zero runs and literals', () => {
  const data = new Uint8Array(1000);
  for (let i = 0; i < 300; i += 1) data[i] = (i % 7) + 1;
  data[500] = 9;
  const coded = runLengthEncode(data);
  assert.ok(coded.length < 320);
  assert.deepEqual(runLengthDecode(coded, data.length), data);
  assert.throws(() => runLengthDecode(coded, data.length - 1), (error) => error.reason === 'bad-run-length');
});
