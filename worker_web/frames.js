// Frames on the wire in JavaScript: the 52-byte header (kind, flags, stream, position, shape,
// layer range, skip mask, step), its CRC-32 over the payload, and every check a frame must
// pass before anything reads it (FrameError names the reason). Mirrors protocol/frames.py and
// protocol/errors.py; byte-identical (protocol/vectors/, `node --test`). Pure: no I/O, no DOM.

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
