"""Does an answer depend on where the stage boundaries fall? (issue 23, item 2)

The int8 wire codec rounds the hidden state where it crosses a stage boundary, so two plans
that cut the model at different layers compute different numbers. This benchmark runs the
in-process reference executor through the codec exactly as the pipeline does
(`shards.coded_reference.coded_generate`) and measures, on the default model:

- greedy agreement between layouts a replan moves between (cuts at 15 vs 14 vs 16, 3 nodes),
  over the speculation benchmark's 20 chat prompts: how often the answer changes, with the
  codec rounding only at the cuts (protocol v3) and at every layer boundary (v4, the rule now);
- perplexity with the codec at the cuts of 1, 2 and 3 even stages, and with a round trip
  after every layer (the one layout-independent rule that needs no restriction on cuts:
  each layer's output is rounded once wherever the cuts fall): what independence would cost.

Writes bench/results/layout_rounding.json.
Usage: .venv/bin/python -m bench.layout_rounding [--tokens 48] [--ppl-tokens 1024]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.caches import shard_cache
from bench.codec_quality import coded_logits
from bench.speculation_prompts import prompt_sets
from coordinator.cli import DEFAULT_TEXT
from coordinator.config import CodecPresets
from protocol.activation_codec import LOSSLESS
from shards.coded_reference import coded_generate
from shards.convert import convert
from shards.executor import ReferenceExecutor
from shards.gguf_model import default_model_path
from shards.perplexity import perplexity
from shards.sampling import SamplingParams

RESULTS = Path(__file__).resolve().parent / "results"
LAYOUTS = {"2 stages, cut 15": [15], "2 stages, cut 14": [14], "2 stages, cut 16": [16], "3 stages": [10, 20]}


def first_difference(a: list[int], b: list[int]) -> int:
    """Index of the first token where two answers part (the shorter length if one is a prefix)."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def prompts() -> list[list[dict[str, str]]]:
    return [messages for group in prompt_sets().values() for messages in group]


def lossless_answers(executor: ReferenceExecutor, tokens: int) -> list[list[int]]:
    """The answers without any codec (float32 frames): what the model itself says."""
    params = SamplingParams(temperature=0.0, max_tokens=tokens)
    return [coded_generate(executor, executor.text.encode_chat(messages), params, [15], LOSSLESS,
                           executor.manifest.stop_set) for messages in prompts()]


def greedy_by_layout(executor: ReferenceExecutor, tokens: int, inner_rounding: bool,
                     lossless: list[list[int]]) -> dict:
    settings = CodecPresets().get(None)
    params = SamplingParams(temperature=0.0, max_tokens=tokens)
    answers = {name: [coded_generate(executor, executor.text.encode_chat(messages), params, cuts, settings,
                                     executor.manifest.stop_set, inner_rounding=inner_rounding)
                      for messages in prompts()]
               for name, cuts in LAYOUTS.items()}
    reference = answers["2 stages, cut 15"]
    report = {}
    for name, runs in answers.items():
        differing = [index for index, (run, base) in enumerate(zip(runs, reference, strict=True)) if run != base]
        first = [first_difference(runs[j], reference[j]) for j in differing]
        same_as_lossless = sum(run == want for run, want in zip(runs, lossless, strict=True))
        report[name] = {"cuts": LAYOUTS[name], "prompts": len(runs), "differ_from_cut_15": len(differing),
                        "first_differing_token": first, "equal_to_the_float32_answer": same_as_lossless}
        print(f"{name:18} answers that differ from the cut-15 layout: {len(differing)}/{len(runs)} "
              f"(first differing token at {first}); equal to the float32 answer: {same_as_lossless}", flush=True)
    return report


def agreement_by_cut_set(executor: ReferenceExecutor, tokens: int, lossless: list[list[int]]) -> dict:
    """Greedy answers equal to the float32 answer when the hidden state is rounded at a fixed
    set of allowed cuts (every k-th layer): what a planner restricted to those cuts would give."""
    settings = CodecPresets().get(None)
    params = SamplingParams(temperature=0.0, max_tokens=tokens)
    layers = executor.manifest.model.layers
    report = {}
    for k in (1, 2, 3, 5, 10, 15):
        cuts = list(range(k, layers, k))
        runs = [coded_generate(executor, executor.text.encode_chat(messages), params, cuts, settings,
                               executor.manifest.stop_set, inner_rounding=False) for messages in prompts()]
        same = sum(run == want for run, want in zip(runs, lossless, strict=True))
        report[f"every {k}"] = {"roundings_per_token": len(cuts) + 2, "equal_to_the_float32_answer": same}
        print(f"rounding every {k:2} layers ({len(cuts) + 2:2} roundings): {same}/{len(runs)} answers equal "
              "the float32 answer", flush=True)
    return report


def perplexity_by_rule(executor: ReferenceExecutor, count: int) -> dict:
    settings = CodecPresets().get(None)
    ids = executor.text.encode(DEFAULT_TEXT.read_text())[:count]
    layers = executor.manifest.model.layers
    baseline = perplexity(ids, executor.prompt_logits).perplexity
    rules = {"1 stage (cuts: none)": [], "2 stages (cut 15)": [15], "3 stages (cuts 10, 20)": [10, 20],
             **{f"every {k}th layer (cuts allowed there only)": list(range(k, layers, k)) for k in (5, 3, 2)},
             "every layer (layout-independent)": list(range(1, layers))}
    report = {"tokens": len(ids), "no_codec": baseline, "rules": {}}
    print(f"perplexity without the codec, {len(ids)} tokens: {baseline:.4f}")
    for name, cuts in rules.items():
        logits, _ = coded_logits(executor, ids, cuts, settings, 256)
        value = perplexity(ids, lambda _ids, logits=logits: logits).perplexity
        report["rules"][name] = {"roundings_per_token": len(cuts) + 2, "perplexity": value,
                                 "change_percent": (value / baseline - 1) * 100}
        print(f"{name:34} roundings {len(cuts) + 2:2}  perplexity {value:.4f} ({(value / baseline - 1) * 100:+.3f}%)",
              flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=48, help="greedy tokens per prompt")
    parser.add_argument("--ppl-tokens", type=int, default=1024)
    args = parser.parse_args()
    directory, _ = convert(default_model_path(), progress=False, cache_root=shard_cache())
    executor = ReferenceExecutor(directory, threads=2)
    lossless = lossless_answers(executor, args.tokens)
    report = {"model": executor.manifest.model.name, "codec": "int8 (block 32, the default)",
              "greedy_rounding_at_cuts_only": greedy_by_layout(executor, args.tokens, False, lossless),
              "greedy_rounding_every_layer": greedy_by_layout(executor, args.tokens, True, lossless),
              "allowed_cut_sets": agreement_by_cut_set(executor, args.tokens, lossless),
              "perplexity": perplexity_by_rule(executor, args.ppl_tokens)}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "layout_rounding.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
