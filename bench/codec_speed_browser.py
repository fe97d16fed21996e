"""Encode + decode time per one-token frame of the JS codec in headless Chromium, next to
the Python codec on the same frames, for each codec mode. Writes
bench/results/codec_speed.json. Usage: .venv/bin/python -m bench.codec_speed_browser
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np

from bench.browser_page import blank_page
from protocol.activation_codec import (
    LOSSLESS,
    CodecSettings,
    Route,
    StreamCodecState,
    decode_activation,
    encode_activation,
)
from protocol.frames import Encoding, FrameKind

RESULTS = Path(__file__).resolve().parent / "results"
MODES = {"float32": LOSSLESS, "float16": CodecSettings(encoding=Encoding.FLOAT16, block=0, run_length=False),
         "int8-b32+rle": CodecSettings(block=32), "int8-b32+delta+rle": CodecSettings(block=32, delta=True)}
REPEATS = 2000

TIMING_JS = """
async ({rows, settings, repeats}) => {
  const codec = await import('/worker/codec.js');
  const values = Float32Array.from(rows);
  const out = {};
  for (const [name, s] of Object.entries(settings)) {
    const encoder = codec.newStreamState(), decoder = codec.newStreamState();
    const route = {kind: 1, stream: 1, position: 0, layerStart: 0, layerEnd: 15};
    for (let i = 0; i < 200; i += 1) codec.decodeActivation(codec.encodeActivation(values, 1, 576, route, s, encoder), decoder);
    const started = performance.now();
    for (let i = 0; i < repeats; i += 1) {
      route.position = i;
      codec.decodeActivation(codec.encodeActivation(values, 1, 576, route, s, encoder), decoder);
    }
    out[name] = (performance.now() - started) / repeats * 1000;
  }
  return out;
}
"""


def python_micros(settings: CodecSettings, row: np.ndarray) -> float:
    encoder, decoder = StreamCodecState(), StreamCodecState()
    started = time.perf_counter()
    for position in range(REPEATS // 4):
        decode_activation(encode_activation(row, Route(FrameKind.FORWARD, 1, position), settings, encoder), decoder)
    return (time.perf_counter() - started) / (REPEATS // 4) * 1e6


async def main() -> None:
    row = (np.random.default_rng(0).standard_normal((1, 576)) * 3).astype(np.float32)
    row[0, 17] = 2000.0
    settings_js = {name: {"encoding": int(s.encoding), "block": s.block, "delta": s.delta,
                          "runLength": s.run_length, "keyInterval": s.key_interval} for name, s in MODES.items()}
    async with blank_page(None, "codec") as page:
        browser_us = await page.evaluate(TIMING_JS, {"rows": row.ravel().tolist(), "settings": settings_js,
                                                     "repeats": REPEATS})
    report = {name: {"browser_encode_decode_us": browser_us[name], "python_encode_decode_us": python_micros(s, row)}
              for name, s in MODES.items()}
    for name, entry in report.items():
        print(f"{name:20} browser {entry['browser_encode_decode_us']:7.1f} µs   python {entry['python_encode_decode_us']:7.1f} µs")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "codec_speed.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
