// The worker tab's dispatcher: connects to the coordinator, answers control messages,
// runs FORWARD frames through its LayerRunner in arrival order, and shows a person what
// it is doing. Owns the WebSocket and the page; codec.js owns bytes, ort_runtime.js owns
// onnxruntime, shard_store.js owns shard files.
//
// Frames and everything that touches the runner's state run one at a time on `queue`.
// An assignment downloads outside it (so the tab keeps serving its current layers while
// it loads new ones) and creates each new layer's sessions as one queued task; the layers
// it held before stay until the coordinator says `retain`.
import { decodeActivation, encodeActivation, Encoding, Flag, FrameError, Kind, newStreamState, parseFrame, roundTrip, VERSION } from './codec.js';
import { decodeControl, encodeControl, HEAD_SAMPLE_INTERVAL } from './control_messages.js';
import { isOutOfMemory, layerOfFile, LayerRunner, loadOrt, realGpuAdapter } from './ort_runtime.js';
import { fetchShardFiles } from './shard_store.js';
import { layerInitializers } from './int8_weights.js';
import { StepTiming } from './step_timing.js';

const params = new URLSearchParams(location.search);
const MEMORY_REPORT_QUIET_MS = 5000;   // re-measure memory this long after the last frame
const ui = {
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

const worker = {
  name: params.get('name') || sessionStorage.getItem('tabswarm-name') || `tab-${Math.random().toString(36).slice(2, 7)}`,
  backend: 'wasm', threads: 1, ort: null, runner: null, assignment: null,
  socket: null, retryMs: 1000, queue: Promise.resolve(), assignments: Promise.resolve(), leaving: false,
  decoders: new Map(), encoders: new Map(), tokens: 0, computeMs: 0, lastStats: 0, memoryTimer: undefined,
  timing: new StepTiming(),   // ms per part of the steps served (stats.timing)
  weightBytes: new Map(),   // layer -> float32 weight bytes its sessions were given
};
sessionStorage.setItem('tabswarm-name', worker.name);

async function chooseBackend() {
  const wanted = params.get('backend') || 'auto';
  const allowFallback = params.get('allowFallbackGpu') === '1';
  if (wanted === 'wasm') return 'wasm';
  const adapter = await realGpuAdapter({ allowFallback });
  if (adapter) return 'webgpu';
  if (wanted === 'webgpu') ui.log('no usable WebGPU adapter: using WASM');
  return 'wasm';
}

async function benchmarkMs() {
  // A small fixed matmul, best of 6 runs spread over ~1 s: a relative speed figure for
  // the planner. Spreading the runs lets them miss bursts of other work (tabs starting
  // together on one machine measured 4x apart with back-to-back runs).
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

function send(bytes) {
  if (worker.socket && worker.socket.readyState === WebSocket.OPEN) worker.socket.send(bytes);
}
const sendControl = (message, stream = 0) => send(encodeControl(message, stream));

/**
 * Run `task` on the frame queue (after every frame already received); resolves with its result.
 * A task that throws is reported (`fail`) and the queue goes on: a bare `.then()` on the queue
 * would leave it rejected, and every later frame would be skipped.
 */
function enqueue(task) {
  const run = worker.queue.then(task);
  worker.queue = run.catch(fail);
  return run;
}

function sameModel(runner, model, compute) {
  return runner && runner.model.shard_sha256 === model.shard_sha256 && runner.model.converter === model.converter
    && runner.compute === compute;
}

async function onAssign(message) {
  const { layer_start: start, layer_end: end, model } = message;
  const compute = message.compute || 'float32';
  worker.assignment = message;
  if (!sameModel(worker.runner, model, compute)) {
    await enqueue(async () => {
      if (worker.runner) await worker.runner.dispose();
      worker.runner = new LayerRunner(worker.ort, worker.backend, model, compute);
    });
  }
  const runner = worker.runner;
  const missing = new Set(runner.missing(start, end));
  const role = message.role === 'standby' ? ' (standby replica)' : '';
  if (!missing.size) {
    ui.set('layers', `[${start}, ${end})${role} — ready`);
    sendControl({ type: 'ready', layer_start: start, layer_end: end, load_ms: 0, cached: true, backend: worker.backend,
      ...footprint(0) });
    return;
  }
  ui.set('layers', `[${start}, ${end})${role} — loading`);
  ui.log(`assigned layers [${start}, ${end})${role} of ${model.name} (${compute}); loading ${missing.size}`);
  const started = performance.now();
  const loaded = await loadLayers(runner, message, [...missing].sort((x, y) => x - y), role);
  if (!loaded) return;
  const { cached, downloaded } = loaded;
  await enqueue(() => runner.warmUp([...missing]));
  const loadMs = performance.now() - started;
  ui.set('layers', `[${start}, ${end})${role} — ready (${(loadMs / 1000).toFixed(1)} s${cached ? ', from cache' : ''})`);
  ui.log(`ready: ${missing.size} layers in ${(loadMs / 1000).toFixed(1)} s${cached ? ' (cached)' : ''}`);
  sendControl({ type: 'ready', layer_start: start, layer_end: end, load_ms: loadMs, cached, backend: worker.backend,
    ...footprint(downloaded) });
  reportMemoryUsed();
}

/**
 * Download and create the given layers one at a time (so a tab holds at most one layer's
 * files and decoded weights besides the sessions it keeps); returns {cached, downloaded},
 * or null when memory ran out (the coordinator was told what this tab holds).
 */
async function loadLayers(runner, message, layers, role) {
  const { layer_start: start, layer_end: end, compute = 'float32' } = message;
  const entries = new Map((message.layers || []).map((entry) => [entry.index, entry]));
  const byLayer = new Map(layers.map((layer) => [layer, message.files.filter((file) => layerOfFile(file.name) === layer)]));
  const total = [...byLayer.values()].flat().reduce((sum, file) => sum + file.size, 0);
  let before = 0;
  let lastReport = 0;
  let cached = true;
  let downloaded = 0;
  for (const layer of layers) {
    const name = `layer_${String(layer).padStart(2, '0')}`;
    const entry = entries.get(layer) || { graph: `${name}.onnx`, kv_graph: `${name}.kv.onnx`, weights: `${name}.weights` };
    const fetched = await fetchShardFiles(byLayer.get(layer), (done, _, what) => {
      ui.progress(before + done, total);
      ui.set('layers', `[${start}, ${end})${role} — ${what} ${(100 * (before + done) / total).toFixed(0)}%`);
      if (performance.now() - lastReport > 250) {
        lastReport = performance.now();
        sendControl({ type: 'progress', done: before + done, total, what: `download ${what}` });
      }
    });
    before += byLayer.get(layer).reduce((sum, file) => sum + file.size, 0);
    cached = cached && fetched.cached;
    downloaded += fetched.downloaded;
    try {
      // One layer's sessions per queued task: frames for the layers already held run in between.
      // The GGUF's blocks are decoded a matrix at a time into what this compute format's
      // graphs name: float32 matrices, or int8 codes and scales (int8_weights.js).
      await enqueue(async () => {
        const compact = fetched.files.get(entry.weights);
        const external = compact ? layerInitializers(compact, name, compute) : undefined;
        worker.weightBytes.set(layer, await runner.loadLayer(layer, fetched.files.get(entry.graph),
          fetched.files.get(entry.kv_graph), external));
      });
    } catch (error) {
      if (!isOutOfMemory(error)) throw error;
      // Out of memory (loadLayer left nothing half-made): say what this tab holds and wait to
      // be placed again with fewer layers (the layers it holds keep serving meanwhile).
      ui.log(`out of memory loading layer ${layer}: holding ${runner.layers.size} layer(s)`);
      sendControl({ type: 'error', code: 'out-of-memory', message: String(error.message || error).slice(0, 300),
        layer_start: start, layer_end: end, holds: [...runner.layers.keys()].sort((x, y) => x - y) });
      return null;
    }
    sendControl({ type: 'progress', done: before, total, what: `layer ${layer} ready` });
  }
  return { cached, downloaded };
}

/**
 * What the page really uses (JS heap, WebAssembly memory, buffers), measured by the browser:
 * performance.measureUserAgentSpecificMemory (cross-origin isolated pages) answers after its
 * next garbage collection, seconds later, so it is sent on its own once it comes.
 */
function reportMemoryUsed() {
  if (!performance.measureUserAgentSpecificMemory) return;
  performance.measureUserAgentSpecificMemory().then((measured) => {
    worker.memoryUsedMb = measured.bytes / 2 ** 20;
    sendStats({ memory_used_mb: worker.memoryUsedMb });
  }).catch((error) => ui.log(`memory measurement failed: ${error.message}`));
}

/** What the tab has served so far: rows, compute ms, streams and where its step time went. */
function sendStats(extra = {}) {
  worker.lastStats = performance.now();
  sendControl({ type: 'stats', tokens: worker.tokens, compute_ms: worker.computeMs,
    streams: worker.runner ? worker.runner.streams.size : 0, timing: worker.timing.toMessage(), ...extra });
}

/** What a load cost and what the tab now holds: network bytes, float32 weight bytes, JS heap. */
function footprint(downloaded) {
  const weights = [...worker.weightBytes].filter(([layer]) => worker.runner.layers.has(layer))
    .reduce((sum, [, bytes]) => sum + bytes, 0);
  const heap = performance.memory ? performance.memory.usedJSHeapSize / 2 ** 20 : undefined;
  return { downloaded_bytes: downloaded, weight_bytes: weights, ...(heap === undefined ? {} : { memory_mb: heap }) };
}

function refuse(header, code, message) {
  sendControl({ type: 'error', code, message, stream: header.stream, step: header.step }, header.stream);
}

/** With ROUND_LAYERS: the frame encoding's rounding at every layer boundary inside the stage (else null). */
function boundaryRounding(header, columns) {
  if (!(header.flags & Flag.ROUND_LAYERS) || header.encoding === Encoding.FLOAT32) return null;
  return (values, rows) => roundTrip(values, rows, columns, header.encoding, header.block);
}

function streamState(map, stream) {
  if (!map.has(stream)) map.set(stream, newStreamState());
  return map.get(stream);
}

async function onForward(bytes, parsed) {
  const received = performance.now();
  const { header, values } = decodeActivation(bytes, streamState(worker.decoders, parsed.header.stream), parsed);
  const runner = worker.runner;
  const echo = header.layerStart === header.layerEnd; // no layers: a measured round trip
  if (!echo && (!runner || !runner.holds(header.layerStart, header.layerEnd))) {
    refuse(header, 'not-assigned', `layers [${header.layerStart}, ${header.layerEnd}) are not loaded here`);
    return;
  }
  if (!echo) {
    const length = runner.cacheLength(header.stream, header.layerStart, header.layerEnd);
    if (length !== header.position) {
      refuse(header, 'bad-position', `frame position ${header.position} is not stream ${header.stream}'s cache length ${length}`);
      return;
    }
  }
  const started = performance.now();
  // Router statistics cost a norm per layer: only a one-row frame that asks (REPORT) gets them.
  const report = !echo && header.rows === 1 && (header.flags & Flag.REPORT) !== 0
    && !(header.flags & Flag.NO_REPLY);
  const sampleHeads = report && header.position % HEAD_SAMPLE_INTERVAL === 0;
  const result = echo ? { output: values, ratios: [] }
    : await runner.forward(header.stream, values, header.rows, header.position, header.skipMask,
      header.layerStart, header.layerEnd, report, sampleHeads, boundaryRounding(header, runner.model.hidden));
  const computed = performance.now();
  if (!echo) {
    worker.computeMs += computed - started;
    worker.tokens += header.rows;
    // Measured again once the tab has been quiet for a while after serving (its caches grew).
    clearTimeout(worker.memoryTimer);
    worker.memoryTimer = setTimeout(reportMemoryUsed, MEMORY_REPORT_QUIET_MS);
  }
  if (header.flags & Flag.NO_REPLY) return;
  if (report) {
    const stats = { type: 'layer_stats', position: header.position, ratios: result.ratios, norms: result.norms,
      node_ratio: result.nodeRatio };
    if (sampleHeads) stats.head_ratios = result.headRatios;
    sendControl(stats, header.stream);
  }
  const output = result.output;
  const settings = { encoding: header.encoding, block: header.block, delta: (header.flags & Flag.DELTA) !== 0,
    roundLayers: (header.flags & Flag.ROUND_LAYERS) !== 0,
    runLength: header.encoding === Encoding.INT8_BLOCK, keyInterval: worker.assignment.codec.key_interval || 64 };
  const frame = encodeActivation(output, header.rows, header.columns, { kind: Kind.RESULT, stream: header.stream,
    position: header.position, layerStart: header.layerStart, layerEnd: header.layerEnd, skipMask: header.skipMask,
    step: header.step, stepKind: header.stepKind },
  settings, streamState(worker.encoders, header.stream));
  // Steps the coordinator waits for (NO_REPLY backfills are off its critical path, echoes run no layers).
  if (!echo) {
    worker.timing.record(header.rows, { decode: started - received, layers: computed - started,
      encode: performance.now() - computed });
  }
  send(frame);
  ui.set('tokens', `${worker.tokens} rows, ${(worker.computeMs / Math.max(worker.tokens, 1)).toFixed(2)} ms/row`);
  if (runner && performance.now() - worker.lastStats > 1000) sendStats();
}

function onControl(message) {
  switch (message.type) {
    case 'assign':
      // Assignments load one after another, outside the frame queue.
      worker.assignments = worker.assignments.then(() => onAssign(message)).catch(fail);
      break;
    case 'retain':
      enqueue(async () => {
        await worker.runner?.retain(message.layer_start, message.layer_end);
        ui.set('layers', `[${message.layer_start}, ${message.layer_end}) — ready`);
      });
      break;
    case 'truncate':
      enqueue(() => worker.runner?.truncate(message.stream, message.length));
      break;
    case 'head_mask':
      // Queued behind the frames already received, so it applies from the next FORWARD on.
      enqueue(() => worker.runner?.setHeadMasks(message.stream, message.layer_start, message.masks));
      break;
    case 'release':
      enqueue(() => {
        worker.runner?.release(message.stream);
        worker.decoders.delete(message.stream);
        worker.encoders.delete(message.stream);
        if (worker.runner) sendStats();   // a request ended: its steps' timing, current
      });
      break;
    case 'heartbeat':
      sendControl({ type: 'heartbeat', time: Date.now() / 1000 });
      break;
    case 'error':
      ui.log(`coordinator: ${message.code}: ${message.message}`);
      break;
    default:
      break;
  }
}

function fail(error) {
  ui.log(`error: ${error.message}`);
  ui.set('state', `error: ${error.message}`);
  sendControl({ type: 'error', code: error instanceof FrameError ? error.reason : 'worker-error', message: String(error.message).slice(0, 500) });
}

function onMessage(event) {
  const bytes = new Uint8Array(event.data);
  let parsed;
  try {
    parsed = parseFrame(bytes);
  } catch (error) {
    ui.log(`bad frame from coordinator: ${error.message}`);
    worker.socket.close(1003, String(error.message).slice(0, 120));
    return;
  }
  if (parsed.header.kind === Kind.CONTROL) {
    try { onControl(decodeControl(bytes)); } catch (error) { fail(error); }
  } else if (parsed.header.kind === Kind.FORWARD) {
    worker.queue = worker.queue.then(() => onForward(bytes, parsed)).catch(fail);
  }
}

function connect() {
  const token = params.get('token');
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws/worker${token ? `?token=${encodeURIComponent(token)}` : ''}`;
  ui.set('state', `connecting to ${url}`);
  const socket = new WebSocket(url);
  socket.binaryType = 'arraybuffer';
  worker.socket = socket;
  socket.onopen = () => {
    worker.retryMs = 1000;
    ui.set('state', 'connected');
    ui.log('connected');
    const hello = { type: 'hello', protocol: VERSION, backend: worker.backend, threads: worker.threads,
      benchmark_ms: worker.benchmark, agent: navigator.userAgent, worker: worker.name,
      // what this page can use: WebGPU, Cache Storage and crypto.subtle need a secure context
      secure_context: isSecureContext, webgpu_api: 'gpu' in navigator, cache_storage: 'caches' in globalThis };
    const memory = offeredMemoryMb();
    if (memory) hello.memory_mb = memory;
    sendControl(hello);
  };
  socket.onmessage = onMessage;
  socket.onclose = (event) => {
    if (worker.leaving) return;
    ui.set('state', `disconnected (${event.code} ${event.reason || ''}); retrying in ${(worker.retryMs / 1000).toFixed(0)} s`);
    ui.log(`disconnected: ${event.code} ${event.reason || ''}`);
    worker.decoders.clear();
    worker.encoders.clear();
    if (worker.runner) for (const stream of [...worker.runner.streams.keys()]) worker.runner.release(stream);
    setTimeout(connect, worker.retryMs);
    worker.retryMs = Math.min(worker.retryMs * 2, 15000);
  };
}

// A tab that is closing says so, so the coordinator moves its requests at once rather
// than when the socket or a heartbeat times out.
addEventListener('pagehide', () => {
  worker.leaving = true;
  sendControl({ type: 'leave', reason: 'page closing' });
});

/**
 * The memory this tab gives the swarm, in MB: `?memory=` when the page was opened with it (a
 * phone, or a laptop whose owner wants it to give less), else three quarters of what the
 * device reports, at most 3 GiB (a wasm32 tab addresses 4 GiB in all).
 */
function offeredMemoryMb() {
  const asked = Number(params.get('memory'));
  if (asked > 0) return asked;
  return navigator.deviceMemory ? Math.min(4096, navigator.deviceMemory * 1024) * 0.75 : undefined;
}

async function main() {
  ui.set('name', worker.name);
  worker.backend = await chooseBackend();
  // onnxruntime-web's own default, min(4, ceil(cores / 2)), when the page may use threads at all
  // (cross-origin isolated). Measured on 2 cores (bench/results/time_breakdown_threads2.json):
  // 2 threads per tab were slower than 1 (14.6 vs 15.7 tok/s through 2 tabs), which this gives there.
  const defaultThreads = crossOriginIsolated ? Math.min(4, Math.ceil((navigator.hardwareConcurrency || 1) / 2)) : 1;
  worker.threads = Number(params.get('threads') || defaultThreads);
  worker.ort = await loadOrt({ webgpu: worker.backend === 'webgpu', threads: worker.threads });
  ui.set('backend', `${worker.backend}, ${worker.threads} thread(s)${crossOriginIsolated ? '' : ' (not cross-origin isolated)'}`
    + (offeredMemoryMb() ? `, gives ${Math.round(offeredMemoryMb())} MB` : ''));
  worker.benchmark = await benchmarkMs();
  connect();
}

main().catch(fail);
