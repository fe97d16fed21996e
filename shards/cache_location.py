"""Where tabswarm keeps what it makes once: converted shards, assembled model files, digests.

Owns the one rule that turns the environment (TABSWARM_CACHE, else XDG_CACHE_HOME/tabswarm,
else ~/.cache/tabswarm) into that folder, and its two subfolders. Pure: an entry point (the
CLI, a benchmark's main) passes the environment in and hands the folders down through its
configuration; nothing here or below reads os.environ.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def cache_root_from(environ: Mapping[str, str]) -> Path:
    if environ.get("TABSWARM_CACHE"):
        return Path(environ["TABSWARM_CACHE"]).expanduser()
    base = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME", "~")) / ".cache")
    return Path(base).expanduser() / "tabswarm"


def shards_dir(cache_root: Path) -> Path:
    """Converted shard sets, one folder per (GGUF digest, converter version, weight format)."""
    return cache_root / "shards"


def models_dir(cache_root: Path) -> Path:
    """Model files assembled from PyPI chunk wheels."""
    return cache_root / "models"
