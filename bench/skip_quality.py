"""Layer-skipping quality harness: the router's policies on the in-process reference executor.

For each policy and knob value: skip % of (token, layer) executions after the protected
first tokens, node-bypass % of (token, node) pairs for 2, 3, 5 and 10 equal nodes,
perplexity on the Moby-Dick window (teacher-forced, one token at a time, skipped layers
still write K/V), and greedy agreement with full depth on chat prompts. Also an ablation:
skipped layers that do NOT write K/V. Runs the same coordinator.engine.router code as the
pipeline. Writes bench/results/skip_quality.json and docs/skip_quality.png.

Usage: .venv/bin/python -m bench.skip_quality [--tokens 1024] [--quick] [--only PREFIX] [--table]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.caches import shard_cache
from coordinator.cli import DEFAULT_TEXT
from coordinator.engine.head_pruning import HeadStatistics, StreamHeadMasks, observe_heads
from coordinator.engine.router import (
    LayerStatistics,
    NodeDecision,
    RouterConfig,
    TokenState,
    decide,
    observe,
    start_token,
)
from coordinator.swarm.planner import even_stages
from protocol.control import HEAD_SAMPLE_INTERVAL
from shards.convert import convert
from shards.executor import ReferenceExecutor
from shards.gguf_model import default_model_path
from shards.perplexity import log_softmax

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["What is the capital of France?", "Name three colours.", "Why is the sky blue?",
           "Write a haiku about the sea.", "How do I boil an egg?"]


@dataclass
class RunResult:
    perplexity: float
    skip_percent: float
    bypass_percent: dict[str, float]
    tokens: list[int]
    seconds: float
    decide_microseconds: float
    stats: LayerStatistics
    head_stats: HeadStatistics
    heads_pruned_percent: float


def run(executor: ReferenceExecutor, ids: list[int], config: RouterConfig, stages: list[tuple[int, int]],
        write_kv: bool = True, score: bool = True, generate: int = 0,
        stats: LayerStatistics | None = None, head_stats: HeadStatistics | None = None,
        oracle: float = 0.0, node_oracle: float = 0.0) -> RunResult:
    """Teacher-forced over ids (score), or greedy after the prompt ids (generate > 0).

    When generating, prompt tokens are never routed, as in the pipeline (a prompt travels
    as one prefill frame without a skip mask); `stats` lets a run start from warmed
    running statistics, as on a server that has been serving. Head contributions are
    sampled every HEAD_SAMPLE_INTERVAL positions, as the workers report them.

    oracle / node_oracle: upper bounds no router can reach (they look at the answer): run
    the layer (node), and if its true r (node update ratio) is under the bound, discard
    the update; a discarded node's K/V are recomputed from its input, as a bypass would.
    """
    layers, heads = executor.manifest.model.layers, executor.manifest.model.heads
    stats = stats if stats is not None else LayerStatistics(layers)
    head_stats = head_stats if head_stats is not None else HeadStatistics(layers, heads)
    head_masks = StreamHeadMasks(heads, HEAD_SAMPLE_INTERVAL)
    head_slots, heads_masked = 0, 0
    token = TokenState()
    routable_from = len(ids) if generate else 0
    stream = 77_000
    nll, produced, skip_rows = [], [], []
    decide_seconds, decisions = 0.0, 0
    started = time.perf_counter()
    sequence = list(ids)
    position = 0
    try:
        while position < len(sequence):
            start_token(token)
            hidden = executor.embed([sequence[position]])
            positions = np.array([[position]], dtype=np.int64)
            # A prompt position travels in the prompt frame (routable_from rows), as in the pipeline.
            head_masks.update(config, head_stats, position, 1 if position >= routable_from else routable_from)
            sample_heads = position % HEAD_SAMPLE_INTERVAL == 0
            row = []
            for start, end in stages:
                began = time.perf_counter()
                decision = (decide(config, stats, token, position, start, end) if position >= routable_from
                            else NodeDecision(0, False))
                decide_seconds += time.perf_counter() - began
                decisions += 1
                ratios, norms, node_input = [], [], hidden
                for offset, layer in enumerate(range(start, end)):
                    skip = bool(decision.skip_mask >> offset & 1)
                    row.append(skip)
                    if skip:
                        if write_kv:
                            executor.stack.forward(stream, hidden, positions, skip=frozenset({layer}),
                                                   layers=range(layer, layer + 1))
                        else:  # ablation: the cache gets zeros for this position instead of K/V
                            _write_zero_kv(executor, stream, layer)
                        continue
                    masks = head_masks.masks_for(layer, layer + 1)
                    report = executor.stack.forward_reporting(
                        stream, hidden, positions, layers=range(layer, layer + 1),
                        head_masks={layer: np.array(masks[0], dtype=np.float32)} if masks else None,
                        measure_heads=sample_heads)
                    if position >= config.protect_tokens:
                        head_slots += heads
                        heads_masked += masks[0].count(0) if masks else 0
                    if sample_heads:
                        observe_heads(config, head_stats, position, layer, [layer], report.head_ratios)
                    if (oracle > 0 and position >= max(config.protect_tokens, routable_from)
                            and layer not in (0, layers - 1) and report.ratios[0] < oracle):
                        row[-1] = True   # discard the update; its K/V came from the unchanged input
                        continue
                    ratios.extend(report.ratios)
                    norms.extend(report.norms)
                    hidden = report.hidden
                node_ratio = float(np.linalg.norm(hidden - node_input) / np.linalg.norm(node_input))
                if (node_oracle > 0 and position >= max(config.protect_tokens, routable_from)
                        and start > 0 and end < layers and node_ratio < node_oracle):
                    _drop_last_position(executor, stream, range(start, end))
                    executor.stack.forward(stream, node_input, positions, skip=frozenset(range(start, end)),
                                           layers=range(start, end))
                    row[-(end - start):] = [True] * (end - start)
                    hidden = node_input
                observe(config, stats, token, position, start, end, decision, ratios, norms, node_ratio)
            logits = executor.logits(hidden)[0, -1]
            if position >= config.protect_tokens:
                skip_rows.append(row)
            if score and position + 1 < len(sequence):
                nll.append(-float(log_softmax(logits[None])[0, sequence[position + 1]]))
            if generate and position + 1 == len(sequence) and len(produced) < generate:
                produced.append(int(np.argmax(logits)))
                sequence.append(produced[-1])
            position += 1
    finally:
        executor.stack.release(stream)
    skips = np.array(skip_rows, dtype=bool) if skip_rows else np.zeros((0, layers), dtype=bool)
    bypass = {}
    for nodes in (2, 3, 5, 10):
        cuts = [(s.layer_start, s.layer_end) for s in even_stages(layers, nodes)]
        whole = [skips[:, a:b].all(axis=1) for a, b in cuts] if len(skips) else []
        bypass[str(nodes)] = float(np.mean(whole) * 100) if len(skips) else 0.0
    return RunResult(perplexity=math.exp(np.mean(nll)) if nll else float("nan"),
                     skip_percent=float(skips.mean() * 100) if len(skips) else 0.0, bypass_percent=bypass,
                     tokens=produced, seconds=time.perf_counter() - started,
                     decide_microseconds=decide_seconds / max(decisions, 1) * 1e6, stats=stats,
                     head_stats=head_stats, heads_pruned_percent=heads_masked / max(head_slots, 1) * 100)


def _drop_last_position(executor: ReferenceExecutor, stream: int, layers: range) -> None:
    from shards.executor import LayerCache

    caches = executor.stack.streams[stream].caches
    for layer in layers:
        caches[layer] = LayerCache(caches[layer].key[:, :, :-1], caches[layer].value[:, :, :-1])


def _write_zero_kv(executor: ReferenceExecutor, stream: int, layer: int) -> None:
    from shards.executor import LayerCache

    state = executor.stack.streams[stream]
    cache = state.caches[layer]
    zeros = np.zeros((1, cache.key.shape[1], 1, cache.key.shape[3]), dtype=np.float32)
    state.caches[layer] = LayerCache(np.concatenate([cache.key, zeros], 2), np.concatenate([cache.value, zeros], 2))


def agreement(executor: ReferenceExecutor, setting: Setting, full: dict[str, list[int]],
              length: int, warmed: LayerStatistics, warmed_heads: HeadStatistics) -> float:
    """Mean fraction of the full-depth greedy continuation reproduced before the first difference
    (or before full depth's end of sequence)."""
    fractions = []
    for prompt in PROMPTS:
        ids = executor.text.encode_chat([{"role": "user", "content": prompt}])
        stages = setting.stages or [(layer, layer + 1) for layer in range(executor.manifest.model.layers)]
        tokens = run(executor, ids, setting.config, stages, score=False, generate=length, stats=copy.deepcopy(warmed),
                     head_stats=copy.deepcopy(warmed_heads), oracle=setting.oracle,
                     node_oracle=setting.node_oracle).tokens
        reference = full[prompt]
        end = reference.index(executor.manifest.eos_id) + 1 if executor.manifest.eos_id in reference else length
        same = next((i for i, (a, b) in enumerate(zip(tokens[:end], reference[:end], strict=False)) if a != b), end)
        fractions.append(same / end)
    return float(np.mean(fractions))


@dataclass(frozen=True)
class Setting:
    name: str
    config: RouterConfig
    stages: list[tuple[int, int]] | None = None   # None: decisions layer by layer
    oracle: float = 0.0
    node_oracle: float = 0.0


def sweeps(quick: bool) -> list[Setting]:
    settings = [Setting("full depth", RouterConfig())]
    thresholds = (0.12, 0.16) if quick else (0.06, 0.1, 0.15, 0.17, 0.2)
    settings += [Setting(f"predictor t={t}", RouterConfig(policy="predictor", threshold=t)) for t in thresholds]
    capacities = (0.6,) if quick else (0.85, 0.75, 0.65)
    settings += [Setting(f"synapse c={c}", RouterConfig(policy="synapse", capacity=c)) for c in capacities]
    ten = [(s.layer_start, s.layer_end) for s in even_stages(30, 10)]
    for nodes in ((10,) if quick else (10, 5)):
        stages = [(s.layer_start, s.layer_end) for s in even_stages(30, nodes)]
        for threshold in ((0.15,) if quick else ((0.02, 0.04, 0.06, 0.09) if nodes == 10 else (0.02, 0.04, 0.06))):
            settings.append(Setting(f"node {nodes}n t={threshold}", RouterConfig(policy="node", node_threshold=threshold),
                                    stages))
    fractions = (0.05,) if quick else (0.02, 0.035, 0.05, 0.1)
    settings += [Setting(f"heads f={f}", RouterConfig(prune_heads=f)) for f in fractions]
    settings += [Setting(f"oracle layer r<{t}", RouterConfig(), oracle=t) for t in ((0.16,) if quick else (0.12, 0.16, 0.2))]
    settings += [Setting(f"oracle node 10n r<{t}", RouterConfig(), ten, node_oracle=t)
                 for t in ((0.2,) if quick else (0.15, 0.2, 0.25, 0.35))]
    ablation = ROOT / "bench" / "results" / "attention_ablation.json"
    if ablation.exists():   # static attention-only skipping: the cheapest layers from a disjoint window
        candidates = json.loads(ablation.read_text())["candidates"]
        for count in sorted({min(count, len(candidates)) for count in (2, 4, 6, 8)} - {0}):
            chosen = candidates[:count]
            pairs = frozenset((layer, head) for layer in chosen for head in range(9))
            settings.append(Setting(f"attention off {','.join(map(str, sorted(chosen)))}",
                                    RouterConfig(head_script=pairs)))
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--agree", type=int, default=24, help="greedy tokens per chat prompt")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", metavar="PREFIX",
                        help="run only settings whose name starts with PREFIX (plus full depth) and merge "
                             "them into the saved results")
    parser.add_argument("--table", action="store_true", help="print the saved results as a markdown table")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads((ROOT / "bench" / "results" / "skip_quality.json").read_text())))
        return
    directory, _ = convert(default_model_path(), progress=False, cache_root=shard_cache())
    executor = ReferenceExecutor(directory, threads=2)
    ids = executor.text.encode(DEFAULT_TEXT.read_text())[: 256 if args.quick else args.tokens]
    layers = executor.manifest.model.layers
    single = [(layer, layer + 1) for layer in range(layers)]
    full_runs = {}
    for prompt in PROMPTS:
        prompt_ids = executor.text.encode_chat([{"role": "user", "content": prompt}])
        full_runs[prompt] = run(executor, prompt_ids, RouterConfig(), single, score=False, generate=args.agree).tokens
    # Head statistics as a running server would have them: sampled on a disjoint calibration
    # window (512 tokens starting at token 4096), full depth.
    calibration = executor.text.encode(DEFAULT_TEXT.read_text())[4096:4096 + 512]
    calibrated = run(executor, calibration, RouterConfig(), single, score=False).head_stats
    results = []
    baseline = None
    chosen = [setting for setting in sweeps(args.quick)
              if not args.only or setting.name == "full depth" or setting.name.startswith(args.only)]
    for setting in chosen:
        name, config, stages = setting.name, setting.config, setting.stages
        warm_heads = copy.deepcopy(calibrated) if config.prune_heads > 0 else None
        result = run(executor, ids, config, stages or single, head_stats=warm_heads, oracle=setting.oracle,
                     node_oracle=setting.node_oracle)
        baseline = baseline or result.perplexity
        entry = {"name": name, "policy": config.policy, "threshold": config.threshold, "capacity": config.capacity,
                 "node_threshold": config.node_threshold, "nodes": len(stages) if stages else None,
                 "prune_heads": config.prune_heads, "heads_pruned_percent": result.heads_pruned_percent,
                 "perplexity": result.perplexity, "perplexity_change_percent": (result.perplexity / baseline - 1) * 100,
                 "skip_percent": result.skip_percent, "bypass_percent": result.bypass_percent,
                 "oracle": setting.oracle, "node_oracle": setting.node_oracle,
                 "greedy_agreement": agreement(executor, setting, full_runs, args.agree,
                                               result.stats, result.head_stats),
                 "decide_microseconds": result.decide_microseconds, "seconds": result.seconds}
        results.append(entry)
        print(f"{name:22} ppl {result.perplexity:8.3f} ({entry['perplexity_change_percent']:+6.2f}%)  "
              f"skip {result.skip_percent:5.2f}%  bypass 2/3/5/10n "
              + "/".join(f"{result.bypass_percent[n]:.2f}" for n in ("2", "3", "5", "10"))
              + f"%  heads {result.heads_pruned_percent:5.2f}%  agree {entry['greedy_agreement']:.2f}  decide {result.decide_microseconds:.1f} µs", flush=True)
    out = ROOT / "bench" / "results" / ("skip_quality_quick.json" if args.quick else "skip_quality.json")
    out.parent.mkdir(exist_ok=True)
    if args.only:   # merge into the saved sweep: replace same-named settings, keep the rest
        saved = json.loads(out.read_text())
        fresh = {entry["name"]: entry for entry in results}
        kept = [fresh.pop(entry["name"], entry) for entry in saved["results"]]
        saved["results"] = kept + list(fresh.values())
        results = saved["results"]
        out.write_text(json.dumps(saved, indent=1) + "\n")
    else:
        # KV-coherence ablation at the predictor's middle setting.
        ablation_config = RouterConfig(policy="predictor", threshold=0.15)
        coherent = run(executor, ids, ablation_config, single)
        incoherent = run(executor, ids, ablation_config, single, write_kv=False)
        ablation = {"skip_percent": coherent.skip_percent, "perplexity_with_kv": coherent.perplexity,
                    "perplexity_without_kv": incoherent.perplexity}
        print(f"KV ablation (predictor t=0.15): with K/V {coherent.perplexity:.3f}, "
              f"zeros instead {incoherent.perplexity:.3f}")
        out.write_text(json.dumps({"tokens": len(ids), "baseline_perplexity": baseline, "results": results,
                                   "kv_ablation": ablation}, indent=1) + "\n")
    print(f"wrote {out}")
    _plot(results, ROOT / "docs" / ("skip_quality_quick.png" if args.quick else "skip_quality.png"))


