"""Model families: what differs between llama-style and Gemma-3-style GGUFs, in one place.

Owns the registry (`family_for`) and the `Family` record each entry fills in: how to read
its GGUF metadata into a `ModelConfig` (including one `LayerSpec` per layer), which
per-layer tensors it needs, how to bring them into the layout the graph builders
expect, the tokens besides EOS that end an answer and the compute format tabs use by
default. A GGUF without a chat template is a base model: no family supplies one. Adding a family is a new module here and, where it computes something
new, a `LayerSpec` field the builders honour (Qwen2's QKV biases: one field, three Adds;
Qwen3's QK-norm exists already).
Never reads files itself (the GGUF reader hands it a metadata getter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shards.errors import UnsupportedModelError
from shards.model_config import ModelConfig

Metadata = Callable[..., Any]   # metadata(key, default=None) -> value (raises if missing and no default)


@dataclass(frozen=True)
class Family:
    architecture: str
    read_config: Callable[[Metadata, set[str], str], ModelConfig]   # (metadata, tensor names, file name)
    layer_tensors: tuple[str, ...]     # names after "blk.N." (".weight" implied unless the name has a dot)
    prepare_layer: Callable[[dict[str, np.ndarray], ModelConfig], dict[str, np.ndarray]]
    stop_tokens: tuple[str, ...] = ()     # besides EOS: tokens that end an assistant turn
    default_compute: str = "float32"      # the tabs' compute format unless a user picks one (measured per family)


def _registry() -> dict[str, Family]:
    from shards.families.gemma3 import GEMMA3
    from shards.families.llama import LLAMA
    from shards.families.qwen2 import QWEN2

    return {family.architecture: family for family in (LLAMA, GEMMA3, QWEN2)}


def supported_architectures() -> tuple[str, ...]:
    return tuple(sorted(_registry()))


def family_for(architecture: str, path: str = "") -> Family:
    families = _registry()
    if architecture not in families:
        raise UnsupportedModelError(f"{path}: architecture {architecture!r} is not supported "
                                    f"(supported: {', '.join(sorted(families))})")
    return families[architecture]
