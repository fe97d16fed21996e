// The worker tab's dispatcher: connects to the coordinator, answers control messages,
// runs FORWARD frames through its LayerRunner in arrival order, and shows a person what
// it is doing. Owns the WebSocket and the page; codec.js owns bytes, ort_runtime.js owns
// onnxruntime, shard_store.js owns shard files.
import { decodeActivation, encodeActivation, Encoding, Flag, FrameError, Kind, newStreamState, parseFrame } from './codec.js';
import { decodeControl, encodeControl, HEAD_SAMPLE_INTERVAL } from './control_messages.js';
import { LayerRunner, loadOrt, realGpuAdapter } from './ort_runtime.js';
import { fetchShardFiles } from './shard_store.js';

const params = new URLSearchParams(location.search);
const PROTOCOL = 1;
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
  socket: null, retryMs: 1000, queue: Promise.resolve(),
  decoders: new Map(), encoders: new Map(), tokens: 0, computeMs: 0, lastStats: 0,
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

async function onAssign(message) {
  const { layer_start: start, layer_end: end, model } = message;
  worker.assignment = message;
  const same = worker.runner && worker.runner.layerStart === start && worker.runner.layerEnd === end
    && worker.runner.model.shard_sha256 === model.shard_sha256 && worker.runner.model.converter === model.converter;
  if (same) {
    sendControl({ type: 'ready', layer_start: start, layer_end: end, load_ms: 0, cached: true, backend: worker.backend });
    return;
  }
  if (worker.runner) { await worker.runner.dispose(); worker.runner = null; }
  ui.set('layers', `[${start}, ${end}) — loading`);
  ui.log(`assigned layers [${start}, ${end}) of ${model.name}`);
  const started = performance.now();
  let lastReport = 0;
  const { files, cached } = await fetchShardFiles(message.files, (done, total, what) => {
    ui.progress(done, total);
    ui.set('layers', `[${start}, ${end}) — ${what} ${(100 * done / total).toFixed(0)}%`);
    if (performance.now() - lastReport > 250) {
      lastReport = performance.now();
      sendControl({ type: 'progress', done, total, what: `download ${what}` });
    }
  });
  const runner = new LayerRunner(worker.ort, worker.backend, model, start, end);
  await runner.load(files, (done, total) => {
    ui.set('layers', `[${start}, ${end}) — creating sessions ${done}/${total}`);
    sendControl({ type: 'progress', done, total, what: 'sessions' });
  });
  if (worker.assignment !== message) { await runner.dispose(); return; } // reassigned meanwhile
  worker.runner = runner;
  const loadMs = performance.now() - started;
  ui.set('layers', `[${start}, ${end}) — ready (${(loadMs / 1000).toFixed(1)} s${cached ? ', from cache' : ''})`);
  ui.log(`ready: ${end - start} layers in ${(loadMs / 1000).toFixed(1)} s${cached ? ' (cached)' : ''}`);
  sendControl({ type: 'ready', layer_start: start, layer_end: end, load_ms: loadMs, cached, backend: worker.backend });
}

function streamState(map, stream) {
  if (!map.has(stream)) map.set(stream, newStreamState());
  return map.get(stream);
}

