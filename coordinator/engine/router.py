"""The layer-skipping router: which layers a token skips, and which nodes it bypasses.

Pure: takes the router config, the running per-layer statistics and the token's state,
returns decisions; never touches sockets. A skipped layer still writes its K/V (the
worker runs the layer's K/V-only graph), so every cache stays coherent. A bypassed node
gets the hidden state off the critical path to backfill its K/V.

r = ||layer update|| / ||layer input||, reported by the worker for every layer it runs.
Running statistics are geometric means (moving average of log r) and learn nothing from
the protected first tokens: the attention-sink token's r of ~178 at layer 11 otherwise
inflated layer 11's arithmetic mean six-fold and made the predictor skip layer 12 for
nearly every token (measured).

Policies:
  off        never skip.
  synapse    the earlier swarm's heuristic: skip when (1 - token) * (1 - layer) > capacity,
             layer difficulty = moving average of r (clipped to [0, 1]), token difficulty =
             coefficient of variation of the token's hidden-state norms so far.
  predictor  predict r(L) = r(last run layer) * mean_r(L) / mean_r(last run layer); skip when
             the prediction is under `threshold`; never two skips in a row.
  node       bypass a whole node when its predicted total update
             r(last) * mean_node_r / mean_r(last) is under `node_threshold`.
  script     skip exactly the (position, layer) pairs listed in `script` (experiments and
             tests: a node whose layers are all listed for a token is bypassed).
Always: the first and last layer are protected, and so are the first `protect_tokens`
positions (token 0 is an attention sink; skipping it wrecks the model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

POLICIES = ("off", "synapse", "predictor", "node", "script")


@dataclass(frozen=True)
class RouterConfig:
    policy: str = "off"
    threshold: float = 0.0         # predictor
    capacity: float = 1.0          # synapse
    node_threshold: float = 0.0    # node
    protect_tokens: int = 4
    protect_first_last: bool = True
    warmup: int = 32               # observations of a layer before its mean is trusted
    smoothing: float = 0.02        # moving-average weight of one observation
    script: frozenset[tuple[int, int]] = frozenset()   # script: (position, layer) pairs to skip
    prune_heads: float = 0.0       # fraction of unprotected attention heads to mask (head_pruning.py)
    head_warmup: int = 16          # sampled observations of every layer's heads before pruning starts
    head_script: frozenset[tuple[int, int]] = frozenset()   # (layer, head) pairs to mask, overriding prune_heads

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"router policy must be one of {', '.join(POLICIES)}")
        if self.protect_tokens < 1:
            raise ValueError("protect_tokens must be >= 1 (token 0 is an attention sink)")
        if not 0.0 <= self.prune_heads <= 0.5:
            raise ValueError("prune_heads must be between 0 and 0.5")

    @property
    def enabled(self) -> bool:
        return self.policy != "off"

    @property
    def alters_decode_steps(self) -> bool:
        """Whether decode steps skip layers or mask heads (decisions made per one-row step)."""
        return self.enabled or self.prune_heads > 0 or bool(self.head_script)


@dataclass
class LayerStatistics:
    """Running geometric-mean r per layer and per node range, shared by all requests."""

    layers: int
    mean_r: list[float] = field(default_factory=list)          # exp(mean log r), kept in step with log_r
    log_r: list[float] = field(default_factory=list)
    count: list[int] = field(default_factory=list)
    node_mean: dict[tuple[int, int], float] = field(default_factory=dict)   # geometric means too
    node_count: dict[tuple[int, int], int] = field(default_factory=dict)
    executed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.mean_r = self.mean_r or [0.0] * self.layers
        self.log_r = self.log_r or [math.log(r) if r > 0 else 0.0 for r in self.mean_r]
        self.count = self.count or [0] * self.layers
        self.executed = self.executed or [0] * self.layers
        self.skipped = self.skipped or [0] * self.layers


@dataclass
class TokenState:
    """One request's routing memory."""

    last_r: float | None = None    # r at the last layer that ran (this token or the previous)
    last_layer: int | None = None
    previous_skipped: bool = False
    norms: list[float] = field(default_factory=list)  # this token's hidden-state norms


@dataclass(frozen=True)
class NodeDecision:
    skip_mask: int      # bit i: layer start + i runs K/V-only
    bypass: bool        # the whole node is skipped: backfill only, no reply


def _ready(stats: LayerStatistics, config: RouterConfig, layer: int) -> bool:
    return stats.count[layer] >= config.warmup and stats.mean_r[layer] > 0.0


def _protected(config: RouterConfig, stats: LayerStatistics, layer: int) -> bool:
    return config.protect_first_last and layer in (0, stats.layers - 1)


