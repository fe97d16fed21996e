"""A model no single tab can hold, served by tabs that each give less than the whole of it.

For each layout (N tabs offering M MB each, `?memory=M`), on this machine, with the
coordinator as its own process (`tabswarm serve`, so its memory and CPU are its own):
- the tabs join cold (empty browser cache), then again warm (closed and reopened, layers
  from Cache Storage): per tab the layers it holds, the memory it gave and what the browser
  measured it using, bytes downloaded, load time;
- three coding prompts answered greedily (`--tokens`), each checked against the reference
  executor's tokens in the same compute format;
- the coordinator: resident memory (now and peak), CPU ms per generated token (embedding,
  head, relaying, checks), and what its result checks cost per checked step and per row.
Next to llama.cpp on the same GGUF: its greedy tokens for the same prompt ids
(llama-server, temperature 0) — tokens in common from the start — and perplexity on the
evaluation text with llama-perplexity's definition, computed both ways on the same tokens.
Usage: .venv/bin/python -m bench.big_model [--model qwen2.5-coder-1.5b] [--layouts 2x1024,4x512]
       (writes bench/results/big_model_<model>.json)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.caches import model_cache, shard_cache
from bench.llama_anchor import binaries, run_program
from coordinator.swarm.headless import HeadlessWorkers, worker_url
from shards.convert import convert
from shards.executor import ReferenceExecutor
from shards.gguf_model import resolve_model
from shards.perplexity import log_softmax
from shards.sampling import SamplingParams

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT / "data" / "moby-dick.txt"
PROMPTS = ["Write a Python function that checks whether a string is a palindrome.",
           "Write a JavaScript function that returns the largest number in an array.",
           "Explain what this does: `squares = [x * x for x in range(10) if x % 2 == 0]`"]
SECRET = "bench-join-secret"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def process_memory(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon"):
            fields[key] = int(value.split()[0]) / 1024
    return {"rss_mb": round(fields["VmRSS"]), "peak_rss_mb": round(fields["VmHWM"]), "anon_mb": round(fields["RssAnon"])}


def cpu_seconds(pid: int) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def chunked_perplexity(executor: ReferenceExecutor, tokens: list[int], context: int, chunks: int) -> float:
    """llama-perplexity's definition: chunks of `context` tokens (BOS first where the model adds
    one), the second half of every chunk scored."""
    total, count, first = 0.0, 0, context // 2
    for chunk in range(chunks):
        ids = tokens[chunk * context:(chunk + 1) * context]
        if executor.manifest.add_bos and executor.manifest.bos_id is not None:
            ids[0] = executor.manifest.bos_id
        log_probs = log_softmax(executor.prompt_logits(ids))
        for position in range(first, context - 1):
            total -= float(log_probs[position, ids[position + 1]])
            count += 1
    return math.exp(total / count)


def reference_side(shard_dir: Path, gguf: Path, tokens: int, context: int, chunks: int) -> dict[str, Any]:
    executor = ReferenceExecutor(shard_dir, threads=2, verify=False)
    answers = []
    for prompt in PROMPTS:
        ids = executor.text.encode_chat([{"role": "user", "content": prompt}])
        out = [step.token for step in executor.generate(ids, SamplingParams(max_tokens=tokens))
               if step.token not in executor.manifest.stop_set]
        answers.append({"prompt": prompt, "prompt_ids": ids, "tokens": out, "text": executor.text.decode(out)})
        print(f"reference ({executor.compute}): {prompt}\n  {answers[-1]['text']!r}", flush=True)
    text = TEXT.read_text()[:40000]
    ids = executor.text.encode(text)
    started = time.perf_counter()
    ours = chunked_perplexity(executor, list(ids), context, chunks)
    print(f"perplexity (ours, {executor.compute}): {ours:.4f} in {time.perf_counter() - started:.0f} s", flush=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write(text)
    folder = binaries()
    output = run_program(folder, "llama-perplexity", ["-m", str(gguf), "-f", handle.name, "-c", str(context),
                                                      "--chunks", str(chunks), "-t", "2", "--no-repack"])
    theirs = float(output.split("Final estimate: PPL = ")[1].split()[0])
    print(f"perplexity (llama-perplexity): {theirs:.4f}", flush=True)
    return {"compute": executor.compute, "answers": answers,
            "perplexity": {"definition": f"{chunks} chunks of {context} tokens of Moby-Dick, second halves scored",
                           "ours": round(ours, 4), "llama_cpp": round(theirs, 4)}}


async def llama_greedy(gguf: Path, answers: list[dict], tokens: int) -> list[dict[str, Any]]:
    """llama.cpp's greedy tokens for the same prompt ids (llama-server /completion)."""
    folder, port = binaries(), free_port()
    server = subprocess.Popen([str(folder / "llama-server"), "-m", str(gguf), "--port", str(port), "-t", "2",
                               "--no-repack", "-c", "2048", "--host", "127.0.0.1"],
                              env={**os.environ, "LD_LIBRARY_PATH": str(folder)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/health") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:   # not listening yet
                    pass
                await asyncio.sleep(0.5)
            for answer in answers:
                body = {"prompt": answer["prompt_ids"], "n_predict": tokens, "temperature": 0, "top_k": 1,
                        "return_tokens": True, "cache_prompt": False}
                async with session.post(f"http://127.0.0.1:{port}/completion", json=body) as response:
                    result = await response.json()
                theirs, ours = result["tokens"], answer["tokens"]
                common = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                              min(len(ours), len(theirs)))
                rows.append({"prompt": answer["prompt"], "tokens_in_common_from_start": common,
                             "compared": min(len(ours), len(theirs)), "llama_cpp_text": result["content"]})
                print(f"llama.cpp agrees for {common}/{rows[-1]['compared']} tokens: {answer['prompt']}", flush=True)
    finally:
        server.terminate()
        server.wait(30)
    return rows


async def status(base: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(base + "/v1/status") as response:
        return await response.json()


async def wait_ready(base: str, workers: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = await status(base)
        if report["ready"] and len(report["workers"]) == workers and not report["replan_pending"]:
            return report
        await asyncio.sleep(1.0)
    raise TimeoutError(f"not ready in {timeout:.0f} s: {report.get('plan_error')} {report.get('workers')}")


def tab_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": w["name"], "layers": w["layers"], "memory_given_mb": w["memory_mb"],
             "memory_used_mb": w["memory_used_mb"], "downloaded_mb": round((w["downloaded_bytes"] or 0) / 2**20, 1),
             "load_s": round((w["load_ms"] or 0) / 1000, 1), "cached": w["cached"]} for w in report["workers"]]


async def open_tabs(headless: HeadlessWorkers, base: str, count: int, memory: int, label: str) -> list[str]:
    return [await headless.open(worker_url(base, f"{label}-{index + 1}", 1, token=SECRET) + f"&memory={memory}")
            for index in range(count)]


async def wait_memory_measured(base: str, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    report = await status(base)
    while time.monotonic() < deadline and not all(w["memory_used_mb"] for w in report["workers"]):
        await asyncio.sleep(1.0)
        report = await status(base)
    return report


async def layout(model: str, count: int, memory: int, reference: dict[str, Any], tokens: int,
                 chromium: str) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (ROOT / "bench" / "results" / f"big_model_{count}x{memory}.log").open("w")
    coordinator = subprocess.Popen([str(ROOT / ".venv" / "bin" / "tabswarm"), "--model", model, "serve", "--host",
                                    "127.0.0.1", "--port", str(port), "--join-secret", SECRET], cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
    headless = HeadlessWorkers(chromium)
    entry: dict[str, Any] = {"tabs": count, "memory_per_tab_mb": memory}
    try:
        for _ in range(600):
            try:
                await status(base)
                break
            except aiohttp.ClientError:   # still loading the head and tables
                await asyncio.sleep(0.5)
        entry["coordinator_idle"] = process_memory(coordinator.pid)
        await headless.start()
        for phase in ("cold", "warm"):
            started = time.perf_counter()
            targets = await open_tabs(headless, base, count, memory, f"big-{phase}")
            await wait_ready(base, count, 1800)
            entry[f"{phase}_join_s"] = round(time.perf_counter() - started, 1)
            report = await wait_memory_measured(base)
            entry[f"{phase}_tabs"] = tab_rows(report)
            print(f"{count} tabs x {memory} MB, {phase} join: {entry[f'{phase}_join_s']} s: {entry[f'{phase}_tabs']}",
                  flush=True)
            if phase == "cold":
                for target in targets:
                    await headless.close_tab(target)
                while (await status(base))["workers"]:
                    await asyncio.sleep(0.5)
        entry |= await answer_prompts(base, coordinator.pid, reference, tokens)
        entry["coordinator_serving"] = process_memory(coordinator.pid)
        await asyncio.sleep(8)   # each tab measures its memory again once quiet after serving
        entry["tabs_after_serving"] = tab_rows(await wait_memory_measured(base))
    finally:
        await headless.stop()
        coordinator.terminate()
        coordinator.wait(60)
    return entry


async def answer_prompts(base: str, pid: int, reference: dict[str, Any], tokens: int) -> dict[str, Any]:
    before, generated, rows = cpu_seconds(pid), 0, []
    async with aiohttp.ClientSession() as session:
        for answer in reference["answers"]:
            body = {"messages": [{"role": "user", "content": answer["prompt"]}], "max_tokens": tokens,
                    "tabswarm": {"return_token_ids": True}}
            async with session.post(base + "/v1/chat/completions", json=body) as response:
                result = await response.json()
            if response.status != 200:
                raise RuntimeError(f"request failed ({response.status}): {result}")
            got = result["choices"][0]["token_ids"]
            usage = result["usage"]
            generated += usage["completion_tokens"]
            rows.append({"prompt": answer["prompt"], "equal_to_reference": got == answer["tokens"],
                         "text": result["choices"][0]["message"]["content"],
                         "decode_tok_s": usage["tabswarm"]["decode_tokens_per_second"],
                         "prefill_tok_s": usage["tabswarm"]["prefill_tokens_per_second"]})
            print(f"  {'=' if rows[-1]['equal_to_reference'] else 'x'} {answer['prompt']}: "
                  f"{usage['tabswarm']['decode_tokens_per_second']} tok/s", flush=True)
    spent = cpu_seconds(pid) - before
    checks = (await status(base))["verification"]
    return {"answers": rows, "coordinator_cpu_ms_per_token": round(1000 * spent / max(generated, 1), 1),
            "verification": checks}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--layouts", default="2x1024,4x512", help="tabs x MB each, comma-separated")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--chunks", type=int, default=2)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the reference and llama.cpp sections of the last results; measure the layouts again")
    args = parser.parse_args()
    gguf = resolve_model(args.model, model_cache())
    shard_dir, manifest = convert(gguf, cache_root=shard_cache())
    out = ROOT / "bench" / "results" / f"big_model_{args.model}.json"
    report: dict[str, Any] = {"model": manifest.model.name, "gguf": gguf.name, "compute": manifest.default_compute}
    if args.reuse and out.exists():
        previous = json.loads(out.read_text())
        report["reference"], report["llama_cpp_greedy"] = previous["reference"], previous["llama_cpp_greedy"]
    else:
        report["reference"] = reference_side(shard_dir, gguf, args.tokens, args.context, args.chunks)
        gc.collect()
        report["llama_cpp_greedy"] = await llama_greedy(gguf, report["reference"]["answers"], args.tokens)
    report["layouts"] = []
    for spec in args.layouts.split(","):
        count, memory = (int(part) for part in spec.split("x"))
        report["layouts"].append(await layout(args.model, count, memory, report["reference"], args.tokens,
                                              args.chromium))
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