def markdown_table(report: dict) -> str:
    lines = ["| policy | skip % | node bypass % (2/3/5/10 nodes) | heads masked % | perplexity | Δ "
             "| greedy agreement | decide µs |",
             "|---|---|---|---|---|---|---|---|"]
    for entry in report["results"]:
        bypass = "/".join(f"{entry['bypass_percent'][n]:.2f}" for n in ("2", "3", "5", "10"))
        lines.append(f"| {entry['name']} | {entry['skip_percent']:.2f} | {bypass} | "
                     f"{entry.get('heads_pruned_percent', 0.0):.2f} | {entry['perplexity']:.3f} | "
                     f"{entry['perplexity_change_percent']:+.2f}% | {entry['greedy_agreement']:.2f} | "
                     f"{entry['decide_microseconds']:.1f} |")
    ablation = report["kv_ablation"]
    lines.append("")
    lines.append(f"K/V ablation (predictor t=0.15, {ablation['skip_percent']:.2f}% skipped): perplexity "
                 f"{ablation['perplexity_with_kv']:.3f} when skipped layers write K/V, "
                 f"{ablation['perplexity_without_kv']:.3f} when they leave zeros.")
    return "\n".join(lines)


def _plot(results: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is optional; the JSON holds the numbers
        print("matplotlib not installed: no plot")
        return
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for policy, marker in (("predictor", "o"), ("synapse", "s"), ("node", "^")):
        points = [r for r in results if r["policy"] == policy and not r.get("prune_heads")
                  and not r.get("oracle") and not r.get("node_oracle")]
        if policy == "node":
            xs = [r["bypass_percent"][str(r["nodes"])] for r in points]
            axis.plot(xs, [r["perplexity_change_percent"] for r in points], marker, label="node bypass (% of token-node pairs)")
        else:
            axis.plot([r["skip_percent"] for r in points], [r["perplexity_change_percent"] for r in points],
                      marker + "-", label=f"{policy} (% of layer executions)")
    heads = [r for r in results if r.get("prune_heads", 0) > 0]
    axis.plot([r["heads_pruned_percent"] for r in heads], [r["perplexity_change_percent"] for r in heads], "D-",
              label="head pruning (% of head executions masked)")
    for key, label, marker in (("oracle", "oracle per layer (upper bound)", "x--"),
                               ("node_oracle", "oracle node bypass, 10 nodes (upper bound)", "+--")):
        points = [r for r in results if r.get(key)]
        xs = [r["bypass_percent"]["10"] if key == "node_oracle" else r["skip_percent"] for r in points]
        axis.plot(xs, [r["perplexity_change_percent"] for r in points], marker, label=label)
    axis.axhline(5, color="grey", linestyle=":", linewidth=1)
    axis.axhline(1, color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("skipped %")
    axis.set_ylabel("perplexity change %")
    axis.set_title("SmolLM2-135M: training-free skipping on Moby-Dick")
    axis.legend()
    path.parent.mkdir(exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
