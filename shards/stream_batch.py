"""How the caches of several streams share one layer pass, and how they come apart again.

Owns the layout a batched pass uses (the layer graphs' batch axis, shards/graphs.py): entry b
holds stream b's cache padded with zeros to the longest, and the pass writes its new rows
at its own positions. The tab does the same in JavaScript (`worker_web/ort_runtime.js`
`padCaches` / `cacheOfEntry`); this is the numpy reference the unit tests hold the graphs
to. Pure numpy; no I/O.
"""

from __future__ import annotations

import numpy as np


def pad_caches(caches: list[np.ndarray]) -> np.ndarray:
    """[(kv_heads, length_b, head_dim)] -> (batch, kv_heads, longest, head_dim), zeros after each."""
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