def decide(config: RouterConfig, stats: LayerStatistics, token: TokenState, position: int,
           layer_start: int, layer_end: int) -> NodeDecision:
    """Skip decisions for one token on one node, made before the node runs."""
    if config.policy == "script":
        mask = sum(1 << offset for offset, layer in enumerate(range(layer_start, layer_end))
                   if (position, layer) in config.script)
        return NodeDecision(mask, mask == (1 << (layer_end - layer_start)) - 1 and layer_end > layer_start)
    if not config.enabled or position < config.protect_tokens or token.last_r is None or token.last_layer is None:
        return NodeDecision(0, False)
    anchor = token.last_layer
    if config.policy == "node":
        key = (layer_start, layer_end)
        protected = any(_protected(config, stats, layer) for layer in range(layer_start, layer_end))
        if protected or stats.node_count.get(key, 0) < config.warmup or not _ready(stats, config, anchor):
            return NodeDecision(0, False)
        predicted = token.last_r * stats.node_mean[key] / stats.mean_r[anchor]
        if predicted < config.node_threshold:
            return NodeDecision((1 << (layer_end - layer_start)) - 1, True)
        return NodeDecision(0, False)
    mask = 0
    previous = token.previous_skipped
    for offset, layer in enumerate(range(layer_start, layer_end)):
        skip = False
        if not _protected(config, stats, layer) and _ready(stats, config, layer) and _ready(stats, config, anchor):
            if config.policy == "predictor":
                predicted = token.last_r * stats.mean_r[layer] / stats.mean_r[anchor]
                skip = predicted < config.threshold and not previous
            elif config.policy == "synapse":
                layer_difficulty = min(1.0, stats.mean_r[layer])
                skip = (1.0 - token_difficulty(token)) * (1.0 - layer_difficulty) > config.capacity
        if skip:
            mask |= 1 << offset
        previous = skip
    full = (1 << (layer_end - layer_start)) - 1
    return NodeDecision(mask, mask == full)


def token_difficulty(token: TokenState) -> float:
    """Coefficient of variation of the token's hidden-state norms (the Synapse signal)."""
    if len(token.norms) < 2:
        return 1.0
    mean = sum(token.norms) / len(token.norms)
    variance = sum((norm - mean) ** 2 for norm in token.norms) / len(token.norms)
    return min(1.0, math.sqrt(variance) / mean) if mean > 0 else 1.0


def _update_log_mean(current_log: float, count: int, value: float, smoothing: float) -> float:
    weight = max(smoothing, 1.0 / (count + 1))
    return current_log + weight * (math.log(value) - current_log)


def observe(config: RouterConfig, stats: LayerStatistics, token: TokenState, position: int, layer_start: int,
            layer_end: int, decision: NodeDecision, ratios: list[float], norms: list[float],
            node_ratio: float | None) -> None:
    """Update running statistics and the token's state with what a node reported.

    ratios/norms: r and output norm for each layer that ran (skipped layers report nothing).
    """
    learn = position >= config.protect_tokens
    ran = [layer for offset, layer in enumerate(range(layer_start, layer_end)) if not decision.skip_mask >> offset & 1]
    for layer in range(layer_start, layer_end):
        if layer in ran:
            stats.executed[layer] += 1
        else:
            stats.skipped[layer] += 1
    for layer, ratio in zip(ran, ratios, strict=False):
        if not (math.isfinite(ratio) and ratio > 0):
            continue
        if learn:
            stats.log_r[layer] = _update_log_mean(stats.log_r[layer], stats.count[layer], ratio, config.smoothing)
            stats.mean_r[layer] = math.exp(stats.log_r[layer])
            stats.count[layer] += 1
        token.last_r, token.last_layer = ratio, layer
    if learn and node_ratio is not None and not decision.bypass and math.isfinite(node_ratio) and node_ratio > 0:
        key = (layer_start, layer_end)
        count = stats.node_count.get(key, 0)
        previous = math.log(stats.node_mean[key]) if key in stats.node_mean else 0.0
        stats.node_mean[key] = math.exp(_update_log_mean(previous, count, node_ratio, config.smoothing))
        stats.node_count[key] = count + 1
    token.norms.extend(norms)
    last_offset = layer_end - layer_start - 1
    token.previous_skipped = bool(decision.skip_mask >> last_offset & 1) if layer_end > layer_start else False


def start_token(token: TokenState) -> None:
    """A new token starts: its norms restart; r of the previous token's last layer is kept as anchor."""
    token.norms = []
    token.previous_skipped = False
