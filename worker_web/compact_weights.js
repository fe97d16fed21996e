// Owns the compact weights file a tab downloads for each layer (format: docs/weight_format.md):
// parsing it and decoding the GGUF blocks it holds into float32, the format that runs
// fastest in onnxruntime-web's WASM backend (see bench/results/weight_formats.json).
// Every decoder repeats the gguf package's float32 operations in the same order, so the
// values are bit-identical to the Python reference (pinned by tests/vectors).
// Knows nothing of onnxruntime or the wire.

import { float16Value } from './codec.js';

const MAGIC = 'TSWQ';
const VERSION = 1;
const ALIGNMENT = 16;
const fround = Math.fround;

/** [values per block, bytes per block] of each kept GGUF type. */
export const BLOCK_TYPES = {
  F32: [1, 4], F16: [1, 2], BF16: [1, 2],
  Q4_0: [32, 18], Q4_1: [32, 20], Q5_0: [32, 22], Q5_1: [32, 24], Q8_0: [32, 34],
  Q4_K: [256, 144], Q5_K: [256, 176], Q6_K: [256, 210],
};

const halfScratch = new DataView(new ArrayBuffer(4));

function half(bytes, offset) { return float16Value(bytes[offset] | (bytes[offset + 1] << 8)); }

function bfloat(bytes, offset) {
  halfScratch.setUint32(0, ((bytes[offset] | (bytes[offset + 1] << 8)) << 16) >>> 0, true);
  return halfScratch.getFloat32(0, true);
}

// The 6-bit scales and mins of a Q4_K/Q5_K super-block (12 bytes at `at`).
function scalesAndMins(bytes, at) {
  const scales = new Array(8);
  const mins = new Array(8);
  for (let i = 0; i < 4; i += 1) {
    const d = bytes[at + i];
    const m = bytes[at + i + 4];
    const md = bytes[at + i + 8];
    scales[i] = d & 0x3f;
    mins[i] = m & 0x3f;
    scales[i + 4] = (md & 0x0f) | ((d >> 2) & 0x30);
    mins[i + 4] = (md >> 4) | ((m >> 2) & 0x30);
  }
  return { scales, mins };
}

// One block of `kind` starting at bytes[at] -> out[0 .. values per block).
const DECODERS = {
  F32(bytes, at, out) { halfScratch.setUint32(0, (bytes[at] | (bytes[at + 1] << 8) | (bytes[at + 2] << 16) | (bytes[at + 3] << 24)) >>> 0, true); out[0] = halfScratch.getFloat32(0, true); },
  F16(bytes, at, out) { out[0] = half(bytes, at); },
  BF16(bytes, at, out) { out[0] = bfloat(bytes, at); },
  Q4_0(bytes, at, out) {
    const d = half(bytes, at);
    for (let j = 0; j < 16; j += 1) {
      const byte = bytes[at + 2 + j];
      out[j] = fround(d * ((byte & 15) - 8));
      out[j + 16] = fround(d * ((byte >> 4) - 8));
    }
  },
  Q4_1(bytes, at, out) {
    const d = half(bytes, at);
    const m = half(bytes, at + 2);
    for (let j = 0; j < 16; j += 1) {
      const byte = bytes[at + 4 + j];
      out[j] = fround(fround(d * (byte & 15)) + m);
      out[j + 16] = fround(fround(d * (byte >> 4)) + m);
    }
  },
  Q5_0(bytes, at, out) {
    const d = half(bytes, at);
    const high = (bytes[at + 2] | (bytes[at + 3] << 8) | (bytes[at + 4] << 16) | (bytes[at + 5] << 24)) >>> 0;
    for (let j = 0; j < 32; j += 1) {
      const low = j < 16 ? bytes[at + 6 + j] & 15 : bytes[at + 6 + j - 16] >> 4;
      out[j] = fround(d * ((low | (((high >>> j) & 1) << 4)) - 16));
    }
  },
  Q5_1(bytes, at, out) {
    const d = half(bytes, at);
    const m = half(bytes, at + 2);
    const high = (bytes[at + 4] | (bytes[at + 5] << 8) | (bytes[at + 6] << 16) | (bytes[at + 7] << 24)) >>> 0;
    for (let j = 0; j < 32; j += 1) {
      const low = j < 16 ? bytes[at + 8 + j] & 15 : bytes[at + 8 + j - 16] >> 4;
      out[j] = fround(fround(d * (low | (((high >>> j) & 1) << 4))) + m);
    }
  },
  Q8_0(bytes, at, out) {
    const d = half(bytes, at);
    for (let j = 0; j < 32; j += 1) {
      const q = bytes[at + 2 + j];
      out[j] = fround((q > 127 ? q - 256 : q) * d);
    }
  },
  Q4_K(bytes, at, out) { decodeK(bytes, at, out, false); },
  Q5_K(bytes, at, out) { decodeK(bytes, at, out, true); },
  Q6_K(bytes, at, out) {
    const d = half(bytes, at + 208);
    for (let e = 0; e < 256; e += 1) {
      const part = e >> 7;
      const r = e & 127;
      const low = (bytes[at + part * 64 + (r & 63)] >> ((r >> 6) * 4)) & 15;
      const high = (bytes[at + 128 + part * 32 + (r & 31)] >> ((r >> 5) * 2)) & 3;
      const scale = bytes[at + 192 + (e >> 4)];
      const scaled = fround(d * (scale > 127 ? scale - 256 : scale));
      out[e] = fround(scaled * ((low | (high << 4)) - 32));
    }
  },
};

