// Owns onnxruntime-web in a worker tab: loading the library, choosing the backend,
// creating sessions from shard bytes and running them. Knows nothing of the wire
// protocol or the coordinator.

import { batchPositionsTensor, cacheOfEntry, cachedPositions, floatTensor, padCaches, positionsTensor } from './batch_tensors.js';
import { externalLocations } from './onnx_inline.js';
import { headContributions, updateRatio } from './update_ratios.js';

const ORT_BASE = '/ort/';

let ortModule = null;

/** Load onnxruntime-web once per page; `webgpu` picks the build with the WebGPU backend. */
export async function loadOrt({ webgpu = false, threads = 1 } = {}) {
  if (!ortModule) {
    const file = webgpu ? 'ort.webgpu.min.mjs' : 'ort.wasm.min.mjs';
    ortModule = await import(ORT_BASE + file);
    ortModule.env.wasm.wasmPaths = ORT_BASE;
    ortModule.env.wasm.numThreads = crossOriginIsolated ? threads : 1;
    ortModule.env.logLevel = 'error';
  }
  return ortModule;
}

/** A usable (non-fallback) WebGPU adapter, or null. A software adapter does not count. */
export async function realGpuAdapter({ allowFallback = false } = {}) {
  if (!('gpu' in navigator)) return null;
  try {
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return null;
    const info = adapter.info || {};
    const software = adapter.isFallbackAdapter || /swiftshader|llvmpipe|software/i.test(
      `${info.vendor} ${info.architecture} ${info.description}`);
    return software && !allowFallback ? null : adapter;
  } catch (error) {
    // requestAdapter rejects when WebGPU is blocklisted: treat as no GPU.
    return null;
  }
}

/**
 * Create a session from an ONNX model's bytes on the given backend ('wasm' or 'webgpu');
 * `externalData` ([{path, data}]) supplies the initializers the graph keeps outside it.
 */
export async function createSession(ort, modelBytes, backend, externalData = undefined) {
  return ort.InferenceSession.create(modelBytes, {
    executionProviders: [backend],
    graphOptimizationLevel: 'all',
    // No per-session arena: each would keep its largest pass's intermediates, once per layer
    // session; freed memory goes back to the one WASM heap for the next session to reuse.
    enableCpuMemArena: false,
    ...(externalData ? { externalData } : {}),
  });
}

/** Whether an error from onnxruntime-web (or the JS engine) means the tab's memory ran out. */
export function isOutOfMemory(error) {
  return error instanceof RangeError
    || /out of memory|allocation failed|failed to allocate|could not allocate|bad_alloc|Aborted\(\)/i
      .test(String(error && error.message ? error.message : error));
}

/** The layer index a shard file belongs to ('layer_07.kv.onnx' -> 7), or null. */
export function layerOfFile(name) {
  const match = /^layer_(\d+)\./.exec(name);
  return match ? Number(match[1]) : null;
}

/**
 * The layers a tab holds (any set: an assignment adds layers, `retain` drops the rest),
 * with one KV cache per stream and layer. A FORWARD names a contiguous range of held
 * layers; a skipped layer (skip-mask bit set) passes the hidden state through and runs
 * its K/V-only graph, so every cache keeps one entry per position.
 */
export class LayerRunner {
  constructor(ort, backend, model, compute = 'float32') {
    Object.assign(this, { ort, backend, model, compute });
    this.layers = new Map();    // layer index -> {full, kvOnly}
    this.streams = new Map();   // stream -> Map(layer index -> {key, value})
    this.headMasks = new Map(); // stream -> Map(layer index -> head_mask tensor (heads,))
    this.allHeads = floatTensor(ort, new Float32Array(model.heads).fill(1), [model.heads]);
  }

  holds(start, end) {
    for (let layer = start; layer < end; layer += 1) if (!this.layers.has(layer)) return false;
    return true;
  }

  /** Layer indices of [start, end) not held yet. */
  missing(start, end) {
    const out = [];
    for (let layer = start; layer < end; layer += 1) if (!this.layers.has(layer)) out.push(layer);
    return out;
  }

