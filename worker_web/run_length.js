// Zero run-length coding of int8 codes in JavaScript. Mirrors protocol/run_length.py;
// byte-identical (protocol/vectors/, `node --test`). Pure.

import { FrameError } from './frames.js';

const MAX_RUN = 128;
const MIN_ZERO_RUN = 3;

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
