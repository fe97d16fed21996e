// The tensors a batched pass feeds and reads: positions per entry, each stream's cache
// padded to the longest (zeros after), and one entry's cache cut back out of a present
// tensor. The layout is the layer graphs' batch axis (shards/stream_batch.py mirrors it in
// Python). Pure: builds arrays and onnxruntime-web Tensor objects, runs nothing.

/** Float32 tensor from a Float32Array and dims. */
export function floatTensor(ort, data, dims) {
  return new ort.Tensor('float32', data, dims);
}

/** Int64 positions tensor (1, n) from a start position. */
export function positionsTensor(ort, start, count) {
  const values = new BigInt64Array(count);
  for (let i = 0; i < count; i += 1) values[i] = BigInt(start + i);
  return new ort.Tensor('int64', values, [1, count]);
}

/** Int64 positions (batch, rows): entry b's rows start at starts[b] (where its cache ends). */
export function batchPositionsTensor(ort, starts, rows) {
  const values = new BigInt64Array(starts.length * rows);
  starts.forEach((start, entry) => { for (let i = 0; i < rows; i += 1) values[entry * rows + i] = BigInt(start + i); });
  return new ort.Tensor('int64', values, [starts.length, rows]);
}

/**
 * (batch, kvHeads, longest, headDim) data from each stream's cache: sources[b] = {data, entry,
 * total}, its slots being the first lengths[b] of entry `entry` of a (n, kvHeads, total,
 * headDim) tensor's data; zeros after each up to the longest (shards/stream_batch.py pad_caches).
 */
export function padCaches(sources, lengths, kvHeads, headDim) {
  const longest = Math.max(...lengths);
  const out = new Float32Array(sources.length * kvHeads * longest * headDim);
  sources.forEach(({ data, entry, total }, b) => {
    for (let head = 0; head < kvHeads; head += 1) {
      const from = ((entry * kvHeads + head) * total) * headDim;
      out.set(data.subarray(from, from + lengths[b] * headDim), ((b * kvHeads + head) * longest) * headDim);
    }
  });
  return out;
}

/** Entry `entry`'s first `length` slots of a (batch, kvHeads, total, headDim) present tensor's data, (1, kvHeads, length, headDim). */
export function cacheOfEntry(data, entry, kvHeads, total, headDim, length) {
  const out = new Float32Array(kvHeads * length * headDim);
  for (let head = 0; head < kvHeads; head += 1) {
    const from = ((entry * kvHeads + head) * total) * headDim;
    out.set(data.subarray(from, from + length * headDim), head * length * headDim);
  }
  return out;
}

/** Positions a cached K or V tensor's data holds: dims (1, kvHeads, positions, headDim). */
export function cachedPositions(dims) { return dims[2]; }
