"""Fixtures shared by every test level: the converted default model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import shard_cache


@pytest.fixture(scope="session")
def shard_dir() -> Path:
    """Shards of the default model (converted once by set-up; cached)."""
    from shards.convert import convert
    from shards.gguf_model import default_model_path

    directory, _ = convert(default_model_path(), progress=False, cache_root=shard_cache())
    return directory


@pytest.fixture(scope="session")
def reference(shard_dir: Path):
    from shards.executor import ReferenceExecutor

    return ReferenceExecutor(shard_dir, threads=2)


@pytest.fixture(scope="session")
def float_reference(reference, shard_dir: Path):
    """The reference in float32 compute (what independent float32 implementations are held to)."""
    from shards.executor import ReferenceExecutor

    return reference if reference.compute == "float32" else ReferenceExecutor(shard_dir, threads=2, compute="float32")


@pytest.fixture(scope="session")
def gemma_dir() -> Path:
    """Shards of Gemma 3 270M, the second model family (installed and converted by
    `make setup-test`; assembled from its PyPI chunk packages)."""
    from shards.convert import convert
    from shards.gguf_model import gemma3_270m_path

    directory, _ = convert(gemma3_270m_path(), progress=False, cache_root=shard_cache())
    return directory


@pytest.fixture(scope="session")
def gemma_reference(gemma_dir: Path):
    from shards.executor import ReferenceExecutor

    return ReferenceExecutor(gemma_dir, threads=2, verify=False)


@pytest.fixture(scope="session")
def tiny_qwen_gguf(tmp_path_factory) -> Path:
    """A tiny Qwen2 GGUF (random weights, written at test time: tests/tiny_qwen2.py)."""
    from tests.tiny_qwen2 import write_tiny_qwen2

    return write_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2") / "tiny-qwen2.gguf")


@pytest.fixture(scope="session")
def tiny_qwen_dir(tiny_qwen_gguf: Path, tmp_path_factory) -> Path:
    """Its shards, converted into a cache of the test session's own."""
    from shards.convert import convert

    directory, _ = convert(tiny_qwen_gguf, progress=False, cache_root=tmp_path_factory.mktemp("shard-cache"))
    return directory


@pytest.fixture(scope="session")
def tiny_qwen_reference(tiny_qwen_dir: Path):
    """The reference executor on the tiny Qwen2 model, in its default (int8) compute."""
    from shards.executor import ReferenceExecutor

    return ReferenceExecutor(tiny_qwen_dir, threads=1)


@pytest.fixture(scope="session")
def gemma_float_reference(gemma_reference, gemma_dir: Path):
    from shards.executor import ReferenceExecutor

    if gemma_reference.compute == "float32":
        return gemma_reference
    return ReferenceExecutor(gemma_dir, threads=2, verify=False, compute="float32")
