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
