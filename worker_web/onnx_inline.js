// Owns reading and rewriting a layer graph's external initializers in its protobuf bytes:
// `externalLocations` lists the external data a graph names (what a tab hands onnxruntime-web
// as externalData, the shipped path: ort_runtime.js), and `inlineWeights` makes them inline
// ones carrying their data (the format weight benchmarks compare against: with Qwen2.5 layers
// it made the WASM heap grow ~12 MB more per layer, bench/results/tab_memory.json). Protobuf
// wire format only (ModelProto.graph = 7, GraphProto.initializer = 5, TensorProto: dims = 1,
// data_type = 2, name = 8, raw_data = 9, external_data = 13, data_location = 14). Knows
// nothing of onnxruntime or the wire protocol.

const FLOAT = 1;
const EXTERNAL = 1;
const BYTES_PER_VALUE = { 1: 4, 2: 1, 3: 1 };   // TensorProto data types: FLOAT, UINT8, INT8

function readVarint(bytes, at) {
  let value = 0;
  let scale = 1;
  for (;;) {
    if (at >= bytes.length) throw new Error('truncated protobuf varint');
    const byte = bytes[at];
    at += 1;
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) return [value, at];
    scale *= 128;
  }
}

function varint(value) {
  const out = [];
  do {
    let byte = value % 128;
    value = Math.floor(value / 128);
    if (value > 0) byte |= 0x80;
    out.push(byte);
  } while (value > 0);
  return out;
}

/** Top-level fields of a message: [{field, wire, start, end, body: [start, end) of a length-delimited value}]. */
function fields(bytes) {
  const out = [];
  let at = 0;
  while (at < bytes.length) {
    const start = at;
    let key;
    [key, at] = readVarint(bytes, at);
    const field = Math.floor(key / 8);
    const wire = key % 8;
    let body = null;
    if (wire === 0) [, at] = readVarint(bytes, at);
    else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else if (wire === 2) {
      let length;
      [length, at] = readVarint(bytes, at);
      body = [at, at + length];
      at += length;
    } else throw new Error(`unsupported protobuf wire type ${wire}`);
    if (at > bytes.length) throw new Error('truncated protobuf message');
    out.push({ field, wire, start, end: at, body });
  }
  return out;
}

function lengthDelimited(field, parts) {
  const length = parts.reduce((sum, part) => sum + part.length, 0);
  return [Uint8Array.from([...varint(field * 8 + 2), ...varint(length)]), ...parts];
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) { out.set(part, at); at += part.length; }
  return out;
}

/** name, dims, data type, whether a TensorProto's data is external and its external location. */
function describeTensor(bytes) {
  const tensor = { name: null, dims: [], dataType: FLOAT, external: false, location: null };
  for (const entry of fields(bytes)) {
    if (entry.field === 8 && entry.body) tensor.name = new TextDecoder().decode(bytes.subarray(...entry.body));
    else if (entry.field === 1 && entry.wire === 0) tensor.dims.push(readVarint(bytes, entry.start + 1)[0]);
    else if (entry.field === 1 && entry.body) {          // packed dims
      for (let at = entry.body[0]; at < entry.body[1];) { let dim; [dim, at] = readVarint(bytes, at); tensor.dims.push(dim); }
    } else if (entry.field === 2 && entry.wire === 0) tensor.dataType = readVarint(bytes, entry.start + 1)[0];
    else if (entry.field === 14 && entry.wire === 0) tensor.external = readVarint(bytes, entry.start + 1)[0] === EXTERNAL;
    else if (entry.field === 13 && entry.body) {        // external_data: StringStringEntryProto {key = 1, value = 2}
      const pair = bytes.subarray(...entry.body);
      const text = {};
      for (const part of fields(pair)) if (part.body) text[part.field] = new TextDecoder().decode(pair.subarray(...part.body));
      if (text[1] === 'location') tensor.location = text[2];
    }
  }
  return tensor;
}

function inlineTensor(name, dims, dataType, data) {
  const header = [];
  for (const dim of dims) header.push(0x08, ...varint(dim));
  header.push(0x10, dataType);
  const nameBytes = new TextEncoder().encode(name);
  header.push(0x42, ...varint(nameBytes.length), ...nameBytes);
  header.push(0x4a, ...varint(data.length));
  return [Uint8Array.from(header), data];
}

/** The external-data locations a model's initializers name (e.g. 'layer_03.q_weight#int8'). */
export function externalLocations(modelBytes) {
  const locations = [];
  for (const entry of fields(modelBytes)) {
    if (entry.field !== 7 || !entry.body) continue;
    const graph = modelBytes.subarray(...entry.body);
    for (const item of fields(graph)) {
      if (item.field !== 5 || !item.body) continue;
      const tensor = describeTensor(graph.subarray(...item.body));
      if (tensor.external && tensor.location) locations.push(tensor.location);
    }
  }
  return locations;
}

/**
 * A model's bytes with each external initializer made inline from `weights` (Map of its
 * external-data location, e.g. 'layer_03.q_weight' or 'layer_03.q_weight#int8', -> Uint8Array
 * of its float32 or int8 data).
 * Throws when one is missing or its size does not match its dims.
 */
export function inlineWeights(modelBytes, weights) {
  const parts = [];
  let replaced = 0;
  for (const entry of fields(modelBytes)) {
    if (entry.field !== 7 || !entry.body) { parts.push(modelBytes.subarray(entry.start, entry.end)); continue; }
    const graph = modelBytes.subarray(...entry.body);
    const graphParts = [];
    for (const item of fields(graph)) {
      const raw = graph.subarray(item.start, item.end);
      if (item.field !== 5 || !item.body) { graphParts.push(raw); continue; }
      const tensor = describeTensor(graph.subarray(...item.body));
      if (!tensor.external) { graphParts.push(raw); continue; }
      const data = weights.get(tensor.location);
      if (!data) throw new Error(`the weights file has no data for initializer ${tensor.name}`);
      const width = BYTES_PER_VALUE[tensor.dataType];
      if (!width) throw new Error(`${tensor.name}: data type ${tensor.dataType} cannot be inlined`);
      const expected = tensor.dims.reduce((product, dim) => product * dim, 1) * width;
      if (data.length !== expected) throw new Error(`${tensor.name}: ${data.length} bytes, its dims need ${expected}`);
      graphParts.push(...lengthDelimited(5, inlineTensor(tensor.name, tensor.dims, tensor.dataType, data)));
      replaced += 1;
    }
    parts.push(...lengthDelimited(7, graphParts));
  }
  return { bytes: concat(parts), replaced };
}
