"""Attention-head pruning decisions: which heads of which layers a stream masks.

Pure, like the layer router: takes the router config and the running per-head
statistics, returns masks; never touches sockets. Workers report, for sampled one-row
steps, each head's contribution norm (through its slice of the output projection,
before any mask) over the layer's input norm; the statistics keep a geometric moving
average of it per (layer, head), learning nothing from the protected first tokens.

Policy (`RouterConfig.prune_heads` = fraction f): once every unprotected layer has
`head_warmup` samples, mask the f x (unprotected heads) heads with the smallest average
contribution, ranked across all layers. `RouterConfig.head_script` masks exactly the
listed (layer, head) pairs instead (experiments and tests). Masks apply to one-row steps
at positions >= protect_tokens; the prompt and the first tokens run every head.

A masked head's attention is still computed (the dense graph has no cheaper path), so
pruning here is a quality experiment, not a speed-up; K/V are written as usual.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from coordinator.engine.router import RouterConfig

Masks = tuple[tuple[int, ...], ...]   # one tuple of 0/1 per layer of a node, from its layer_start


@dataclass
class HeadStatistics:
    """Running geometric-mean contribution ratio per (layer, head), shared by all requests."""

    layers: int
    heads: int
    log_ratio: list[list[float]] = field(default_factory=list)
    count: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.log_ratio = self.log_ratio or [[0.0] * self.heads for _ in range(self.layers)]
        self.count = self.count or [0] * self.layers

    def mean(self, layer: int, head: int) -> float:
        return math.exp(self.log_ratio[layer][head])


def _protected(config: RouterConfig, layers: int, layer: int) -> bool:
    return config.protect_first_last and layer in (0, layers - 1)


def observe_heads(config: RouterConfig, stats: HeadStatistics, position: int, layer_start: int,
                  ran_layers: list[int], head_ratios: list[list[float]]) -> None:
    """Learn from one sampled step: head_ratios[i] belongs to ran_layers[i]."""
    if position < config.protect_tokens:
        return
    for layer, ratios in zip(ran_layers, head_ratios, strict=False):
        if len(ratios) != stats.heads or not all(math.isfinite(r) and r > 0 for r in ratios):
            continue
        weight = max(config.smoothing, 1.0 / (stats.count[layer] + 1))
        row = stats.log_ratio[layer]
        for head, ratio in enumerate(ratios):
            row[head] += weight * (math.log(ratio) - row[head])
        stats.count[layer] += 1


def pruned_heads(config: RouterConfig, stats: HeadStatistics) -> frozenset[tuple[int, int]]:
    """The (layer, head) pairs to mask now, for the whole model."""
    if config.head_script:
        return config.head_script
    if config.prune_heads <= 0.0:
        return frozenset()
    candidates = [layer for layer in range(stats.layers) if not _protected(config, stats.layers, layer)]
    if any(stats.count[layer] < config.head_warmup for layer in candidates):
        return frozenset()
    ranked = sorted((stats.log_ratio[layer][head], layer, head)
                    for layer in candidates for head in range(stats.heads))
    wanted = int(config.prune_heads * len(ranked))
    return frozenset((layer, head) for _, layer, head in ranked[:wanted])


def node_masks(pruned: frozenset[tuple[int, int]], heads: int, layer_start: int, layer_end: int) -> Masks | None:
    """The masks for layers [layer_start, layer_end), or None when no head there is pruned."""
    if not any(layer_start <= layer < layer_end for layer, _ in pruned):
        return None
    return tuple(tuple(0 if (layer, head) in pruned else 1 for head in range(heads))
                 for layer in range(layer_start, layer_end))


def applies(config: RouterConfig, position: int, rows: int) -> bool:
    """Head masks apply to one-row steps past the protected first tokens."""
    return (config.prune_heads > 0.0 or bool(config.head_script)) and rows == 1 and position >= config.protect_tokens


@dataclass
class StreamHeadMasks:
    """One stream's pruned heads over time: re-ranked when new head statistics may have
    arrived (every HEAD_SAMPLE_INTERVAL positions, or while nothing is pruned yet), with
    each node's masks built once per change. The pipeline and the quality harness share it."""

    heads: int
    sample_interval: int
    pruned: frozenset[tuple[int, int]] = frozenset()
    _masks: dict[tuple[int, int], Masks | None] = field(default_factory=dict)

    def update(self, config: RouterConfig, stats: HeadStatistics, position: int, rows: int) -> None:
        if not applies(config, position, rows):
            pruned: frozenset[tuple[int, int]] = frozenset()
        elif not self.pruned or position % self.sample_interval == 0:
            pruned = pruned_heads(config, stats)
        else:
            return
        if pruned != self.pruned:
            self.pruned, self._masks = pruned, {}

    def masks_for(self, layer_start: int, layer_end: int) -> Masks | None:
        key = (layer_start, layer_end)
        if key not in self._masks:
            self._masks[key] = node_masks(self.pruned, self.heads, layer_start, layer_end)
        return self._masks[key]
