"""Fixtures shared by every test level: the converted default model."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shard_dir() -> Path:
    """Shards of the default model (converted once by set-up; cached)."""
    from shards.convert import convert
    from shards.gguf_model import default_model_path

    directory, _ = convert(default_model_path(), progress=False)
    return directory


@pytest.fixture(scope="session")
def reference(shard_dir: Path):
    from shards.executor import ReferenceExecutor

    return ReferenceExecutor(shard_dir, threads=2)
