"""The output head on the coordinator: the float32 MatMul head against the compact one
(the GGUF's Q8_0 token table as MatMulNBits blocks, int8 activations, near-top logits
recomputed exactly: shards/compact_head.py), per model.

- time per token (one row, the decode case) with 1 and 2 threads: both heads alternated
  3 times, each time best of 7 runs of 50 calls; the best of each is reported;
- accuracy on the same final hidden states (the reference executor over the Moby-Dick
  text): max |logit difference| to the float32 head, top-1 agreement and perplexity, for
  the compact head as served and for its uncorrected int8 output.
Usage: .venv/bin/python -m bench.head [--positions N]   (writes bench/results/head.json)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from bench.caches import model_cache, shard_cache
from shards.convert import convert
from shards.executor import ReferenceExecutor
from shards.gguf_model import KNOWN_MODELS
from shards.model_ends import ModelEnds
from shards.perplexity import log_softmax

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT / "data" / "moby-dick.txt"


def time_per_row(ends: ModelEnds, hidden: np.ndarray, repeats: int = 7, calls: int = 50) -> float:
    rows = [hidden[:, i:i + 1] for i in range(hidden.shape[1])]
    ends.logits(rows[0])
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(calls):
            ends.logits(rows[i % len(rows)])
        best = min(best, (time.perf_counter() - started) / calls)
    return best * 1000


def perplexity_of(logits: np.ndarray, ids: list[int]) -> float:
    targets = np.asarray(ids[1:])
    return math.exp(float(-log_softmax(logits[:-1])[np.arange(len(targets)), targets].mean()))


def measure(name: str, positions: int) -> dict:
    directory, manifest = convert(KNOWN_MODELS[name](model_cache()), progress=False, cache_root=shard_cache())
    executor = ReferenceExecutor(directory, threads=2, verify=False, head="float32")
    ids = executor.text.encode(TEXT.read_text()[:20000])[:positions]
    stream = executor._new_stream()
    hidden = executor.stack.forward(stream, executor.embed(ids), np.arange(len(ids), dtype=np.int64)[None])
    executor.stack.release(stream)
    result = {"model": name, "vocab": manifest.model.vocab, "hidden": manifest.model.hidden,
              "head_format": manifest.weight_format.get("head"), "positions": len(ids),
              "head_file_bytes": {"float32": manifest.model.vocab * manifest.model.hidden * 4,
                                  "compact": manifest.files[manifest.head].size}}
    for threads in (1, 2):
        heads = {kind: ModelEnds(directory, threads, verify=False, manifest=manifest, head=kind)
                 for kind in ("float32", "compact")}
        timings: dict[str, list[float]] = {kind: [] for kind in heads}
        for _ in range(3):      # alternated, best of each
            for kind, ends in heads.items():
                timings[kind].append(time_per_row(ends, hidden))
        result[f"ms_per_token_{threads}_threads"] = {kind: round(min(values), 3) for kind, values in timings.items()}
    exact = heads["float32"].logits(hidden)[0]                               # (positions, vocab)
    compact_ends = heads["compact"]
    corrector = compact_ends._compact_head
    assert corrector is not None, "this model's head is not compact"
    raw = compact_ends.head.run(None, {"hidden": hidden})[0][0]            # int8 activations, uncorrected
    corrector.recomputed = 0
    corrected = compact_ends.logits(hidden)[0]
    top = exact.argmax(-1)
    result.update({
        "uncorrected": {"max_abs_logit_difference": float(np.abs(raw - exact).max()),
                        "top1_agreement": float((raw.argmax(-1) == top).mean()),
                        "perplexity": round(perplexity_of(raw, ids), 4)},
        "compact": {"max_abs_logit_difference": float(np.abs(corrected - exact).max()),
                    "top_logit_difference": float(np.abs(corrected[np.arange(len(top)), top] - exact[np.arange(len(top)), top]).max()),
                    "top1_agreement": float((corrected.argmax(-1) == top).mean()),
                    "tokens_recomputed_per_position": corrector.recomputed / len(ids),
                    "perplexity": round(perplexity_of(corrected, ids), 4)},
        "float32": {"perplexity": round(perplexity_of(exact, ids), 4)},
        "logit_range": float(np.abs(exact).max()),
    })
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=512)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    args = parser.parse_args()
    results = [measure(name, args.positions) for name in args.models]
    out = ROOT / "bench" / "results" / "head.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