async function onForward(bytes, parsed) {
  const { header, values } = decodeActivation(bytes, streamState(worker.decoders, parsed.header.stream), parsed);
  const runner = worker.runner;
  const echo = header.layerStart === header.layerEnd; // no layers: a measured round trip
  if (!echo && (!runner || header.layerStart !== runner.layerStart || header.layerEnd !== runner.layerEnd)) {
    sendControl({ type: 'error', code: 'not-assigned', message: `layers [${header.layerStart}, ${header.layerEnd}) are not loaded here`, stream: header.stream }, header.stream);
    return;
  }
  const started = performance.now();
  const sampleHeads = header.rows === 1 && header.position % HEAD_SAMPLE_INTERVAL === 0
    && !(header.flags & Flag.NO_REPLY);
  const result = echo ? { output: values, ratios: [] }
    : await runner.forward(header.stream, values, header.rows, header.position, header.skipMask, sampleHeads);
  if (!echo) {
    worker.computeMs += performance.now() - started;
    worker.tokens += header.rows;
  }
  if (header.flags & Flag.NO_REPLY) return;
  if (!echo && header.rows === 1) {
    const report = { type: 'layer_stats', position: header.position, ratios: result.ratios, norms: result.norms,
      node_ratio: result.nodeRatio };
    if (sampleHeads) report.head_ratios = result.headRatios;
    sendControl(report, header.stream);
  }
  const output = result.output;
  const settings = { encoding: header.encoding, block: header.block, delta: (header.flags & Flag.DELTA) !== 0,
    runLength: header.encoding === Encoding.INT8_BLOCK, keyInterval: worker.assignment.codec.key_interval || 64 };
  send(encodeActivation(output, header.rows, header.columns, { kind: Kind.RESULT, stream: header.stream,
    position: header.position, layerStart: header.layerStart, layerEnd: header.layerEnd, skipMask: header.skipMask },
  settings, streamState(worker.encoders, header.stream)));
  ui.set('tokens', `${worker.tokens} rows, ${(worker.computeMs / Math.max(worker.tokens, 1)).toFixed(2)} ms/row`);
  if (runner && performance.now() - worker.lastStats > 1000) {
    worker.lastStats = performance.now();
    sendControl({ type: 'stats', tokens: worker.tokens, compute_ms: worker.computeMs, streams: runner.streams.size });
  }
}

function onControl(message) {
  switch (message.type) {
    case 'assign':
      worker.queue = worker.queue.then(() => onAssign(message)).catch(fail);
      break;
    case 'head_mask':
      // Queued behind the frames already received, so it applies from the next FORWARD on.
      worker.queue = worker.queue.then(() => {
        worker.runner?.setHeadMasks(message.stream, message.layer_start, message.masks);
      });
      break;
    case 'release':
      worker.queue = worker.queue.then(() => {
        worker.runner?.release(message.stream);
        worker.decoders.delete(message.stream);
        worker.encoders.delete(message.stream);
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
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws/worker`;
  ui.set('state', `connecting to ${url}`);
  const socket = new WebSocket(url);
  socket.binaryType = 'arraybuffer';
  worker.socket = socket;
  socket.onopen = () => {
    worker.retryMs = 1000;
    ui.set('state', 'connected');
    ui.log('connected');
    const memory = navigator.deviceMemory ? Math.min(4096, navigator.deviceMemory * 1024) * 0.75 : undefined;
    const hello = { type: 'hello', protocol: PROTOCOL, backend: worker.backend, threads: worker.threads,
      benchmark_ms: worker.benchmark, agent: navigator.userAgent, worker: worker.name };
    if (memory) hello.memory_mb = memory;
    sendControl(hello);
  };
  socket.onmessage = onMessage;
  socket.onclose = (event) => {
    ui.set('state', `disconnected (${event.code} ${event.reason || ''}); retrying in ${(worker.retryMs / 1000).toFixed(0)} s`);
    ui.log(`disconnected: ${event.code} ${event.reason || ''}`);
    worker.decoders.clear();
    worker.encoders.clear();
    if (worker.runner) for (const stream of [...worker.runner.streams.keys()]) worker.runner.release(stream);
    setTimeout(connect, worker.retryMs);
    worker.retryMs = Math.min(worker.retryMs * 2, 15000);
  };
}

async function main() {
  ui.set('name', worker.name);
  worker.backend = await chooseBackend();
  const defaultThreads = crossOriginIsolated && navigator.hardwareConcurrency >= 4 ? 2 : 1;
  worker.threads = Number(params.get('threads') || defaultThreads);
  worker.ort = await loadOrt({ webgpu: worker.backend === 'webgpu', threads: worker.threads });
  ui.set('backend', `${worker.backend}, ${worker.threads} thread(s)${crossOriginIsolated ? '' : ' (not cross-origin isolated)'}`);
  worker.benchmark = await benchmarkMs();
  connect();
}

main().catch(fail);
