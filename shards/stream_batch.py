"""How the caches of several streams share one layer pass, and how they come apart again.

Owns the layout a batched pass uses (the layer graphs' batch axis, shards/graphs.py): entry b
holds stream b's cache padded with zeros to the longest, and the pass writes its new rows
at its own positions. The tab does the same in JavaScript (`worker_web/ort_runtime.js`
`padCaches` / `cacheOfEntry`); this is the numpy reference the unit tests hold the graphs
to. Pure numpy; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StreamRows:
    """One stream's rows in a pass: (1, rows, hidden) from `position` on, the layers it skips,
    its head masks (layer -> (heads,)), and whether to measure its update ratios (and heads')."""

    stream: int
    hidden: np.ndarray
    position: int
    skip: frozenset[int] = frozenset()
    head_masks: Mapping[int, np.ndarray] | None = None
    measure: bool = False
    measure_heads: bool = False


def pass_groups(items: Sequence[StreamRows], layer: int) -> Iterator[tuple[bool, list[int]]]:
    """(skipped, indices) of the entries that share layer `layer`'s pass: the same skip bit and
    the same head mask for it (the tab's passGroups)."""
    groups: dict[tuple[bool, bytes | None], list[int]] = {}
    for index, item in enumerate(items):
        skipped = layer in item.skip
        mask = None if skipped or item.head_masks is None else item.head_masks.get(layer)
        key = (skipped, None if mask is None else np.asarray(mask, dtype=np.float32).tobytes())
        groups.setdefault(key, []).append(index)
    for (skipped, _), members in groups.items():
        yield skipped, members


def pad_caches(caches: list[np.ndarray]) -> np.ndarray:
    """[(kv_heads, length_b, head_dim)] -> (batch, kv_heads, longest, head_dim), zeros after each.
    A lone cache goes in as it is (a view: no copy on a single stream's step)."""
    if len(caches) == 1:
        return caches[0][None]
    kv_heads, _, head_dim = caches[0].shape
    longest = max(cache.shape[1] for cache in caches)
    padded = np.zeros((len(caches), kv_heads, longest, head_dim), dtype=np.float32)
    for entry, cache in enumerate(caches):
        padded[entry, :, : cache.shape[1]] = cache
    return padded


def cache_of_entry(present: np.ndarray, entry: int, length: int) -> np.ndarray:
    """Entry b's cache after a pass: its first `length` slots (old length + rows), (kv_heads, length, head_dim)."""
    return np.ascontiguousarray(present[entry, :, :length])


def batch_positions(starts: list[int], rows: int) -> np.ndarray:
    """(batch, rows) absolute positions: entry b's rows start where its cache ends."""
    return np.asarray([np.arange(start, start + rows) for start in starts], dtype=np.int64)
