// Control messages in JavaScript: msgpack maps in CONTROL frames, validated against the
// same schema table as protocol/control.py (derived there from one dataclass per message
// type; the golden vectors carry that table, and a test checks this one equals it and that
// both codecs refuse the malformed vectors naming the same field). Pure: no I/O.
import { decode, encode } from '@msgpack/msgpack';
import { FrameError, Kind, packFrame, parseFrame } from './codec.js';

// layer_stats carries head_ratios for one-row frames at positions that are multiples of this.
export const HEAD_SAMPLE_INTERVAL = 8;

const T = { int: 'int', number: 'number', string: 'str', bool: 'bool', list: 'list', map: 'dict' };

// type -> {field: [types, required]}
export const SCHEMAS = Object.freeze({
  hello: { protocol: [[T.int], true], backend: [[T.string], true], threads: [[T.int], true],
    benchmark_ms: [[T.int, T.number], true], memory_mb: [[T.int, T.number], false], agent: [[T.string], false],
    worker: [[T.string], false], secure_context: [[T.bool], false], webgpu_api: [[T.bool], false],
    cache_storage: [[T.bool], false] },
  assign: { worker: [[T.string], true], layer_start: [[T.int], true], layer_end: [[T.int], true],
    files: [[T.list], true], model: [[T.map], true], codec: [[T.map], true], layers: [[T.list], false],
    compute: [[T.string], false], protocol: [[T.int], false], role: [[T.string], false] },
  ready: { layer_start: [[T.int], true], layer_end: [[T.int], true], load_ms: [[T.int, T.number], true],
    cached: [[T.bool], false], backend: [[T.string], false], downloaded_bytes: [[T.int], false],
    weight_bytes: [[T.int], false], memory_mb: [[T.int, T.number], false] },
  heartbeat: { time: [[T.int, T.number], true] },
  stats: { tokens: [[T.int], true], compute_ms: [[T.int, T.number], true], streams: [[T.int], false],
    memory_used_mb: [[T.int, T.number], false], timing: [[T.map], false], batching: [[T.map], false] },
  release: { stream: [[T.int], true] },
  truncate: { stream: [[T.int], true], length: [[T.int], true] },
  retain: { layer_start: [[T.int], true], layer_end: [[T.int], true] },
  head_mask: { stream: [[T.int], true], layer_start: [[T.int], true], masks: [[T.list], true] },
  layer_stats: { position: [[T.int], true], ratios: [[T.list], true], node_ratio: [[T.int, T.number], true],
    norms: [[T.list], false], head_ratios: [[T.list], false] },
  progress: { done: [[T.int], true], total: [[T.int], true], what: [[T.string], false] },
  error: { code: [[T.string], true], message: [[T.string], true], stream: [[T.int], false],
    step: [[T.int], false], holds: [[T.list], false] },
  leave: { reason: [[T.string], true] },
});

function typeOf(value) {
  if (typeof value === 'boolean') return T.bool;
  if (typeof value === 'number' || typeof value === 'bigint') return Number.isInteger(Number(value)) ? T.int : T.number;
  if (typeof value === 'string') return T.string;
  if (Array.isArray(value)) return T.list;
  if (value && typeof value === 'object' && !(value instanceof Uint8Array)) return T.map;
  return 'other';
}

export function validateControl(message) {
  if (typeOf(message) !== T.map) throw new FrameError('bad-control', 'a control message must be a map');
  const schema = typeof message.type === 'string' ? SCHEMAS[message.type] : undefined;
  if (!schema) throw new FrameError('bad-control', `unknown control message type ${JSON.stringify(message.type)}`);
  for (const [name, [types, required]] of Object.entries(schema)) {
    if (!(name in message)) {
      if (required) throw new FrameError('bad-control', `${message.type}: required field '${name}' is missing`);
      continue;
    }
    const actual = typeOf(message[name]);
    const allowed = types.includes(actual) || (actual === T.int && types.includes(T.number));
    if (!allowed) throw new FrameError('bad-control', `${message.type}: field '${name}' has type ${actual}`);
  }
  return message;
}

export function encodeControl(message, stream = 0) {
  const payload = encode(validateControl(message));
  return packFrame({ kind: Kind.CONTROL, flags: 0, stream, position: 0, rows: 0, columns: 0 }, payload);
}

export function decodeControl(bytes) {
  const { header, payload } = parseFrame(bytes);
  if (header.kind !== Kind.CONTROL) throw new FrameError('bad-kind', 'not a control frame');
  let message;
  try {
    message = decode(payload);
  } catch (error) {
    throw new FrameError('bad-control', `payload is not valid msgpack: ${error.message}`);
  }
  return validateControl(message);
}
