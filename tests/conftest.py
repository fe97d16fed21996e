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


@pytest.fixture(scope="session")
def gemma_dir() -> Path:
    """Shards of Gemma 3 270M, the second model family (installed and converted by
    `make setup-test`; assembled from its PyPI chunk packages)."""
    from shards.convert import convert
    from shards.gguf_model import gemma3_270m_path

    directory, _ = convert(gemma3_270m_path(), progress=False)
    return directory


@pytest.fixture(scope="session")
def gemma_reference(gemma_dir: Path):
    from shards.executor import ReferenceExecutor

    return ReferenceExecutor(gemma_dir, threads=2, verify=False)
