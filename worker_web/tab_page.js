// What the tab's page shows a person, and what it finds out about the device it runs on:
// which backend to use, a relative speed figure, how much memory it gives. Owns the DOM;
// holds no state of its own (the page is the state). worker.js owns the connection.
import { realGpuAdapter } from './ort_runtime.js';

export const ui = {
  set(id, text) { const node = document.getElementById(id); if (node) node.textContent = text; },
  log(text) {
    const list = document.getElementById('log');
    if (!list) return;
    const item = document.createElement('li');
    item.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
    list.prepend(item);
    while (list.children.length > 50) list.lastChild.remove();
  },
  progress(done, total) {
    const bar = document.getElementById('progress');
    if (bar) { bar.max = total || 1; bar.value = done; bar.hidden = done >= total; }
  },
};

/** WebGPU when the page asks for it (or `auto`) and a real adapter is there, else WASM. */
export async function chooseBackend(params) {
  const wanted = params.get('backend') || 'auto';
  const allowFallback = params.get('allowFallbackGpu') === '1';
  if (wanted === 'wasm') return 'wasm';
  const adapter = await realGpuAdapter({ allowFallback });
  if (adapter) return 'webgpu';
  if (wanted === 'webgpu') ui.log('no usable WebGPU adapter: using WASM');
  return 'wasm';
}

/**
 * A small fixed matmul, best of 6 runs spread over ~1 s: a relative speed figure for
 * the planner. Spreading the runs lets them miss bursts of other work (tabs starting
 * together on one machine measured 4x apart with back-to-back runs).
 */
export async function benchmarkMs() {
  const n = 64;
  const a = new Float32Array(n * n).fill(1.0001);
  const b = new Float32Array(n * n).fill(0.9999);
  const c = new Float32Array(n * n);
  let best = Infinity;
  for (let run = 0; run < 6; run += 1) {
    const started = performance.now();
    for (let repeat = 0; repeat < 4; repeat += 1) {
      for (let i = 0; i < n; i += 1) for (let k = 0; k < n; k += 1) {
        const x = a[i * n + k];
        for (let j = 0; j < n; j += 1) c[i * n + j] += x * b[k * n + j];
      }
    }
    best = Math.min(best, performance.now() - started);
    await new Promise((resolve) => { setTimeout(resolve, 200); });
  }
  return best;
}

/**
 * The memory this tab gives the swarm, in MB: `?memory=` when the page was opened with it (a
 * phone, or a laptop whose owner wants it to give less), else three quarters of what the
 * device reports, at most 3 GiB (a wasm32 tab addresses 4 GiB in all).
 */
export function offeredMemoryMb(params) {
  const asked = Number(params.get('memory'));
  if (asked > 0) return asked;
  return navigator.deviceMemory ? Math.min(4096, navigator.deviceMemory * 1024) * 0.75 : undefined;
}

/**
 * Threads for onnxruntime-web: `?threads=`, else its own default, min(4, ceil(cores / 2)), when
 * the page may use threads at all (cross-origin isolated). Measured on 2 cores
 * (bench/results/time_breakdown_threads2.json): 2 threads per tab were slower than 1 (14.6 vs
 * 15.7 tok/s through 2 tabs), which this gives there.
 */
export function threadCount(params) {
  const defaultThreads = crossOriginIsolated ? Math.min(4, Math.ceil((navigator.hardwareConcurrency || 1) / 2)) : 1;
  return Number(params.get('threads') || defaultThreads);
}
