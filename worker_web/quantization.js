// Numbers on the wire in JavaScript: float16 (round half to even), int8 block quantization
// (a float16 scale per block of a row, codes in [-127, 127]) and its round trip. Mirrors
// protocol/quantization.py; byte-identical (protocol/vectors/, `node --test`). Pure.

import { Encoding } from './frames.js';

const MAX_CODE = 127;
export const FLOAT16_MAX = 65504;

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
export function quantizeRow(targets, columns, block, scales, scaleOffset, codes, codeOffset, out = null, outOffset = 0, add = null) {
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