  /**
   * Create a layer's two sessions; `weights` is its weights file's initializer data (compact
   * shards: Map of 'layer_NN.<initializer>[#int8|#scales]' -> float32 or int8 bytes;
   * int8_weights.js) or undefined (float32 shards). Each graph is given, as onnxruntime-web
   * externalData, the entries it names and no others. (Putting them inside the graph's bytes
   * instead, onnx_inline.js, made the WASM heap grow ~12 MB more per Qwen2.5 layer: 513 MB for
   * 7 layers against 431, bench/results/tab_memory.json.) Returns the weight bytes the full
   * graph holds. On failure (e.g. out of memory) nothing of the layer is kept.
   */
  async loadLayer(index, fullBytes, kvOnlyBytes, weights = undefined) {
    const given = (bytes) => (weights ? externalLocations(bytes).map((path) => {
      const data = weights.get(path);
      if (!data) throw new Error(`the weights file has no data for ${path}`);
      return { path, data };
    }) : undefined);
    const fullData = given(fullBytes);
    const size = fullData ? fullData.reduce((sum, entry) => sum + entry.data.length, 0) : fullBytes.length;
    const fullSession = await createSession(this.ort, fullBytes, this.backend, fullData);
    let kvOnlySession;
    try {
      kvOnlySession = await createSession(this.ort, kvOnlyBytes, this.backend, given(kvOnlyBytes));
    } catch (error) {
      await fullSession.release();
      throw error;
    }
    this.layers.set(index, { full: fullSession, kvOnly: kvOnlySession });
    return size;
  }

  /**
   * Run each of these layers' graphs once on a throwaway row, so the first real step after
   * a takeover or a plan switch does not pay onnxruntime's first-run cost (a stall).
   */
  async warmUp(layers) {
    const row = new Float32Array(this.model.hidden);
    for (let i = 0; i < row.length; i += 1) row[i] = Math.sin(i);
    const empty = this.emptyCache();
    for (const layer of layers) {
      const feeds = { hidden: floatTensor(this.ort, row, [1, 1, this.model.hidden]), positions: positionsTensor(this.ort, 0, 1),
        past_key: empty.key, past_value: empty.value };
      const { full, kvOnly } = this.layers.get(layer);
      await kvOnly.run(feeds);
      await full.run({ ...feeds, head_mask: this.allHeads });
    }
  }

  /** Drop every held layer outside [start, end), with its caches. */
  async retain(start, end) {
    for (const [index, { full, kvOnly }] of [...this.layers]) {
      if (index >= start && index < end) continue;
      this.layers.delete(index);
      for (const caches of this.streams.values()) caches.delete(index);
      await full.release();
      await kvOnly.release();
    }
  }

  /** Head masks for a stream from the coordinator's head_mask message; [] keeps every head. */
  setHeadMasks(stream, layerStart, masks) {
    const tensors = new Map();
    masks.forEach((mask, offset) => {
      if (mask.length === this.model.heads) {
        tensors.set(layerStart + offset, floatTensor(this.ort, Float32Array.from(mask, Number), [this.model.heads]));
      }
    });
    this.headMasks.set(stream, tensors);
  }

  /** Positions the stream's caches hold for [start, end) (0 for a new stream); throws if they disagree. */
  cacheLength(stream, start, end) {
    const caches = this.streams.get(stream);
    const lengths = new Set();
    for (let layer = start; layer < end; layer += 1) {
      const cache = caches && caches.get(layer);
      lengths.add(cache ? cache.length : 0);
    }
    if (lengths.size > 1) throw new Error(`stream ${stream}'s caches disagree across layers`);
    return lengths.size ? [...lengths][0] : 0;
  }

  /** Cut every cache of the stream to its first `length` positions. */
  truncate(stream, length) {
    const caches = this.streams.get(stream);
    if (!caches) { if (length) throw new Error(`stream ${stream} has no caches`); return; }
    for (const [layer, cache] of caches) {
      if (length > cache.length) throw new RangeError(`cannot keep ${length} of ${cache.length} positions`);
      caches.set(layer, this.ownCache({ ...cache, length }));
    }
  }

