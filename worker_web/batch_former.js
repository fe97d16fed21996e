// Which waiting FORWARD frames a tab runs as one pass: the batch former. Pure: it sees frame
// headers and returns groups of indices; it never decodes payloads or touches onnxruntime.
//
// The frames that reached a tab while it was busy are its next batch (continuous batching:
// a stream joins at whatever step its frame arrives and leaves when it sends no more). Frames
// share a pass when they run the same layers with the same row count and the same boundary
// rounding; a budget bounds a pass's rows and streams, so a long prompt's chunks cannot hold
// the decoding streams' rows for more than one pass. Prompts (PREFILL frames) of different
// lengths share a pass too, each padded to the longest (ort_runtime.js runPass), as long as
// the padding at most doubles the rows computed: prompts that arrive together (a burst of
// requests) then cost one pass per stage instead of one each.
import { Encoding, Flag, StepKind } from './codec.js';

export const PASS_ROWS = 256;     // rows one pass may run (decode rows, prefill chunks, drafts)
export const PASS_STREAMS = 32;   // streams one pass may hold

/** What frames must agree on to share a pass (a prompt's row count need not agree). */
export function passKey(header) {
  const rounding = (header.flags & Flag.ROUND_LAYERS) && header.encoding !== Encoding.FLOAT32
    ? `${header.encoding}/${header.block}` : '-';
  const rows = header.stepKind === StepKind.PREFILL ? 'prompt' : header.rows;
  return `${header.layerStart}:${header.layerEnd}:${rows}:${rounding}`;
}

/** Rows a pass computes with one more frame of `rows` rows: every entry padded to the most. */
function paddedRows(pass, rows) { return (pass.indices.length + 1) * Math.max(pass.most, rows); }

/**
 * Groups of indices into `headers` (arrival order, distinct streams), each one pass, in the
 * order their first frames arrived. `batches` false (a model whose streams cannot share a
 * pass bitwise, ort_runtime.js batchesStreams): one frame per pass. Echoes (no layers) pass alone.
 */
export function formPasses(headers, { batches = true, rows = PASS_ROWS, streams = PASS_STREAMS } = {}) {
  const passes = [];
  const open = new Map();   // key -> the pass still taking frames
  headers.forEach((header, index) => {
    const echo = header.layerStart === header.layerEnd;
    const key = passKey(header);
    const pass = batches && !echo ? open.get(key) : undefined;
    if (pass && paddedRows(pass, header.rows) <= Math.min(rows, 2 * (pass.rows + header.rows))
      && pass.indices.length < streams) {
      pass.indices.push(index);
      pass.rows += header.rows;
      pass.most = Math.max(pass.most, header.rows);
      return;
    }
    const fresh = { indices: [index], rows: header.rows, most: header.rows };
    passes.push(fresh);
    if (batches && !echo) open.set(key, fresh);
  });
  return passes.map((pass) => pass.indices);
}
