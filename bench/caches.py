"""The cache folders a benchmark hands to `convert` and `resolve_model`.

A benchmark's main is an entry point: it reads the environment here, once, by the rule of
`shards.cache_location` (the same folders `tabswarm serve` uses), and passes the folders on.
"""

from __future__ import annotations

import os
from pathlib import Path

from shards.cache_location import cache_root_from, models_dir, shards_dir


def shard_cache() -> Path:
    return shards_dir(cache_root_from(os.environ))


def model_cache() -> Path:
    return models_dir(cache_root_from(os.environ))