  /**
   * A stream's cache of one layer is {key, value, entry, length}: its slots are the first
   * `length` of batch entry `entry` of the K/V tensors, which a batched pass's streams share
   * (the pass's present_* as it came out: no copy per stream). ownCache copies it out into
   * tensors of its own, (1, kvHeads, length, headDim); a cache that is that already is kept.
   */
  ownCache(cache) {
    const { key, value, entry, length } = cache;
    if (key.dims[0] === 1 && key.dims[2] === length) return cache;
    const { kv_heads: kvHeads, head_dim: headDim } = this.model;
    const dims = [1, kvHeads, length, headDim];
    const total = cachedPositions(key.dims);
    return { key: floatTensor(this.ort, cacheOfEntry(key.data, entry, kvHeads, total, headDim, length), dims),
      value: floatTensor(this.ort, cacheOfEntry(value.data, entry, kvHeads, total, headDim, length), dims),
      entry: 0, length };
  }

  /** A stream's cache of a layer as its own (1, kvHeads, length, headDim) data: {key, value} Float32Arrays. */
  cacheData(stream, layer) {
    const cache = this.ownCache(this.streams.get(stream).get(layer));
    return { key: cache.key.data, value: cache.value.data };
  }

  emptyCache() {
    const dims = [1, this.model.kv_heads, 0, this.model.head_dim];
    return { key: floatTensor(this.ort, new Float32Array(0), dims), value: floatTensor(this.ort, new Float32Array(0), dims),
      entry: 0, length: 0 };
  }

  /**
   * Layers [layerStart, layerEnd) (all held) on hidden: Float32Array (rows * hidden) at
   * positions position..position+rows-1. Returns {output, ratios, norms, nodeRatio,
   * headRatios}; when `measure` (one-row frames only) ratios holds r = |update| / |input| of
   * each layer that ran (the router's input), and, when sampleHeads, headRatios each head's
   * contribution norm / |input| per layer that ran. roundBoundary(values, rows), when given,
   * rounds the hidden state at each layer boundary inside the range (not after the last).
   */
  async forward(stream, hidden, rows, position, skipMask, layerStart, layerEnd, measure = false, sampleHeads = false,
    roundBoundary = null) {
    const [result] = await this.forwardBatch([{ stream, hidden, position, skipMask, measure, sampleHeads }],
      rows, layerStart, layerEnd, roundBoundary);
    return result;
  }

  /**
   * Several streams' frames (each {stream, hidden, position, skipMask, measure, sampleHeads},
   * every one `rows` rows, distinct streams) through layers [layerStart, layerEnd) as one
   * pass per layer: the projections and MLP over all their rows at once, attention against
   * each stream's own cache (the graphs' batch axis, shards/graphs.py). Streams that skip a
   * layer, or hold other head masks, run it in a pass of their own. Each result is bitwise
   * what `forward` alone gives (tests/unit/test_stream_batching.py; the tab checks it in
   * bench/stream_batching.py). Returns one `forward` result per entry, in order.
   */
  async forwardBatch(entries, rows, layerStart, layerEnd, roundBoundary = null) {
    const { hidden: columns } = this.model;
    const states = entries.map((entry) => entry.hidden);
    const results = entries.map(() => ({ ratios: [], norms: [], headRatios: [] }));
    const caches = entries.map(({ stream }) => {
      if (!this.streams.has(stream)) this.streams.set(stream, new Map());
      return this.streams.get(stream);
    });
    for (let layer = layerStart; layer < layerEnd; layer += 1) {
      if (roundBoundary && layer > layerStart) {
        // every layer boundary inside the stage is rounded as a cut there would be (the caller's rule)
        for (let i = 0; i < states.length; i += 1) states[i] = roundBoundary(states[i], rows);
      }
      for (const group of this.passGroups(entries, layer, layerStart)) {
        const out = await this.runPass(group, layer, rows, states, caches, entries);
        group.members.forEach((index, member) => {
          if (group.skipped) return;
          const output = out.hidden_out.data.subarray(member * rows * columns, (member + 1) * rows * columns);
          const entry = entries[index];
          if (entry.measure && rows === 1) {
            const { ratio, norm, inputNorm } = updateRatio(states[index], output);
            results[index].ratios.push(ratio);
            results[index].norms.push(norm);
            if (entry.sampleHeads) {
              const energies = out.head_energy.data.subarray(member * this.model.heads, (member + 1) * this.model.heads);
              results[index].headRatios.push(headContributions(inputNorm, energies));
            }
          }
          states[index] = output;
        });
      }
    }
    return entries.map((entry, index) => ({ ...results[index], output: states[index],
      nodeRatio: entry.measure && rows === 1 ? updateRatio(entry.hidden, states[index]).ratio : 0 }));
  }

