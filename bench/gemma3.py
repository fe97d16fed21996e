"""Gemma 3 270M (the second model family): answers, and perplexity next to llama.cpp's.

- greedy answers of the reference executor to a few chat prompts (Gemma 3 270M is a
  base model: expect continuations more than answers);
- perplexity on the Moby-Dick text with llama.cpp's own definition, computed both ways
  on the same tokens: `llama-perplexity -c C --chunks N` tokenizes the file with BOS,
  cuts it into chunks of C tokens, puts BOS first in each, and scores the second half
  of every chunk (positions C/2 .. C-1); ours does the same with the reference executor
  (its tokenizer gives llama.cpp's ids, checked here on the file's first chunk).
Decode and prefill speed through 1 and 2 tabs next to llama.cpp come from
`tabswarm --model gemma3-270m bench` (bench/results/bench_gemma3.json).
Usage: .venv/bin/python -m bench.gemma3   (writes bench/results/gemma3.json)
"""

from __future__ import annotations

import argparse
import json
import math
import re
import tempfile
from pathlib import Path

from bench.caches import shard_cache
from bench.llama_anchor import binaries, run_program
from shards.convert import convert
from shards.executor import ReferenceExecutor
from shards.gguf_model import gemma3_270m_path
from shards.perplexity import log_softmax
from shards.sampling import SamplingParams

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT / "data" / "moby-dick.txt"
PROMPTS = ["What is the capital of France?", "Write a short poem about the sea.",
           "Explain in one sentence why the sky is blue."]
FINAL = re.compile(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)")


def chunked_perplexity(executor: ReferenceExecutor, tokens: list[int], context: int, chunks: int) -> float:
    bos = executor.manifest.bos_id
    assert bos is not None
    total, count = 0.0, 0
    first = context // 2
    for chunk in range(chunks):
        ids = tokens[chunk * context:(chunk + 1) * context]
        ids[0] = bos
        log_probs = log_softmax(executor.prompt_logits(ids))            # (context, vocab)
        for position in range(first, context - 1):
            total -= float(log_probs[position, ids[position + 1]])
            count += 1
    return math.exp(total / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--chunks", type=int, default=4)
    args = parser.parse_args()
    gguf = gemma3_270m_path()
    directory, manifest = convert(gguf, progress=False, cache_root=shard_cache())
    executor = ReferenceExecutor(directory, threads=2, verify=False)
    report: dict = {"model": manifest.model.name, "gguf": gguf.name,
                    "layer_kinds": [spec.attention for spec in manifest.model.layer_specs],
                    "tensor_types": manifest.weight_format["gguf_tensor_types"]}
    answers = []
    for prompt in PROMPTS:
        ids = executor.text.encode_chat([{"role": "user", "content": prompt}])
        tokens = [step.token for step in executor.generate(ids, SamplingParams(max_tokens=32))]
        answers.append({"prompt": prompt, "answer": executor.text.decode(
            [token for token in tokens if token not in manifest.stop_set])})
        print(f"> {prompt}\n  {answers[-1]['answer']!r}", flush=True)
    report["greedy_answers"] = answers

    text = TEXT.read_text()[:60000]
    tokens = executor.text.encode(text)
    needed = args.context * args.chunks
    if len(tokens) < needed:
        raise SystemExit(f"the text gives {len(tokens)} tokens; {needed} are needed")
    ours = chunked_perplexity(executor, tokens, args.context, args.chunks)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write(text)
    folder = binaries()
    output = run_program(folder, "llama-perplexity", ["-m", str(gguf), "-f", handle.name, "-c", str(args.context),
                                                      "--chunks", str(args.chunks), "-t", "2", "--no-repack"])
    match = FINAL.search(output)
    if match is None:
        raise RuntimeError(f"no perplexity in llama-perplexity's output: {output[-1500:]}")
    tokenized = run_program(folder, "llama-tokenize", ["-m", str(gguf), "-f", handle.name, "--ids", "--log-disable"])
    theirs_ids = json.loads(tokenized.strip().splitlines()[-1])
    report["perplexity"] = {
        "definition": f"llama-perplexity: {args.chunks} chunks of {args.context} tokens (BOS first), "
                      "second half of each chunk scored",
        "tokens_scored": args.chunks * (args.context - 1 - args.context // 2),
        "tabswarm_reference": round(ours, 4), "llama_cpp": float(match.group(1)),
        "llama_cpp_error": float(match.group(2)),
        "same_token_ids": theirs_ids[:needed] == tokens[:needed],
        "relative_difference": round(ours / float(match.group(1)) - 1, 5)}
    print(json.dumps(report["perplexity"], indent=1), flush=True)
    out = ROOT / "bench" / "results" / "gemma3.json"
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
