// Which waiting FORWARD frames a tab runs as one pass: the batch former. Pure: it sees frame
// headers and returns groups of indices; it never decodes payloads or touches onnxruntime.
//
// The frames that reached a tab while it was busy are its next batch (continuous batching:
// a stream joins at whatever step its frame arrives and leaves when it sends no more). Frames
// share a pass when they run the same layers with the same row count and the same boundary
// rounding; a budget bounds a pass's rows and streams, so a long prompt's chunks cannot hold
// the decoding streams' rows for more than one pass.
import { Encoding, Flag } from './codec.js';

export const PASS_ROWS = 256;     // rows one pass may run (decode rows, prefill chunks, drafts)
export const PASS_STREAMS = 32;   // streams one pass may hold

/** What frames must agree on to share a pass. */
export function passKey(header) {
  const rounding = (header.flags & Flag.ROUND_LAYERS) && header.encoding !== Encoding.FLOAT32
    ? `${header.encoding}/${header.block}` : '-';
  return `${header.layerStart}:${header.layerEnd}:${header.rows}:${rounding}`;
}

/**
 * Groups of indices into `headers` (arrival order, distinct streams), each one pass, in the
 * order their first frames arrived. Echoes (no layers) pass alone.
 */
export function formPasses(headers, { rows = PASS_ROWS, streams = PASS_STREAMS } = {}) {
  const passes = [];
  const open = new Map();   // key -> the pass still taking frames
  headers.forEach((header, index) => {
    const echo = header.layerStart === header.layerEnd;
    const key = passKey(header);
    const pass = echo ? undefined : open.get(key);
    if (pass && pass.rows + header.rows <= rows && pass.indices.length < streams) {
      pass.indices.push(index);
      pass.rows += header.rows;
      return;
    }
    const fresh = { indices: [index], rows: header.rows };
    passes.push(fresh);
    if (!echo) open.set(key, fresh);
  });
  return passes.map((pass) => pass.indices);
}
