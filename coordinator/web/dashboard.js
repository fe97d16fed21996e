// The live dashboard: renders each snapshot the coordinator streams (/v1/dashboard/stream).
// Everything a tab says about itself (its name, its browser) is untrusted text: it is only
// ever set with textContent, never parsed as HTML.

const $ = (id) => document.getElementById(id);
const COLOURS = ['#2f6fde', '#1a7f37', '#bf8700', '#9a6fde', '#d1242f', '#0e8a8a', '#8a5a0e', '#c2379a'];

function element(tag, { className, text, title, attributes } = {}, children = []) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (title) node.title = title;
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return '–';
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString();
}

function summary(status) {
  const queue = status.queue;
  const items = [
    ['ready', status.ready ? 'yes' : 'no'],
    ['plan', `v${status.plan_version}`],
    ['tabs', status.workers.length],
    ['running', queue.active], ['waiting', queue.waiting],
    ['requests', status.requests_total], ['tokens', status.tokens_generated],
    ['replays', status.churn.replays], ['spot checks', `${status.verification.passed} ok / ${status.verification.failed} failed`],
  ];
  $('summary').replaceChildren(...items.map(([label, value]) =>
    element('span', {}, [`${label} `, element('b', { text: value })])));
}

function layerMap(status, colourOf) {
  const layers = status.layers;
  const owner = new Array(layers).fill(null);
  for (const stage of status.plan) {
    for (let layer = stage.layers[0]; layer < stage.layers[1]; layer += 1) owner[layer] = stage.worker;
  }
  $('layer-map').replaceChildren(...owner.map((worker, layer) => element('div', {
    title: `layer ${layer}: ${worker || 'nobody'}`,
    attributes: { style: `background:${worker ? colourOf(worker) : '#eee'}` },
  })));
}

function tabCard(worker, colourOf) {
  const kind = worker.active ? 'active' : worker.role === 'standby' ? 'standby' : worker.role === 'idle' ? 'idle' : '';
  const layers = worker.layers ? `layers [${worker.layers[0]}, ${worker.layers[1]})` : 'no layers';
  const mark = worker.active ? 'stage' : worker.role === 'standby' ? 'standby replica' : worker.role;
  const card = element('div', { className: `tab ${kind}`, attributes: { 'data-worker-id': worker.id, 'data-state': worker.state } }, [
    element('div', { className: 'name' }, [
      element('span', { attributes: { style: `color:${colourOf(worker.id)}` }, text: '■ ' }),
      element('span', { text: `${worker.name} ` }), element('span', { className: 'muted', text: worker.id }),
    ]),
    element('div', { className: 'row' }, [element('span', { className: `state ${worker.state}`, text: worker.state }),
      ` ${mark} · ${worker.backend} · ${worker.threads} thread(s)`]),
    element('div', { className: 'row', text: layers }),
    element('div', { className: 'row', text: `step ${worker.step_ms === null ? '–' : `${worker.step_ms} ms`} · ${worker.steps} steps · `
      + `${worker.streams_per_pass == null ? '' : `${worker.streams_per_pass} streams/pass · `}`
      + `${bytes(worker.bytes_sent)} in / ${bytes(worker.bytes_received)} out` }),
    element('div', { className: 'row', text: worker.load_ms === null ? 'not loaded yet'
      : `loaded in ${(worker.load_ms / 1000).toFixed(1)} s${worker.cached ? ' (cached)' : ''}`
        + (worker.downloaded_bytes == null ? '' : ` · fetched ${bytes(worker.downloaded_bytes)}`) }),
    element('div', { className: 'row', text: `weights ${worker.weight_bytes == null ? '–' : bytes(worker.weight_bytes)}`
      + ` · memory ${worker.memory_used_mb == null ? '–' : `${Math.round(worker.memory_used_mb)} MB`} used`
      + ` of ${worker.memory_mb == null ? '–' : `${Math.round(worker.memory_mb)} MB`} given` }),
  ]);
  if (worker.progress) {
    const [done, total] = worker.progress;
    const share = total ? Math.min(1, done / total) : 0;
    card.append(element('div', { className: 'row', text: `loading ${(100 * share).toFixed(0)}%` }),
      element('div', { className: 'bar' }, [element('div', { attributes: { style: `width:${(100 * share).toFixed(1)}%` } })]));
  }
  return card;
}

