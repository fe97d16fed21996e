"""`tabswarm bench`, registered by this package (pyproject entry point group
`tabswarm.commands`), so the product's CLI never imports the benchmarks: it finds this
object, adds its options to its parser and calls `run` with the parsed arguments (`model`
set to the model the CLI resolved)."""

from __future__ import annotations

import argparse

from bench.options import add_arguments

HELP = "decode/prefill tok/s: llama.cpp, the reference, 1 and 2 tabs (writes bench/results/bench.json)"


def run(args: argparse.Namespace) -> int:
    from bench.suite import main  # heavy (Playwright, the engine): only when the command runs

    return main(args)


class BenchCommand:
    help = HELP
    add_arguments = staticmethod(add_arguments)
    run = staticmethod(run)


command = BenchCommand()
