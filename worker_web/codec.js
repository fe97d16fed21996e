// The wire codec in JavaScript: frame header, CRC-32, float16, int8 block quantization,
// closed-loop delta and zero run-length coding. Byte-identical to protocol/ in Python
// (checked against protocol/vectors/ by `node --test`). Pure: no I/O, no DOM.

export const MAGIC = [0x54, 0x53, 0x57, 0x46]; // "TSWF"
export const VERSION = 4;
export const HEADER_SIZE = 52;
export const Kind = Object.freeze({ FORWARD: 1, RESULT: 2, CONTROL: 3 });
export const StepKind = Object.freeze({ NONE: 0, PREFILL: 1, DECODE: 2, VERIFY: 3 });
export const Encoding = Object.freeze({ FLOAT32: 0, FLOAT16: 1, INT8_BLOCK: 2 });
export const Flag = Object.freeze({ DELTA: 1 << 2, RUN_LENGTH: 1 << 3, KEY: 1 << 4, NO_REPLY: 1 << 5, REPORT: 1 << 6,
  ROUND_LAYERS: 1 << 7 });
const ENCODING_MASK = 0b11;
const KNOWN_FLAGS = ENCODING_MASK | Flag.DELTA | Flag.RUN_LENGTH | Flag.KEY | Flag.NO_REPLY | Flag.REPORT | Flag.ROUND_LAYERS;
export const Limits = Object.freeze({
  MAX_ROWS: 1 << 16, MAX_COLUMNS: 1 << 15, MAX_ELEMENTS: 1 << 24, MAX_PAYLOAD: 1 << 26,
});
const MAX_CODE = 127;
const FLOAT16_MAX = 65504;
const MAX_RUN = 128;
const MIN_ZERO_RUN = 3;

export class FrameError extends Error {
  constructor(reason, detail) {
    super(`${reason}: ${detail}`);
    this.reason = reason;
    this.detail = detail;
  }
}