function pipeline(snapshot, colourOf) {
  const cards = [];
  snapshot.pipeline.forEach((worker, index) => {
    if (index > 0) cards.push(element('span', { className: 'arrow', text: worker.active ? '→' : '·' }));
    cards.push(tabCard(worker, colourOf));
  });
  if (!cards.length) cards.push(element('p', { className: 'muted', text: 'no tabs connected: open the worker page in a browser' }));
  $('pipeline').replaceChildren(...cards);
  const status = snapshot.status;
  $('plan-note').textContent = status.plan_error ? `— ${status.plan_error}`
    : status.replan_pending ? '— a new plan is loading' : '';
}

function sparkline(svg, values) {
  const points = values.map((value, index) => [index, value]).filter(([, value]) => value !== null);
  if (points.length < 2) { svg.replaceChildren(); return; }
  const top = Math.max(...points.map(([, value]) => value), 1e-9);
  const width = 240; const height = 60;
  const step = width / Math.max(values.length - 1, 1);
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
  line.setAttribute('points', points.map(([index, value]) => `${(index * step).toFixed(1)},${(height - 4 - (height - 8) * value / top).toFixed(1)}`).join(' '));
  svg.replaceChildren(line);
}

function charts(series) {
  const rates = series.map((sample) => sample.tokens_per_second);
  const latencies = series.map((sample) => sample.token_ms);
  sparkline($('rate-chart'), rates);
  sparkline($('latency-chart'), latencies);
  const last = series[series.length - 1];
  $('rate-now').textContent = last ? `${last.tokens_per_second}` : '';
  const recent = latencies.filter((value) => value !== null);
  $('latency-now').textContent = recent.length ? `${recent[recent.length - 1]}` : '';
}

function requests(list) {
  $('requests').tBodies[0].replaceChildren(...list.map((record) => {
    const usage = record.usage || {};
    const drafts = usage.speculation && usage.speculation !== 'off' ? `${usage.accepted}/${usage.drafted} (${usage.speculation})` : '–';
    const cells = [record.id, record.endpoint + (record.stream ? ' (stream)' : ''), record.status ? `${record.state} ${record.status}` : record.state,
      record.prompt_tokens, record.completion_tokens,
      record.first_token_seconds === null ? '–' : `${(record.first_token_seconds * 1000).toFixed(0)} ms`,
      record.seconds === null ? '…' : `${record.seconds.toFixed(2)} s`,
      usage.hops ?? '–', usage.hops === undefined ? '–' : `${bytes(usage.bytes_sent)} / ${bytes(usage.bytes_received)}`,
      usage.layers_skipped ?? '–', usage.nodes_bypassed ?? '–', drafts, usage.replays ?? '–'];
    return element('tr', { className: record.state, attributes: { 'data-request-id': record.id } },
      cells.map((cell) => element('td', { text: cell })));
  }));
}

function events(list) {
  $('events').replaceChildren(...list.slice().reverse().map((event) => {
    const { time, event: kind, ...details } = event;
    const text = Object.entries(details).map(([key, value]) => `${key}=${JSON.stringify(value)}`).join(' ');
    return element('li', { className: kind, text: `${clock(time)} ${kind} ${text}` });
  }));
}

function render(snapshot) {
  const colours = new Map();
  const colourOf = (worker) => {
    if (!colours.has(worker)) colours.set(worker, COLOURS[Number(String(worker).replace(/\D/g, '') || 0) % COLOURS.length]);
    return colours.get(worker);
  };
  $('model').textContent = `${snapshot.status.model} · ${snapshot.status.layers} layers`;
  summary(snapshot.status);
  layerMap(snapshot.status, colourOf);
  pipeline(snapshot, colourOf);
  charts(snapshot.series);
  requests(snapshot.requests);
  events(snapshot.status.events);
  document.body.dataset.updated = String(snapshot.time);
}

function connect() {
  const key = new URLSearchParams(location.search).get('api_key');
  const source = new EventSource(`/v1/dashboard/stream${key ? `?api_key=${encodeURIComponent(key)}` : ''}`);
  const pill = $('connection');
  source.onmessage = (message) => {
    pill.textContent = 'live'; pill.className = 'pill live';
    render(JSON.parse(message.data));
  };
  source.onerror = () => { pill.textContent = 'reconnecting…'; pill.className = 'pill down'; };
}

$('worker-link').textContent = `${location.origin}/worker/`;
connect();
