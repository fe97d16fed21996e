// Owns turning a layer's compact weights file into the initializer data its graph of one
// compute format names: float32 matrices ('layer_NN.q_weight'), or int8 codes and scales
// ('layer_NN.q_weight#int8', '…#scales') by the rule of shards/int8.py — per (group of 64
// (else 32) inputs, output column): scale = float32(amax / 127), code = round half away
// from zero of w / scale in float64 — pinned by shards/vectors/int8.json, bit for bit.
// Decodes one matrix at a time so a tab never holds a whole layer as float32 at once.
// Knows nothing of onnxruntime or the wire.

import { decodeTensor, readHeader } from './compact_weights.js';

export const INT8_GROUPS = [64, 32];
export const INT8_CODES = '#int8';
export const INT8_SCALES = '#scales';

/** The group size a matrix with this many inputs uses, or null (it stays float32). */
export function int8Group(inputs) {
  return INT8_GROUPS.find((group) => inputs % group === 0) ?? null;
}

/**
 * (inputs, outputs) float32 row-major -> { codes: Int8Array (blocks, group, outputs),
 * scales: Float32Array (blocks, 1, outputs) }.
 */
export function quantizeInt8(matrix, inputs, outputs, group) {
  const blocks = inputs / group;
  const codes = new Int8Array(inputs * outputs);
  const scales = new Float32Array(blocks * outputs);
  const largest = new Float32Array(outputs);
  for (let block = 0; block < blocks; block += 1) {
    largest.fill(0);
    for (let i = 0; i < group; i += 1) {
      const row = (block * group + i) * outputs;
      for (let n = 0; n < outputs; n += 1) {
        const value = Math.abs(matrix[row + n]);
        if (value > largest[n]) largest[n] = value;
      }
    }
    for (let n = 0; n < outputs; n += 1) scales[block * outputs + n] = Math.fround(largest[n] / 127);
    for (let i = 0; i < group; i += 1) {
      const row = (block * group + i) * outputs;
      for (let n = 0; n < outputs; n += 1) {
        const scale = scales[block * outputs + n];
        if (scale === 0) continue;
        const steps = matrix[row + n] / scale;
        const code = steps < 0 ? -Math.floor(-steps + 0.5) : Math.floor(steps + 0.5);
        codes[row + n] = Math.max(-127, Math.min(127, code));
      }
    }
  }
  return { codes, scales };
}

const bytesOf = (array) => new Uint8Array(array.buffer, array.byteOffset, array.byteLength);

/**
 * A layer's weights file -> Map of external-data location -> bytes, for graphs computing
 * in `compute` ('float32' | 'int8'). `stem` is 'layer_NN'. A matrix whose inputs no
 * group divides is given as float32 in either format (the graphs keep it float32 too).
 */
export function layerInitializers(bytes, stem, compute) {
  const { tensors, dataStart } = readHeader(bytes);
  const out = new Map();
  for (const tensor of tensors) {
    const location = `${stem}.${tensor.name}`;
    const values = decodeTensor(bytes, tensor, dataStart);   // (inputs, outputs) when transposed
    const [inputs, outputs] = tensor.transpose ? [tensor.cols, tensor.rows] : [tensor.rows, tensor.cols];
    const group = compute === 'int8' ? int8Group(inputs) : null;
    if (group === null) {
      out.set(location, bytesOf(values));
      continue;
    }
    const { codes, scales } = quantizeInt8(values, inputs, outputs, group);
    out.set(location + INT8_CODES, bytesOf(codes));
    out.set(location + INT8_SCALES, bytesOf(scales));
  }
  return out;
}
