"""Which layers' attention can go: remove one layer's attention at a time (all heads masked
for every token past the protected first ones; K/V still written) and measure perplexity on a
calibration window disjoint from the evaluation window of `skip_quality.py`.

The layers whose removal costs less than `--budget` percent are saved as the candidates
for static attention-only skipping; `skip_quality.py` evaluates them together on its own
window (settings named "attention off ..."). Writes bench/results/attention_ablation.json.

Usage: .venv/bin/python -m bench.attention_ablation [--tokens 256] [--budget 0.5]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from bench.caches import shard_cache
from coordinator.cli import DEFAULT_TEXT
from shards.convert import convert
from shards.executor import ReferenceExecutor
from shards.gguf_model import default_model_path
from shards.perplexity import log_softmax

RESULTS = Path(__file__).resolve().parent / "results"
CALIBRATION_START = 4096   # skip_quality.py evaluates on tokens [0, 2048)
PROTECT_TOKENS = 4


def perplexity(executor: ReferenceExecutor, ids: list[int], silent_layer: int | None) -> float:
    """Teacher-forced one token at a time; silent_layer's heads are all masked past the protected tokens."""
    heads = executor.manifest.model.heads
    masks = {silent_layer: np.zeros(heads, dtype=np.float32)} if silent_layer is not None else None
    stream = 88_000
    nll = []
    try:
        for position, token in enumerate(ids[:-1]):
            hidden = executor.stack.forward(stream, executor.embed([token]), np.array([[position]], dtype=np.int64),
                                            head_masks=masks if position >= PROTECT_TOKENS else None)
            nll.append(-float(log_softmax(executor.logits(hidden)[0])[-1, ids[position + 1]]))
    finally:
        executor.stack.release(stream)
    return math.exp(float(np.mean(nll)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--budget", type=float, default=0.5, help="percent perplexity a candidate may cost")
    args = parser.parse_args()
    directory, _ = convert(default_model_path(), progress=False, cache_root=shard_cache())
    executor = ReferenceExecutor(directory, threads=2)
    ids = executor.text.encode(DEFAULT_TEXT.read_text())[CALIBRATION_START:CALIBRATION_START + args.tokens]
    layers = executor.manifest.model.layers
    baseline = perplexity(executor, ids, None)
    per_layer = {}
    for layer in range(1, layers - 1):
        value = perplexity(executor, ids, layer)
        per_layer[layer] = {"perplexity": value, "change_percent": (value / baseline - 1) * 100}
        print(f"layer {layer:2d} without attention: {value:8.3f} ({per_layer[layer]['change_percent']:+.2f}%)",
              flush=True)
    candidates = sorted((layer for layer, entry in per_layer.items() if entry["change_percent"] < args.budget),
                        key=lambda layer: per_layer[layer]["change_percent"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "attention_ablation.json").write_text(json.dumps({
        "tokens": len(ids), "window_start": CALIBRATION_START, "baseline_perplexity": baseline,
        "budget_percent": args.budget, "per_layer": per_layer, "candidates": candidates}, indent=1) + "\n")
    print(f"baseline {baseline:.3f}; candidates (cheapest first): {candidates}")


if __name__ == "__main__":
    main()