// Q4_K / Q5_K: d, dmin, 12 bytes of 6-bit scales and mins, [32 bytes of 5th bits], 128 bytes of nibbles.
function decodeK(bytes, at, out, fifthBit) {
  const d = half(bytes, at);
  const dmin = half(bytes, at + 2);
  const { scales, mins } = scalesAndMins(bytes, at + 4);
  const nibbles = at + (fifthBit ? 48 : 16);
  for (let e = 0; e < 256; e += 1) {
    const sub = e >> 5;
    const group = e >> 6;
    const low = (bytes[nibbles + group * 32 + (e & 31)] >> ((sub & 1) * 4)) & 15;
    const q = fifthBit ? low | (((bytes[at + 16 + (e & 31)] >> sub) & 1) << 4) : low;
    out[e] = fround(fround(fround(d * scales[sub]) * q) - fround(dmin * mins[sub]));
  }
}

/** The header of a weights file: {tensors, dataStart}; throws on anything malformed. */
export function readHeader(bytes) {
  if (bytes.length < 12 || String.fromCharCode(...bytes.subarray(0, 4)) !== MAGIC) {
    throw new Error('not a tabswarm weights file (bad magic)');
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint32(4, true);
  if (version !== VERSION) throw new Error(`weights file version ${version} is not supported`);
  const length = view.getUint32(8, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + length)));
  const dataStart = 12 + length + ((ALIGNMENT - ((12 + length) % ALIGNMENT)) % ALIGNMENT);
  for (const tensor of header.tensors) {
    const type = BLOCK_TYPES[tensor.type];
    if (!type || tensor.cols % type[0] || tensor.length !== tensor.rows * (tensor.cols / type[0]) * type[1]
        || dataStart + tensor.offset + tensor.length > bytes.length) {
      throw new Error(`weights file entry ${tensor.name} does not fit its type or the file`);
    }
  }
  return { tensors: header.tensors, dataStart };
}

/** One tensor -> Float32Array, (rows, cols) or, when `transpose`, (cols, rows). */
export function decodeTensor(bytes, tensor, dataStart) {
  const [perBlock, blockBytes] = BLOCK_TYPES[tensor.type];
  const decode = DECODERS[tensor.type];
  const { rows, cols } = tensor;
  const out = new Float32Array(rows * cols);
  const block = new Float32Array(perBlock);
  const rowBytes = (cols / perBlock) * blockBytes;
  for (let row = 0; row < rows; row += 1) {
    const rowAt = dataStart + tensor.offset + row * rowBytes;
    for (let b = 0; b < cols / perBlock; b += 1) {
      decode(bytes, rowAt + b * blockBytes, block);
      const col0 = b * perBlock;
      if (tensor.transpose) {
        for (let j = 0; j < perBlock; j += 1) out[(col0 + j) * rows + row] = block[j];
      } else {
        out.set(block, row * cols + col0);
      }
    }
  }
  return out;
}

/**
 * A layer's weights file -> the external data its graphs name: [{path, data}] with
 * path 'layer_NN.<initializer>' and data the float32 bytes. `stem` is 'layer_NN'.
 */
export function decodeWeights(bytes, stem) {
  const { tensors, dataStart } = readHeader(bytes);
  return tensors.map((tensor) => ({
    path: `${stem}.${tensor.name}`,
    data: new Uint8Array(decodeTensor(bytes, tensor, dataStart).buffer),
  }));
}
