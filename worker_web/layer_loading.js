// Loading an assignment's layers in a worker tab: each layer's files fetched (cached ones
// from the shard store), its weights decoded into what the compute format's graphs name,
// its sessions created, progress reported to the page and the coordinator; out of memory,
// the coordinator is told what the tab still holds. One layer at a time, so a tab holds at
// most one layer's files and decoded weights besides the sessions it keeps.
// Owns no state: the tab passes its runner, its queue and its way of sending.

import { layerInitializers } from './int8_weights.js';
import { isOutOfMemory, layerOfFile } from './ort_runtime.js';
import { fetchShardFiles } from './shard_store.js';
import { ui } from './tab_page.js';

/**
 * Download and create the given layers one at a time (so a tab holds at most one layer's
 * files and decoded weights besides the sessions it keeps); returns {cached, downloaded},
 * or null when memory ran out (the coordinator was told what this tab holds).
 */
export async function loadLayers({ runner, message, layers, role, enqueue, sendControl, weightBytes }) {
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
        weightBytes.set(layer, await runner.loadLayer(layer, fetched.files.get(entry.graph),
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
