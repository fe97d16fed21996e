"""One decoder layer of the real model runs in headless Chromium (onnxruntime-web) from its
compact weights file (decoded in the tab) and matches native onnxruntime, for a prefill
chunk and a decode step on top of it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from shards.executor import layer_graph_source, session_options
from shards.manifest import load_manifest

pytestmark = pytest.mark.e2e

LAYER = 3
TOLERANCE = 1e-4  # float32 both sides, same graph; notes measured ~6e-6 on these ops

RUN_LAYER_JS = """
async ({layer, hidden, prefill, backend}) => {
  const rt = await import('/worker/ort_runtime.js');
  const bt = await import('/worker/batch_tensors.js');
  const ort = await rt.loadOrt({webgpu: backend === 'webgpu', threads: 1});
  const { decodeWeights } = await import('/worker/compact_weights.js');
  const { inlineWeights } = await import('/worker/onnx_inline.js');
  const stem = `layer_${String(layer).padStart(2, '0')}`;
  const load = async (name) => new Uint8Array(await (await fetch(`/shards/${name}`)).arrayBuffer());
  // the GGUF's blocks, decoded in the tab and put inside the graph, as a worker tab does
  const weights = new Map(decodeWeights(await load(`${stem}.weights`), stem).map((entry) => [entry.path, entry.data]));
  const session = await rt.createSession(ort, inlineWeights(await load(`${stem}.onnx`), weights).bytes, backend);
  const empty = bt.floatTensor(ort, new Float32Array(0), [1, 3, 0, 64]);
  const heads = bt.floatTensor(ort, new Float32Array(9).fill(1), [9]);
  const first = await session.run({
    hidden: bt.floatTensor(ort, Float32Array.from(hidden.slice(0, prefill * 576)), [1, prefill, 576]),
    positions: bt.positionsTensor(ort, 0, prefill), past_key: empty, past_value: empty, head_mask: heads});
  const second = await session.run({
    hidden: bt.floatTensor(ort, Float32Array.from(hidden.slice(prefill * 576)), [1, 1, 576]),
    positions: bt.positionsTensor(ort, prefill, 1),
    past_key: first.present_key, past_value: first.present_value, head_mask: heads});
  return {prefill: Array.from(first.hidden_out.data), decode: Array.from(second.hidden_out.data),
          key: Array.from(second.present_key.data), dims: second.present_key.dims};
}
"""


def native_layer(shard_dir, hidden: np.ndarray, prefill: int):
    session = ort.InferenceSession(layer_graph_source(shard_dir, load_manifest(shard_dir), LAYER), session_options(1))
    empty = np.zeros((1, 3, 0, 64), dtype=np.float32)
    heads = np.ones(9, dtype=np.float32)
    first = session.run(None, {"hidden": hidden[:, :prefill], "positions": np.arange(prefill)[None],
                               "past_key": empty, "past_value": empty, "head_mask": heads})
    second = session.run(None, {"hidden": hidden[:, prefill:], "positions": np.array([[prefill]]),
                                "past_key": first[1], "past_value": first[2], "head_mask": heads})
    return first[0], second[0], second[1]


@pytest.mark.parametrize("backend", ["wasm", "webgpu"])
async def test_layer_matches_native_onnxruntime(browser, static_server, shard_dir, backend):
    prefill = 6
    hidden = np.random.default_rng(7).standard_normal((1, prefill + 1, 576)).astype(np.float32)
    page = await browser.new_page()
    try:
        await page.goto(f"{static_server}/blank.html")
        assert await page.evaluate("crossOriginIsolated"), "COOP/COEP headers missing"
        result = await page.evaluate(RUN_LAYER_JS, {"layer": LAYER, "hidden": hidden.ravel().tolist(),
                                                    "prefill": prefill, "backend": backend})
    finally:
        await page.close()
    want_prefill, want_decode, want_key = native_layer(shard_dir, hidden, prefill)
    assert result["dims"] == [1, 3, prefill + 1, 64]
    got_prefill = np.array(result["prefill"], dtype=np.float32).reshape(want_prefill.shape)
    got_decode = np.array(result["decode"], dtype=np.float32).reshape(want_decode.shape)
    got_key = np.array(result["key"], dtype=np.float32).reshape(want_key.shape)
    assert np.abs(got_prefill - want_prefill).max() < TOLERANCE
    assert np.abs(got_decode - want_decode).max() < TOLERANCE
    assert np.abs(got_key - want_key).max() < TOLERANCE
