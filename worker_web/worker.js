// The worker tab's dispatcher: connects to the coordinator, answers control messages,
// runs FORWARD frames through its LayerRunner in arrival order (the frames waiting together
// as batched passes, batch_former.js), and reports what it does.
// Owns the WebSocket; codec.js owns bytes, ort_runtime.js owns onnxruntime,
// shard_store.js owns shard files, tab_page.js owns the page.
//
// All of a tab's state is one WorkerTab, made in main(); nothing at module level changes.
// Frames and everything that touches the runner's state run one at a time on `queue`.
// An assignment downloads outside it (so the tab keeps serving its current layers while
// it loads new ones) and creates each new layer's sessions as one queued task; the layers
// it held before stay until the coordinator says `retain`.
import { decodeActivation, encodeActivation, Flag, FrameError, Kind, newStreamState, parseFrame, VERSION } from './codec.js';
import { decodeControl, encodeControl } from './control_messages.js';
import { boundaryRounding, layerStatsMessage, resultRoute, resultSettings, runnerEntry } from './frame_replies.js';
import { LayerRunner, loadOrt } from './ort_runtime.js';
import { loadLayers } from './layer_loading.js';
import { formPasses } from './batch_former.js';
import { StepTiming } from './step_timing.js';
import { benchmarkMs, chooseBackend, offeredMemoryMb, threadCount, ui } from './tab_page.js';

const MEMORY_REPORT_QUIET_MS = 5000;   // re-measure memory this long after the last frame
const GATHER_QUIET_MS = 2;             // a batch waits this long after its last frame for more (gather)

function sameModel(runner, model, compute) {
  return runner && runner.model.shard_sha256 === model.shard_sha256 && runner.model.converter === model.converter
    && runner.compute === compute;
}

/** Resolves in a new task: after the events already waiting (a message channel: no timer clamping). */
function nextTask() {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => { channel.port1.close(); resolve(); };
    channel.port2.postMessage(0);
  });
}

function streamState(map, stream) {
  if (!map.has(stream)) map.set(stream, newStreamState());
  return map.get(stream);
}

class WorkerTab {
  constructor({ params, name, backend, threads, ort, benchmark }) {
    this.params = params;
    this.name = name;
    this.backend = backend;
    this.threads = threads;
    this.ort = ort;
    this.benchmark = benchmark;
    this.runner = null;
    this.assignment = null;
    this.socket = null;
    this.retryMs = 1000;
    this.queue = Promise.resolve();          // frames and runner changes, one at a time
    this.openBatch = null;                   // FORWARD frames waiting for the next pass (admitFrame)
    this.passes = { passes: 0, frames: 0, largest: 0 };   // passes run and the frames they held (stats.batching)
    this.assignments = Promise.resolve();    // assignments, one after another, outside the queue
    this.leaving = false;
    this.decoders = new Map();               // stream -> codec state of frames received
    this.encoders = new Map();               // stream -> codec state of results sent
    this.tokens = 0;
    this.computeMs = 0;
    this.lastStats = 0;
    this.memoryTimer = undefined;
    this.memoryUsedMb = undefined;
    this.timing = new StepTiming();          // ms per part of the steps served (stats.timing)
    this.weightBytes = new Map();            // layer -> float32 weight bytes its sessions were given
  }

