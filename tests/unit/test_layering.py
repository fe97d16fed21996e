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


def coordinator_modules_imported(folder: str) -> dict[str, set[str]]:
    """For each module under coordinator/`folder`, the coordinator modules it imports (dotted)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "coordinator" / folder).rglob("*.py")):
        names = {node.module for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("coordinator.")}
        found[str(path.relative_to(ROOT))] = names
    return found


SUBPACKAGE_ORDER = ["swarm", "trust", "engine", "api"]   # each may import those before it, never after


def test_the_coordinator_subpackages_import_downwards_only():
    entry_points = {"coordinator.app", "coordinator.cli", "coordinator.local_swarm"}
    offenders = []
    for rank, package in enumerate(SUBPACKAGE_ORDER):
        above = set(SUBPACKAGE_ORDER[rank + 1:])
        offenders += [(module, name) for module, names in coordinator_modules_imported(package).items()
                      for name in names if name.split(".")[1] in above or name in entry_points]
    assert offenders == []


def test_the_shared_types_are_a_leaf():
    assert imported_packages("coordinator")["coordinator/types.py"] <= {"__future__", "typing"}


def reads_environment(path: Path) -> bool:
    """os.environ or os.getenv used as code (a docstring naming them does not count)."""
    return any(isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")
               and isinstance(node.value, ast.Name) and node.value.id == "os"
               for node in ast.walk(ast.parse(path.read_text())))


def test_only_entry_points_read_the_environment():
    """Configuration reaches convert and the model fetcher from the config tree: nothing in shards/
    or protocol/ reads the environment (the CLI and the benchmarks' mains do, once, through
    shards.cache_location)."""
    readers = [str(path.relative_to(ROOT)) for folder in ("shards", "protocol")
               for path in (ROOT / folder).rglob("*.py") if reads_environment(path)]
    assert readers == []
    assert reads_environment(ROOT / "coordinator" / "cli.py")   # the check can see a reader
