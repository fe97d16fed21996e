// Owns onnxruntime-web in a worker tab: loading the library, choosing the backend,
// creating sessions from shard bytes and running them. Knows nothing of the wire
// protocol or the coordinator.

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

/** Create a session from an ONNX model's bytes on the given backend ('wasm' or 'webgpu'). */
export async function createSession(ort, modelBytes, backend) {
  return ort.InferenceSession.create(modelBytes, {
    executionProviders: [backend],
    graphOptimizationLevel: 'all',
  });
}

/** |after - before| / |before|, |after| and |before| over one row. */
export function updateRatio(before, after) {
  let change = 0;
  let base = 0;
  let size = 0;
  for (let i = 0; i < before.length; i += 1) {
    const difference = after[i] - before[i];
    change += difference * difference;
    base += before[i] * before[i];
    size += after[i] * after[i];
  }
  return { ratio: base > 0 ? Math.sqrt(change / base) : 0, norm: Math.sqrt(size), inputNorm: Math.sqrt(base) };
}

/** Each head's contribution norm over the layer's input norm, from the graph's squared norms (one row). */
export function headContributions(inputNorm, energies) {
  const scale = inputNorm > 0 ? 1 / inputNorm : 0;
  return Array.from(energies, (energy) => Math.sqrt(Math.max(energy, 0)) * scale);
}

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

/**
 * Layers [layerStart, layerEnd) of a model in this tab, with one KV cache per stream.
 * A skipped layer (skip-mask bit set) passes the hidden state through and runs its
 * K/V-only graph, so every cache keeps one entry per position.
 */
export class LayerRunner {
  constructor(ort, backend, model, layerStart, layerEnd) {
    Object.assign(this, { ort, backend, model, layerStart, layerEnd });
    this.layers = [];      // [{full, kvOnly}] by layer - layerStart
    this.streams = new Map(); // stream -> [{key, value}] by layer - layerStart
    this.headMasks = new Map(); // stream -> [head_mask tensor (heads,)] by layer - layerStart
    this.allHeads = floatTensor(ort, new Float32Array(model.heads).fill(1), [model.heads]);
  }

  /** Head masks for a stream from the coordinator's head_mask message; [] keeps every head. */
  setHeadMasks(stream, layerStart, masks) {
    const tensors = this.layers.map(() => this.allHeads);
    masks.forEach((mask, offset) => {
      const index = layerStart + offset - this.layerStart;
      if (index >= 0 && index < tensors.length && mask.length === this.model.heads) {
        tensors[index] = floatTensor(this.ort, Float32Array.from(mask, Number), [this.model.heads]);
      }
    });
    this.headMasks.set(stream, tensors);
  }

  async load(files, onLoaded) {
    for (let layer = this.layerStart; layer < this.layerEnd; layer += 1) {
      const name = `layer_${String(layer).padStart(2, '0')}`;
      const full = await createSession(this.ort, files.get(`${name}.onnx`), this.backend);
      const kvOnly = await createSession(this.ort, files.get(`${name}.kv.onnx`), this.backend);
      this.layers.push({ full, kvOnly });
      onLoaded(layer - this.layerStart + 1, this.layerEnd - this.layerStart);
    }
  }

  emptyCache() {
    const dims = [1, this.model.kv_heads, 0, this.model.head_dim];
    return { key: floatTensor(this.ort, new Float32Array(0), dims), value: floatTensor(this.ort, new Float32Array(0), dims) };
  }

  /**
   * hidden: Float32Array (rows * hidden) at positions position..position+rows-1.
   * Returns {output, ratios, norms, nodeRatio, headRatios}; for one-row frames ratios holds
   * r = |update| / |input| of each layer that ran (the router's input), and, when
   * sampleHeads, headRatios each head's contribution norm / |input| per layer that ran.
   */
  async forward(stream, hidden, rows, position, skipMask, sampleHeads = false) {
    let caches = this.streams.get(stream);
    if (!caches) {
      caches = this.layers.map(() => this.emptyCache());
      this.streams.set(stream, caches);
    }
    let state = floatTensor(this.ort, hidden, [1, rows, this.model.hidden]);
    const positions = positionsTensor(this.ort, position, rows);
    const ratios = [];
    const norms = [];
    const headRatios = [];
    const masks = this.headMasks.get(stream);
    for (let index = 0; index < this.layers.length; index += 1) {
      const cache = caches[index];
      const feeds = { hidden: state, positions, past_key: cache.key, past_value: cache.value };
      const skipped = (skipMask >> BigInt(index)) & 1n;
      if (!skipped) feeds.head_mask = masks ? masks[index] : this.allHeads;
      const session = skipped ? this.layers[index].kvOnly : this.layers[index].full;
      const out = await session.run(feeds);
      if (!skipped) {
        if (rows === 1) {
          const { ratio, norm, inputNorm } = updateRatio(state.data, out.hidden_out.data);
          ratios.push(ratio);
          norms.push(norm);
          if (sampleHeads) headRatios.push(headContributions(inputNorm, out.head_energy.data));
        }
        state = out.hidden_out;
      }
      caches[index] = { key: out.present_key, value: out.present_value };
    }
    const nodeRatio = rows === 1 ? updateRatio(hidden, state.data).ratio : 0;
    return { output: state.data, ratios, norms, nodeRatio, headRatios };
  }

  release(stream) { this.streams.delete(stream); this.headMasks.delete(stream); }

  async dispose() {
    for (const { full, kvOnly } of this.layers) { await full.release(); await kvOnly.release(); }
    this.layers = [];
    this.streams.clear();
    this.headMasks.clear();
  }
}
