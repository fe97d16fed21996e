// The activation codec in JavaScript: a hidden state (rows, columns) to a frame and back,
// as float32, float16 or int8 blocks, with closed-loop delta coding per stream and zero
// run-length coding of the codes. The one module the tab's code imports for the wire: it
// re-exports the frame layer (frames.js) and the numbers (quantization.js, run_length.js).
// Byte-identical to protocol/ in Python (checked against protocol/vectors/ by `node --test`).
// Pure: no I/O, no DOM.

import { Encoding, Flag, FrameError, Kind, packFrame, parseFrame, StepKind } from './frames.js';
import { blocksPerRow, FLOAT16_MAX, float16Bits, float16Value, quantizeRow } from './quantization.js';
import { runLengthDecode, runLengthEncode } from './run_length.js';

export { crc32, Encoding, Flag, FrameError, HEADER_SIZE, Kind, Limits, MAGIC, packFrame, parseFrame, StepKind, VERSION } from './frames.js';
export { blocksPerRow, float16Bits, float16Value, roundTrip } from './quantization.js';
export { runLengthDecode, runLengthEncode } from './run_length.js';

// ---- activations ---------------------------------------------------------------------------------
export function newStreamState() { return { previous: null, rowsSinceKey: 0 }; }

/** values: Float32Array (rows * columns). route: {kind, stream, position, layerStart, layerEnd, skipMask, noReply, step, stepKind}. */
export function encodeActivation(values, rows, columns, route, settings, state = null, forceKey = false) {
  for (let i = 0; i < values.length; i += 1) if (!Number.isFinite(values[i])) throw new RangeError('activations must be finite');
  let flags = settings.encoding;
  let block = 0;
  let payload;
  if (settings.encoding === Encoding.FLOAT32) {
    payload = new Uint8Array(Float32Array.from(values).buffer);
  } else if (settings.encoding === Encoding.FLOAT16) {
    const bits = new Uint16Array(values.length);
    for (let i = 0; i < values.length; i += 1) {
      if (Math.abs(values[i]) > FLOAT16_MAX) throw new RangeError('activation values overflow float16');
      bits[i] = float16Bits(values[i]);
    }
    payload = new Uint8Array(bits.buffer);
  } else {
    block = settings.block;
    const blocks = blocksPerRow(columns, block);
    const scales = new Uint16Array(rows * blocks);
    const codes = new Int8Array(rows * columns);
    let previous = null;
    let key = false;
    if (settings.delta) {
      if (!state) throw new Error('delta coding needs a stream state');
      key = state.previous === null || forceKey || state.rowsSinceKey >= settings.keyInterval;
      if (key) state.rowsSinceKey = 0;
      previous = key ? null : state.previous;
      flags |= Flag.DELTA | (key ? Flag.KEY : 0);
    }
    const targets = new Float64Array(columns);
    for (let r = 0; r < rows; r += 1) {
      const base = r * columns;
      for (let i = 0; i < columns; i += 1) targets[i] = values[base + i] - (previous ? previous[i] : 0);
      const reconstruction = settings.delta ? new Float32Array(columns) : null;
      quantizeRow(targets, columns, block, scales, r * blocks, codes, base, reconstruction, 0, previous);
      if (settings.delta) previous = reconstruction;
    }
    if (settings.delta) { state.previous = previous; state.rowsSinceKey += rows; }
    let codeBytes = new Uint8Array(codes.buffer);
    if (settings.runLength) {
      const coded = runLengthEncode(codeBytes);
      if (coded.length < codeBytes.length) { codeBytes = coded; flags |= Flag.RUN_LENGTH; }
    }
    const scaleBytes = new Uint8Array(scales.length * 2);
    const scaleView = new DataView(scaleBytes.buffer);
    scales.forEach((bits, i) => scaleView.setUint16(i * 2, bits, true));
    payload = new Uint8Array(scaleBytes.length + codeBytes.length);
    payload.set(scaleBytes, 0);
    payload.set(codeBytes, scaleBytes.length);
  }
  if (route.noReply) flags |= Flag.NO_REPLY;
  if (settings.roundLayers) flags |= Flag.ROUND_LAYERS;
  return packFrame({ kind: route.kind, flags, stream: route.stream, position: route.position, rows, columns, block,
    layerStart: route.layerStart || 0, layerEnd: route.layerEnd || 0, skipMask: route.skipMask || 0n,
    step: route.step || 0, stepKind: route.stepKind ?? StepKind.PREFILL }, payload);
}

/** parsed: parseFrame(bytes) when the caller already has it (it checks the CRC; once is enough). */
export function decodeActivation(bytes, state = null, parsed = null) {
  const { header, payload } = parsed || parseFrame(bytes);
  if (header.kind === Kind.CONTROL) throw new FrameError('bad-kind', 'a control frame is not an activation frame');
  const { rows, columns } = header;
  const count = rows * columns;
  const values = new Float32Array(count);
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  if (header.encoding === Encoding.FLOAT32 || header.encoding === Encoding.FLOAT16) {
    const width = header.encoding === Encoding.FLOAT32 ? 4 : 2;
    if (payload.length !== count * width) throw new FrameError('bad-length', `payload of ${payload.length} bytes does not hold (${rows}, ${columns}) values`);
    for (let i = 0; i < count; i += 1) {
      values[i] = width === 4 ? view.getFloat32(i * 4, true) : float16Value(view.getUint16(i * 2, true));
    }
    return { header, values };
  }
  const blocks = blocksPerRow(columns, header.block);
  const scaleBytes = rows * blocks * 2;
  if (payload.length < scaleBytes) throw new FrameError('bad-length', 'payload is shorter than its scales');
  const scales = new Float64Array(rows * blocks);
  for (let i = 0; i < scales.length; i += 1) {
    scales[i] = float16Value(view.getUint16(i * 2, true));
    if (!Number.isFinite(scales[i])) throw new FrameError('bad-scales', 'a block scale is not finite');
  }
  let codeBytes = payload.subarray(scaleBytes);
  if (header.flags & Flag.RUN_LENGTH) codeBytes = runLengthDecode(codeBytes, count);
  else if (codeBytes.length !== count) throw new FrameError('bad-length', `${codeBytes.length} code bytes for (${rows}, ${columns}) values`);
  const codes = new Int8Array(codeBytes.buffer, codeBytes.byteOffset, count);
  const delta = (header.flags & Flag.DELTA) !== 0;
  let previous = null;
  if (delta) {
    if (!state) throw new FrameError('no-delta-state', 'a delta frame needs the stream\'s decoder state');
    if (!(header.flags & Flag.KEY)) {
      previous = state.previous;
      if (!previous) throw new FrameError('no-delta-state', `stream ${header.stream} has no previous row for a delta frame`);
      if (previous.length !== columns) throw new FrameError('bad-shape', 'delta frame width differs from the stream\'s previous row');
    }
  }
  for (let r = 0; r < rows; r += 1) {
    const base = r * columns;
    for (let i = 0; i < columns; i += 1) {
      values[base + i] = codes[base + i] * scales[r * blocks + Math.floor(i / header.block)] + (previous ? previous[i] : 0);
    }
    if (delta) previous = values.subarray(base, base + columns);
  }
  if (delta) state.previous = Float32Array.from(previous);
  return { header, values };
}