  /** The entries that share layer `layer`'s pass: same skip bit and the same head mask. */
  passGroups(entries, layer, layerStart) {
    const groups = new Map();
    entries.forEach((entry, index) => {
      const skipped = ((entry.skipMask >> BigInt(layer - layerStart)) & 1n) === 1n;
      const masks = this.headMasks.get(entry.stream);
      const mask = skipped ? null : (masks && masks.get(layer)) || this.allHeads;
      if (!groups.has(mask)) groups.set(mask, { skipped, mask, members: [] });
      groups.get(mask).members.push(index);
    });
    return groups.values();
  }

  /**
   * One layer's graph over a group's streams: one batch entry per stream. A lone stream's
   * cache goes in as it is; streams that ran the last pass together, in the same order, pass
   * its present_* back as their past (no copy); otherwise their caches are padded to the
   * longest. Stores each stream's new cache (an entry of this pass's present_*) and returns
   * the graph's outputs (hidden_out (batch, rows, hidden) where it ran in full).
   */
  async runPass(group, layer, rows, states, caches, entries) {
    const { hidden: columns, kv_heads: kvHeads, head_dim: headDim } = this.model;
    const { members } = group;
    const held = members.map((index) => caches[index].get(layer) || this.emptyCache());
    const lengths = held.map((cache) => cache.length);
    const hidden = new Float32Array(members.length * rows * columns);
    members.forEach((index, member) => hidden.set(states[index], member * rows * columns));
    const feeds = { hidden: floatTensor(this.ort, hidden, [members.length, rows, columns]),
      positions: batchPositionsTensor(this.ort, members.map((index) => entries[index].position), rows) };
    const shared = held[0].key.dims[0] === members.length
      && held.every((cache, member) => cache.key === held[0].key && cache.entry === member);
    if (members.length === 1 || shared) {
      const past = members.length === 1 ? this.ownCache(held[0]) : held[0];
      Object.assign(feeds, { past_key: past.key, past_value: past.value });
    } else {
      const dims = [members.length, kvHeads, Math.max(...lengths), headDim];
      const sources = (name) => held.map((cache) => ({ data: cache[name].data, entry: cache.entry,
        total: cachedPositions(cache[name].dims) }));
      feeds.past_key = floatTensor(this.ort, padCaches(sources('key'), lengths, kvHeads, headDim), dims);
      feeds.past_value = floatTensor(this.ort, padCaches(sources('value'), lengths, kvHeads, headDim), dims);
    }
    if (!group.skipped) feeds.head_mask = group.mask;
    const graphs = this.layers.get(layer);
    const out = await (group.skipped ? graphs.kvOnly : graphs.full).run(feeds);
    members.forEach((index, member) => caches[index].set(layer, { key: out.present_key, value: out.present_value,
      entry: member, length: lengths[member] + rows }));
    return out;
  }

  release(stream) { this.streams.delete(stream); this.headMasks.delete(stream); }

  async dispose() {
    for (const { full, kvOnly } of this.layers.values()) { await full.release(); await kvOnly.release(); }
    this.layers.clear();
    this.streams.clear();
    this.headMasks.clear();
  }
}
