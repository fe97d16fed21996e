// Where this tab's share of a step goes: cumulative ms decoding the incoming frame, in its
// layers (onnxruntime) and encoding the RESULT, split into one-row steps ("decode") and
// multi-row steps ("prefill"). Sent as `stats.timing`; the coordinator adds its own parts
// (coordinator/swarm/time_breakdown.py) and the WebSocket hop is what its wait holds beyond these.
// Pure bookkeeping: no clocks, no I/O.

export const PARTS = ['decode', 'layers', 'encode'];

function emptyKind() {
  return { steps: 0, rows: 0, ms: Object.fromEntries(PARTS.map((part) => [part, 0])) };
}

export class StepTiming {
  constructor() {
    this.kinds = { decode: emptyKind(), prefill: emptyKind() };
  }

  /** One step of `rows` rows took these ms ({decode, layers, encode}). */
  record(rows, spent) {
    const kind = this.kinds[rows === 1 ? 'decode' : 'prefill'];
    kind.steps += 1;
    kind.rows += rows;
    for (const part of PARTS) kind.ms[part] += spent[part] || 0;
  }

  /** The `timing` field of a stats message (ms rounded to µs). */
  toMessage() {
    const round = (kind) => ({ steps: kind.steps, rows: kind.rows,
      ms: Object.fromEntries(PARTS.map((part) => [part, Math.round(kind.ms[part] * 1000) / 1000])) });
    return { decode: round(this.kinds.decode), prefill: round(this.kinds.prefill) };
  }
}
