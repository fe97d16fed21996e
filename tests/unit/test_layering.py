"""The tree's arrows point one way: the product (coordinator, shards, protocol) never imports
the benchmarks, protocol imports nothing of the project but itself, and `tabswarm bench`
reaches the benchmarks through the entry point they register."""

from __future__ import annotations

import ast
from pathlib import Path

from coordinator.cli import build_parser, plugin_commands

ROOT = Path(__file__).resolve().parents[2]


def imported_packages(folder: str) -> dict[str, set[str]]:
    """Top-level package of every import in each module under `folder`."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_the_product_never_imports_the_benchmarks():
    offenders = [module for folder in ("coordinator", "shards", "protocol")
                 for module, names in imported_packages(folder).items() if "bench" in names]
    assert offenders == []


def test_protocol_is_a_leaf():
    offenders = {module: names & {"coordinator", "shards", "bench"}
                 for module, names in imported_packages("protocol").items() if names & {"coordinator", "shards", "bench"}}
    assert offenders == {}


def test_bench_command_comes_from_its_entry_point():
    plugins = plugin_commands()
    assert "bench" in plugins
    args = build_parser(plugins).parse_args(["bench", "--tokens", "8", "--skip-anchor"])
    assert (args.command, args.tokens, args.skip_anchor) == ("bench", 8, True)