// ---- CRC-32 (IEEE, as zlib.crc32) ---------------------------------------------------
const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n += 1) {
    let c = n;
    for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

export function crc32(bytes) {
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i += 1) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

// ---- float16 -------------------------------------------------------------------------
function roundHalfEven(x) {
  const floor = Math.floor(x);
  const difference = x - floor;
  if (difference > 0.5) return floor + 1;
  if (difference < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** IEEE half-precision bits of a number, one rounding to nearest even (as numpy). */
export function float16Bits(value) {
  if (Number.isNaN(value)) return 0x7e00;
  const sign = value < 0 || Object.is(value, -0) ? 0x8000 : 0;
  const a = Math.abs(value);
  if (a >= 65520) return sign | 0x7c00;
  if (a < 2 ** -14) return sign | roundHalfEven(a / 2 ** -24);
  let exponent = Math.floor(Math.log2(a));
  while (2 ** exponent > a) exponent -= 1;
  while (2 ** (exponent + 1) <= a) exponent += 1;
  let mantissa = roundHalfEven((a / 2 ** exponent - 1) * 1024);
  if (mantissa === 1024) { mantissa = 0; exponent += 1; }
  if (exponent + 15 >= 31) return sign | 0x7c00;
  return sign | ((exponent + 15) << 10) | mantissa;
}

export function float16Value(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 31) return mantissa ? NaN : sign * Infinity;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

// ---- int8 block quantization -------------------------------------------------------------
export function blocksPerRow(columns, block) { return Math.ceil(columns / block); }

/** float16 scale bits per block of one row of float64 targets: smallest float16 >= max|x|/127. */
function rowScales(targets, columns, block, out, offset) {
  const count = blocksPerRow(columns, block);
  for (let b = 0; b < count; b += 1) {
    let maximum = 0;
    const end = Math.min(columns, (b + 1) * block);
    for (let i = b * block; i < end; i += 1) maximum = Math.max(maximum, Math.abs(targets[i]));
    const wanted = maximum / MAX_CODE;
    if (!Number.isFinite(wanted) || wanted > FLOAT16_MAX) throw new RangeError('activation values too large for float16 scales');
    let bits = float16Bits(wanted);
    if (float16Value(bits) < wanted) bits += 1;
    if (wanted === 0) bits = 0x3c00; // 1.0
    out[offset + b] = bits;
  }
}

/**
 * One row's float16 scale bits and int8 codes (codes[codeOffset + i]) from float64 targets;
 * with `out`, out[outOffset + i] = code * scale + (add ? add[i] : 0) (float64, one rounding).
 * The scale is decoded once per block: the inner loop only divides and rounds.
 */
function quantizeRow(targets, columns, block, scales, scaleOffset, codes, codeOffset, out = null, outOffset = 0, add = null) {
  rowScales(targets, columns, block, scales, scaleOffset);
  const count = blocksPerRow(columns, block);
  for (let b = 0; b < count; b += 1) {
    const scale = float16Value(scales[scaleOffset + b]);
    const end = Math.min(columns, (b + 1) * block);
    for (let i = b * block; i < end; i += 1) {
      const x = targets[i] / scale;
      const rounded = x >= 0 ? Math.floor(x + 0.5) : -Math.floor(0.5 - x);   // half away from zero
      const code = (rounded > MAX_CODE ? MAX_CODE : rounded < -MAX_CODE ? -MAX_CODE : rounded) | 0;   // never -0
      codes[codeOffset + i] = code;
      if (out) out[outOffset + i] = code * scale + (add ? add[i] : 0);
    }
  }
}

/**
 * The rounding a stage boundary applies (protocol/boundary_rounding.py): what a receiver
 * decodes from a frame of these rows in this encoding, without delta. With ROUND_LAYERS the
 * tab applies it at every layer boundary inside its stage, so an answer does not depend on
 * where stages are cut. values: Float32Array (rows * columns); returns a new Float32Array
 * (float32: the input itself).
 */
export function roundTrip(values, rows, columns, encoding, block) {
  if (encoding === Encoding.FLOAT32) return values;
  const out = new Float32Array(values.length);
  if (encoding === Encoding.FLOAT16) {
    for (let i = 0; i < values.length; i += 1) {
      if (Math.abs(values[i]) > FLOAT16_MAX) throw new RangeError('activation values overflow float16');
      out[i] = float16Value(float16Bits(values[i]));
    }
    return out;
  }
  const scales = new Uint16Array(blocksPerRow(columns, block));
  const codes = new Int8Array(columns);
  for (let r = 0; r < rows; r += 1) {
    quantizeRow(values.subarray(r * columns, (r + 1) * columns), columns, block, scales, 0, codes, 0, out, r * columns);
  }
  return out;
}

// ---- zero run-length coding ----------------------------------------------------------------
export function runLengthEncode(data) {
  const out = [];
  let literal = [];
  const flush = () => {
    for (let start = 0; start < literal.length; start += MAX_RUN) {
      const piece = literal.slice(start, start + MAX_RUN);
      out.push(piece.length - 1, ...piece);
    }
    literal = [];
  };
  let index = 0;
  while (index < data.length) {
    if (data[index] === 0) {
      let end = index;
      while (end < data.length && data[end] === 0) end += 1;
      let run = end - index;
      if (run >= MIN_ZERO_RUN) {
        flush();
        while (run > 0) { const piece = Math.min(run, MAX_RUN); out.push(0x7f + piece); run -= piece; }
      } else {
        for (let i = index; i < end; i += 1) literal.push(0);
      }
      index = end;
    } else {
      while (index < data.length && data[index] !== 0) { literal.push(data[index]); index += 1; }
    }
  }
  flush();
  return Uint8Array.from(out);
}

export function runLengthDecode(coded, expectedLength) {
  const out = new Uint8Array(expectedLength);
  let written = 0;
  let index = 0;
  while (index < coded.length) {
    const header = coded[index];
    index += 1;
    const count = header < 0x80 ? header + 1 : header - 0x7f;
    if (written + count > expectedLength) throw new FrameError('bad-run-length', `runs decode to more than the ${expectedLength} bytes expected`);
    if (header < 0x80) {
      if (index + count > coded.length) throw new FrameError('bad-run-length', 'literal run runs past the end of the payload');
      out.set(coded.subarray(index, index + count), written);
      index += count;
    }
    written += count;
  }
  if (written !== expectedLength) throw new FrameError('bad-run-length', `runs decode to ${written} bytes, expected ${expectedLength}`);
  return out;
}

// ---- frames ------------------------------------------------------------------------------------
export function packFrame({ kind, flags, stream, position, rows, columns, block = 0,
  layerStart = 0, layerEnd = 0, skipMask = 0n, step = 0, stepKind = StepKind.NONE }, payload) {
  const frame = new Uint8Array(HEADER_SIZE + payload.length);
  const view = new DataView(frame.buffer);
  frame.set(MAGIC, 0);
  view.setUint8(4, VERSION);
  view.setUint8(5, kind);
  view.setUint16(6, flags, true);
  view.setUint32(8, stream, true);
  view.setUint32(12, position, true);
  view.setUint32(16, rows, true);
  view.setUint16(20, columns, true);
  view.setUint16(22, block, true);
  view.setUint16(24, layerStart, true);
  view.setUint16(26, layerEnd, true);
  view.setBigUint64(28, BigInt(skipMask), true);
  view.setUint32(36, step >>> 0, true);
  view.setUint8(40, stepKind); // bytes 41-43 reserved, zero
  view.setUint32(44, payload.length, true);
  view.setUint32(48, crc32(payload), true);
  frame.set(payload, HEADER_SIZE);
  return frame;
}

export function parseFrame(bytes) {
  if (bytes.length > HEADER_SIZE + Limits.MAX_PAYLOAD) throw new FrameError('oversize', `frame of ${bytes.length} bytes exceeds the payload limit`);
  if (bytes.length < HEADER_SIZE) throw new FrameError('truncated', `frame of ${bytes.length} bytes is shorter than the ${HEADER_SIZE}-byte header`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < 4; i += 1) if (bytes[i] !== MAGIC[i]) throw new FrameError('bad-magic', 'magic is not TSWF');
  const version = view.getUint8(4);
  if (version !== VERSION) throw new FrameError('bad-version', `protocol version ${version} is not supported (this side speaks ${VERSION})`);
  const header = {
    kind: view.getUint8(5), flags: view.getUint16(6, true), stream: view.getUint32(8, true),
    position: view.getUint32(12, true), rows: view.getUint32(16, true), columns: view.getUint16(20, true),
    block: view.getUint16(22, true), layerStart: view.getUint16(24, true), layerEnd: view.getUint16(26, true),
    skipMask: view.getBigUint64(28, true), step: view.getUint32(36, true), stepKind: view.getUint8(40),
    payloadLength: view.getUint32(44, true), checksum: view.getUint32(48, true),
  };
  if (![Kind.FORWARD, Kind.RESULT, Kind.CONTROL].includes(header.kind)) throw new FrameError('bad-kind', `frame kind ${header.kind} is unknown`);
  if (header.flags & ~KNOWN_FLAGS) throw new FrameError('bad-flags', 'unknown flag bits');
  header.encoding = header.flags & ENCODING_MASK;
  if (header.encoding > Encoding.INT8_BLOCK) throw new FrameError('bad-flags', `encoding ${header.encoding} is unknown`);
  if (bytes[41] || bytes[42] || bytes[43]) throw new FrameError('bad-reserved', 'reserved header bytes must be zero');
  if (header.stepKind > StepKind.VERIFY) throw new FrameError('bad-step', `step kind ${header.stepKind} is unknown`);
  if (header.payloadLength !== bytes.length - HEADER_SIZE) throw new FrameError('bad-length', `header says ${header.payloadLength} payload bytes, frame carries ${bytes.length - HEADER_SIZE}`);
  const payload = bytes.subarray(HEADER_SIZE);
  if (crc32(payload) !== header.checksum) throw new FrameError('bad-checksum', 'payload CRC-32 does not match the header');
  if (header.kind === Kind.CONTROL) {
    if (header.stepKind !== StepKind.NONE || header.step) throw new FrameError('bad-step', 'a control frame carries no step');
  } else checkShape(header);
  return { header, payload };
}

function checkShape(h) {
  if (h.rows < 1 || h.rows > Limits.MAX_ROWS || h.columns < 1 || h.columns > Limits.MAX_COLUMNS) throw new FrameError('bad-shape', `shape (${h.rows}, ${h.columns}) is outside the limits`);
  if (h.stepKind === StepKind.NONE) throw new FrameError('bad-step', 'an activation frame must name its step kind');
  if (h.stepKind === StepKind.DECODE && h.rows !== 1) throw new FrameError('bad-step', `a decode step carries one row, not ${h.rows}`);
  if (h.rows * h.columns > Limits.MAX_ELEMENTS) throw new FrameError('bad-shape', 'too many elements');
  if (h.position + h.rows - 1 > 0xffffffff) throw new FrameError('bad-position', 'positions overflow 32 bits');
  const span = h.layerEnd - h.layerStart;
  if (span < 0 || span > 64) throw new FrameError('bad-layers', `layer range [${h.layerStart}, ${h.layerEnd}) is invalid`);
  if (h.skipMask >> BigInt(span)) throw new FrameError('bad-layers', 'skip mask names layers outside the range');
  const int8 = h.encoding === Encoding.INT8_BLOCK;
  if (int8 && (h.block < 1 || h.block > 4096)) throw new FrameError('bad-block', `int8 block size ${h.block} is invalid`);
  if (!int8 && (h.block || h.flags & (Flag.DELTA | Flag.RUN_LENGTH))) throw new FrameError('bad-flags', 'block size, delta and run-length apply to int8 frames only');
}

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
