"""The options of `tabswarm bench` (argparse only: the CLI builds its parser without
importing the benchmark itself)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "bench.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", type=int, default=64, help="decode tokens per request (llama-bench -n)")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="prefill prompt length (llama-bench -p)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="WASM threads per tab")
    parser.add_argument("--tabs", default="1,2", help="tab counts to measure, e.g. 1,2 (a model no tab can hold "
                                                       "alone: 2)")
    parser.add_argument("--memory", type=int, default=None, metavar="MB", help="memory each tab offers (?memory=)")
    parser.add_argument("--speed-only", action="store_true",
                        help="decode and prefill only (no speculation, hop or metrics side-by-sides)")
    parser.add_argument("--skip-anchor", action="store_true", help="leave llama.cpp out")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