  send(bytes) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(bytes);
  }

  sendControl(message, stream = 0) {
    this.send(encodeControl(message, stream));
  }

  /**
   * Run `task` on the frame queue (after every frame already received); resolves with its result.
   * A task that throws is reported (`fail`) and the queue goes on: a bare `.then()` on the queue
   * would leave it rejected, and every later frame would be skipped.
   */
  enqueue(task) {
    this.openBatch = null;   // frames arriving after this task run after it (admitFrame)
    const run = this.queue.then(task);
    this.queue = run.catch((error) => this.fail(error));
    return run;
  }

  async onAssign(message) {
    const { layer_start: start, layer_end: end, model } = message;
    const compute = message.compute || 'float32';
    this.assignment = message;
    if (!sameModel(this.runner, model, compute)) {
      await this.enqueue(async () => {
        if (this.runner) await this.runner.dispose();
        this.runner = new LayerRunner(this.ort, this.backend, model, compute);
      });
    }
    const runner = this.runner;
    const missing = new Set(runner.missing(start, end));
    const role = message.role === 'standby' ? ' (standby replica)' : '';
    if (!missing.size) {
      ui.set('layers', `[${start}, ${end})${role} — ready`);
      this.sendControl({ type: 'ready', layer_start: start, layer_end: end, load_ms: 0, cached: true,
        backend: this.backend, ...this.footprint(0) });
      return;
    }
    ui.set('layers', `[${start}, ${end})${role} — loading`);
    ui.log(`assigned layers [${start}, ${end})${role} of ${model.name} (${compute}); loading ${missing.size}`);
    const started = performance.now();
    const loaded = await loadLayers({ runner, message, layers: [...missing].sort((x, y) => x - y), role,
      enqueue: (task) => this.enqueue(task), sendControl: (reply) => this.sendControl(reply), weightBytes: this.weightBytes });
    if (!loaded) return;
    const { cached, downloaded } = loaded;
    await this.enqueue(() => runner.warmUp([...missing]));
    const loadMs = performance.now() - started;
    ui.set('layers', `[${start}, ${end})${role} — ready (${(loadMs / 1000).toFixed(1)} s${cached ? ', from cache' : ''})`);
    ui.log(`ready: ${missing.size} layers in ${(loadMs / 1000).toFixed(1)} s${cached ? ' (cached)' : ''}`);
    this.sendControl({ type: 'ready', layer_start: start, layer_end: end, load_ms: loadMs, cached,
      backend: this.backend, ...this.footprint(downloaded) });
    this.reportMemoryUsed();
  }

  /**
   * What the page really uses (JS heap, WebAssembly memory, buffers), measured by the browser:
   * performance.measureUserAgentSpecificMemory (cross-origin isolated pages) answers after its
   * next garbage collection, seconds later, so it is sent on its own once it comes.
   */
  reportMemoryUsed() {
    if (!performance.measureUserAgentSpecificMemory) return;
    performance.measureUserAgentSpecificMemory().then((measured) => {
      this.memoryUsedMb = measured.bytes / 2 ** 20;
      this.sendStats({ memory_used_mb: this.memoryUsedMb });
    }).catch((error) => ui.log(`memory measurement failed: ${error.message}`));
  }

  /** What the tab has served so far: rows, compute ms, streams and where its step time went. */
  sendStats(extra = {}) {
    this.lastStats = performance.now();
    this.sendControl({ type: 'stats', tokens: this.tokens, compute_ms: this.computeMs,
      streams: this.runner ? this.runner.streams.size : 0, timing: this.timing.toMessage(), batching: { ...this.passes },
      ...extra });
  }

  /** What a load cost and what the tab now holds: network bytes, float32 weight bytes, JS heap. */
  footprint(downloaded) {
    const weights = [...this.weightBytes].filter(([layer]) => this.runner.layers.has(layer))
      .reduce((sum, [, bytes]) => sum + bytes, 0);
    const heap = performance.memory ? performance.memory.usedJSHeapSize / 2 ** 20 : undefined;
    return { downloaded_bytes: downloaded, weight_bytes: weights, ...(heap === undefined ? {} : { memory_mb: heap }) };
  }

  refuse(header, code, message) {
    this.sendControl({ type: 'error', code, message, stream: header.stream, step: header.step }, header.stream);
  }

  /** Whether this tab can run the frame's layers at its position; refuses it (and says why) if not. */
  accepts(header) {
    const runner = this.runner;
    if (!runner || !runner.holds(header.layerStart, header.layerEnd)) {
      this.refuse(header, 'not-assigned', `layers [${header.layerStart}, ${header.layerEnd}) are not loaded here`);
      return false;
    }
    const length = runner.cacheLength(header.stream, header.layerStart, header.layerEnd);
    if (length !== header.position) {
      this.refuse(header, 'bad-position', `frame position ${header.position} is not stream ${header.stream}'s cache length ${length}`);
      return false;
    }
    return true;
  }

  /**
   * A FORWARD frame arrived: it joins the open batch, the frames that will run in the tab's
   * next pass (those that reach it while it is busy). Anything queued after it (a control
   * message, a layer load) closes the batch, so every frame still runs in arrival order
   * relative to it; so does a second frame of a stream already in the batch.
   */
  admitFrame(bytes, parsed) {
    const { stream } = parsed.header;
    if (!this.openBatch || this.openBatch.streams.has(stream)) {
      const batch = { frames: [], streams: new Set() };
      this.enqueue(async () => {
        await this.gather(batch);
        if (this.openBatch === batch) this.openBatch = null;
        return this.runFrames(batch.frames);
      });
      this.openBatch = batch;
    }
    this.openBatch.frames.push({ bytes, parsed });
    this.openBatch.streams.add(stream);
  }

  /**
   * Let the frames on their way join the batch before it runs. Frames that reached the tab
   * while it computed wait as message events, dispatched only once this task yields; the
   * coordinator relays a pass's results one stream at a time, so the frames of streams that
   * step together arrive a fraction of a millisecond apart. Wait while they keep coming, no
   * longer than GATHER_QUIET_MS after the last, and not at all once the batch holds every
   * stream this tab serves (a lone stream never waits).
   */
  async gather(batch) {
    const serving = this.runner ? this.runner.streams.size : 0;
    let seen = batch.frames.length;
    let last = performance.now();
    while (this.openBatch === batch) {
      await nextTask();
      if (batch.frames.length !== seen) {
        seen = batch.frames.length;
        last = performance.now();
      } else if (seen >= serving || performance.now() - last >= GATHER_QUIET_MS) {
        return;
      }
    }
  }

  /** Decode a batch's frames, drop those this tab refuses, and run the rest in passes (batch_former.js). */
  async runFrames(frames) {
    const items = [];
    for (const { bytes, parsed } of frames) {
      const received = performance.now();
      try {
        const { header, values } = decodeActivation(bytes, streamState(this.decoders, parsed.header.stream), parsed);
        const echo = header.layerStart === header.layerEnd; // no layers: a measured round trip
        if (echo || this.accepts(header)) items.push({ header, values, echo, decodeMs: performance.now() - received });
      } catch (error) {   // one frame this tab cannot decode (e.g. a delta without its state): the rest still run
        this.fail(error);
      }
    }
    for (const pass of formPasses(items.map((item) => item.header))) {
      await this.runPass(pass.map((index) => items[index]));
    }
  }

  /** One pass: frames that run the same layers with the same row count, as one batch. */
  async runPass(items) {
    const runner = this.runner;
    const { header, echo } = items[0];
    const entries = items.map(({ header: frame, values }) => runnerEntry(frame, values, echo));
    const started = performance.now();
    const results = echo ? [{ output: items[0].values, ratios: [] }]
      : await runner.forwardBatch(entries, header.rows, header.layerStart, header.layerEnd,
        boundaryRounding(header, runner.model.hidden));
    const layersMs = performance.now() - started;
    if (!echo) {
      this.computeMs += layersMs;
      this.tokens += header.rows * items.length;
      this.passes.passes += 1;
      this.passes.frames += items.length;
      this.passes.largest = Math.max(this.passes.largest, items.length);
      // Measured again once the tab has been quiet for a while after serving (its caches grew).
      clearTimeout(this.memoryTimer);
      this.memoryTimer = setTimeout(() => this.reportMemoryUsed(), MEMORY_REPORT_QUIET_MS);
    }
    items.forEach((item, index) => this.reply(item, entries[index], results[index], layersMs / items.length));
    ui.set('tokens', `${this.tokens} rows, ${(this.computeMs / Math.max(this.tokens, 1)).toFixed(2)} ms/row, `
      + `${(this.passes.frames / Math.max(this.passes.passes, 1)).toFixed(1)} streams/pass`);
    if (runner && performance.now() - this.lastStats > 1000) this.sendStats();
  }

  /** A frame's RESULT (and its layer_stats first, when it asked), unless it wants no reply. */
  reply({ header, echo, decodeMs }, entry, result, layersMs) {
    if (header.flags & Flag.NO_REPLY) return;
    const encoding = performance.now();
    if (entry.measure) this.sendControl(layerStatsMessage(header, entry, result), header.stream);
    const frame = encodeActivation(result.output, header.rows, header.columns, resultRoute(header),
      resultSettings(header, this.assignment.codec.key_interval), streamState(this.encoders, header.stream));
    // Steps the coordinator waits for (NO_REPLY backfills are off its critical path, echoes run no layers);
    // a pass's layer time is shared equally by its frames.
    if (!echo) this.timing.record(header.rows, { decode: decodeMs, layers: layersMs, encode: performance.now() - encoding });
    this.send(frame);
  }

  onControl(message) {
    switch (message.type) {
      case 'assign':
        // Assignments load one after another, outside the frame queue.
        this.assignments = this.assignments.then(() => this.onAssign(message)).catch((error) => this.fail(error));
        break;
      case 'retain':
        this.enqueue(async () => {
          await this.runner?.retain(message.layer_start, message.layer_end);
          ui.set('layers', `[${message.layer_start}, ${message.layer_end}) — ready`);
        });
        break;
      case 'truncate':
        this.enqueue(() => this.runner?.truncate(message.stream, message.length));
        break;
      case 'head_mask':
        // Queued behind the frames already received, so it applies from the next FORWARD on.
        this.enqueue(() => this.runner?.setHeadMasks(message.stream, message.layer_start, message.masks));
        break;
      case 'release':
        this.enqueue(() => {
          this.runner?.release(message.stream);
          this.decoders.delete(message.stream);
          this.encoders.delete(message.stream);
          if (this.runner) this.sendStats();   // a request ended: its steps' timing, current
        });
        break;
      case 'heartbeat':
        this.sendControl({ type: 'heartbeat', time: Date.now() / 1000 });
        break;
      case 'error':
        ui.log(`coordinator: ${message.code}: ${message.message}`);
        break;
      default:
        break;
    }
  }

  fail(error) {
    ui.log(`error: ${error.message}`);
    ui.set('state', `error: ${error.message}`);
    this.sendControl({ type: 'error', code: error instanceof FrameError ? error.reason : 'worker-error',
      message: String(error.message).slice(0, 500) });
  }

  onMessage(event) {
    const bytes = new Uint8Array(event.data);
    let parsed;
    try {
      parsed = parseFrame(bytes);
    } catch (error) {   // a frame this tab cannot read: close the socket with the reason (protocol/SPEC.md)
      ui.log(`bad frame from coordinator: ${error.message}`);
      this.socket.close(1003, String(error.message).slice(0, 120));
      return;
    }
    if (parsed.header.kind === Kind.CONTROL) {
      try { this.onControl(decodeControl(bytes)); } catch (error) { this.fail(error); }   // a malformed control message is reported, not fatal
    } else if (parsed.header.kind === Kind.FORWARD) {
      this.admitFrame(bytes, parsed);
    }
  }

  hello() {
    const hello = { type: 'hello', protocol: VERSION, backend: this.backend, threads: this.threads,
      benchmark_ms: this.benchmark, agent: navigator.userAgent, worker: this.name,
      // what this page can use: WebGPU, Cache Storage and crypto.subtle need a secure context
      secure_context: isSecureContext, webgpu_api: 'gpu' in navigator, cache_storage: 'caches' in globalThis };
    const memory = offeredMemoryMb(this.params);
    if (memory) hello.memory_mb = memory;
    return hello;
  }

  connect() {
    const token = this.params.get('token');
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws/worker${token ? `?token=${encodeURIComponent(token)}` : ''}`;
    ui.set('state', `connecting to ${url}`);
    const socket = new WebSocket(url);
    socket.binaryType = 'arraybuffer';
    this.socket = socket;
    socket.onopen = () => {
      this.retryMs = 1000;
      ui.set('state', 'connected');
      ui.log('connected');
      this.sendControl(this.hello());
    };
    socket.onmessage = (event) => this.onMessage(event);
    socket.onclose = (event) => this.onClose(event);
  }

  onClose(event) {
    if (this.leaving) return;
    ui.set('state', `disconnected (${event.code} ${event.reason || ''}); retrying in ${(this.retryMs / 1000).toFixed(0)} s`);
    ui.log(`disconnected: ${event.code} ${event.reason || ''}`);
    this.decoders.clear();
    this.encoders.clear();
    if (this.runner) for (const stream of [...this.runner.streams.keys()]) this.runner.release(stream);
    setTimeout(() => this.connect(), this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, 15000);
  }

  /** The page is closing: say so, so the coordinator moves its requests at once rather than
   * when the socket or a heartbeat times out. */
  leave() {
    this.leaving = true;
    this.sendControl({ type: 'leave', reason: 'page closing' });
  }
}

async function main() {
  const params = new URLSearchParams(location.search);
  const name = params.get('name') || sessionStorage.getItem('tabswarm-name') || `tab-${Math.random().toString(36).slice(2, 7)}`;
  sessionStorage.setItem('tabswarm-name', name);
  ui.set('name', name);
  const backend = await chooseBackend(params);
  const threads = threadCount(params);
  const ort = await loadOrt({ webgpu: backend === 'webgpu', threads });
  const offered = offeredMemoryMb(params);
  ui.set('backend', `${backend}, ${threads} thread(s)${crossOriginIsolated ? '' : ' (not cross-origin isolated)'}`
    + (offered ? `, gives ${Math.round(offered)} MB` : ''));
  const tab = new WorkerTab({ params, name, backend, threads, ort, benchmark: await benchmarkMs() });
  addEventListener('pagehide', () => tab.leave());
  tab.connect();
}

main().catch((error) => {
  ui.log(`error: ${error.message}`);
  ui.set('state', `error: ${error.message}`);
});
