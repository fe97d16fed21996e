// What a worker tab computes for a FORWARD frame and what it answers, as data: the entry the
// LayerRunner runs (router statistics only for a one-row frame that asks for them), the
// rounding at layer boundaries a ROUND_LAYERS frame asks for, the RESULT's route and codec
// settings (the frame's own), and the layer_stats message that goes before it.
// Pure: no socket, no onnxruntime; worker.js does the I/O.

import { Encoding, Flag, Kind, roundTrip } from './codec.js';
import { HEAD_SAMPLE_INTERVAL } from './control_messages.js';

const DEFAULT_KEY_INTERVAL = 64;   // with delta coding: a key row at least this often (protocol/SPEC.md)

/**
 * The LayerRunner entry for a decoded frame. Router statistics cost a norm per layer: only a
 * one-row frame that asks (REPORT) and wants a reply gets them, and head ratios only at
 * every HEAD_SAMPLE_INTERVAL-th position. An echo (no layers) measures nothing.
 */
export function runnerEntry(header, hidden, echo = false) {
  const report = !echo && header.rows === 1 && (header.flags & Flag.REPORT) !== 0 && !(header.flags & Flag.NO_REPLY);
  return { stream: header.stream, hidden, position: header.position, skipMask: header.skipMask,
    measure: report, sampleHeads: report && header.position % HEAD_SAMPLE_INTERVAL === 0 };
}

/** With ROUND_LAYERS: the frame encoding's rounding at every layer boundary inside the stage (else null). */
export function boundaryRounding(header, columns) {
  if (!(header.flags & Flag.ROUND_LAYERS) || header.encoding === Encoding.FLOAT32) return null;
  return (values, rows) => roundTrip(values, rows, columns, header.encoding, header.block);
}

/** The RESULT answers in the frame's own encoding, block, delta and rounding. */
export function resultSettings(header, keyInterval = DEFAULT_KEY_INTERVAL) {
  return { encoding: header.encoding, block: header.block, delta: (header.flags & Flag.DELTA) !== 0,
    roundLayers: (header.flags & Flag.ROUND_LAYERS) !== 0, runLength: header.encoding === Encoding.INT8_BLOCK,
    keyInterval: keyInterval || DEFAULT_KEY_INTERVAL };
}

/** The RESULT goes back with the frame's stream, position, layers, skips and step. */
export function resultRoute(header) {
  return { kind: Kind.RESULT, stream: header.stream, position: header.position, layerStart: header.layerStart,
    layerEnd: header.layerEnd, skipMask: header.skipMask, step: header.step, stepKind: header.stepKind };
}

/** What the router learns from this step (sent before the RESULT), for an entry that measured. */
export function layerStatsMessage(header, entry, result) {
  const stats = { type: 'layer_stats', position: header.position, ratios: result.ratios, norms: result.norms,
    node_ratio: result.nodeRatio };
  if (entry.sampleHeads) stats.head_ratios = result.headRatios;
  return stats;
}
