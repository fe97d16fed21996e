"""The head-pruning policy: what it learns from worker reports and which heads it masks."""

from __future__ import annotations

import math

import pytest

from coordinator.engine.head_pruning import (
    HeadStatistics,
    StreamHeadMasks,
    applies,
    node_masks,
    observe_heads,
    pruned_heads,
)
from coordinator.engine.router import RouterConfig


def warmed(config: RouterConfig, layers: int = 4, heads: int = 3) -> HeadStatistics:
    """Head h of layer l contributes (l + 1) * (h + 1) / 100 of the layer input, every sample."""
    stats = HeadStatistics(layers, heads)
    for step in range(config.head_warmup):
        observe_heads(config, stats, 100 + step, 0, list(range(layers)),
                      [[(layer + 1) * (head + 1) / 100 for head in range(heads)] for layer in range(layers)])
    return stats


def test_statistics_are_geometric_means_and_skip_protected_tokens():
    config = RouterConfig()
    stats = HeadStatistics(2, 2)
    observe_heads(config, stats, 0, 0, [0, 1], [[100.0, 100.0], [100.0, 100.0]])   # attention sink: ignored
    assert stats.count == [0, 0]
    observe_heads(config, stats, 10, 0, [1], [[0.1, 0.4]])
    observe_heads(config, stats, 18, 0, [1], [[0.4, 0.4]])
    assert stats.count == [0, 2]
    assert math.isclose(stats.mean(1, 0), 0.2) and math.isclose(stats.mean(1, 1), 0.4)
    observe_heads(config, stats, 26, 0, [1], [[0.0, 0.4]])   # a non-positive report is dropped whole
    assert stats.count == [0, 2]


def test_nothing_is_pruned_before_every_unprotected_layer_is_warm():
    config = RouterConfig(prune_heads=0.5)
    stats = warmed(config)
    assert pruned_heads(config, stats)
    stats.count[2] = config.head_warmup - 1
    assert pruned_heads(config, stats) == frozenset()


def test_prunes_the_weakest_fraction_across_layers_and_never_the_first_or_last_layer():
    config = RouterConfig(prune_heads=0.34)
    stats = warmed(config)
    # Candidates: layers 1 and 2 (ratios .02 .04 .06 and .03 .06 .09); 34% of 6 -> the 2 smallest.
    assert pruned_heads(config, stats) == {(1, 0), (2, 0)}
    everything = RouterConfig(prune_heads=0.5, protect_first_last=False)
    assert (0, 0) in pruned_heads(everything, warmed(everything))


def test_head_script_overrides_the_learned_policy():
    config = RouterConfig(prune_heads=0.5, head_script=frozenset({(3, 2)}))
    assert pruned_heads(config, HeadStatistics(4, 3)) == {(3, 2)}


def test_node_masks_cover_the_node_layers_only():
    pruned = frozenset({(1, 0), (2, 2), (5, 1)})
    assert node_masks(pruned, 3, 0, 3) == ((1, 1, 1), (0, 1, 1), (1, 1, 0))
    assert node_masks(pruned, 3, 3, 5) is None


@pytest.mark.parametrize("config, position, rows, want", [
    (RouterConfig(prune_heads=0.1), 10, 1, True),
    (RouterConfig(prune_heads=0.1), 3, 1, False),       # protected first tokens
    (RouterConfig(prune_heads=0.1), 10, 5, False),      # prompt frames run every head
    (RouterConfig(), 10, 1, False),                     # off
    (RouterConfig(head_script=frozenset({(1, 1)})), 10, 1, True),
])
def test_masks_apply_to_one_row_steps_past_the_protected_tokens(config, position, rows, want):
    assert applies(config, position, rows) is want


def test_prune_fraction_is_bounded():
    with pytest.raises(ValueError, match="prune_heads"):
        RouterConfig(prune_heads=0.75)


def test_a_stream_re_ranks_heads_only_when_new_samples_may_have_arrived():
    config = RouterConfig(prune_heads=0.2)
    stats = warmed(config)
    stream = StreamHeadMasks(heads=3, sample_interval=8)
    stream.update(config, stats, position=10, rows=1)
    assert stream.pruned == {(1, 0)} and stream.masks_for(0, 2) == ((1, 1, 1), (0, 1, 1))
    stats.log_ratio[2][0] = math.log(1e-6)           # head (2, 0) becomes the weakest
    stream.update(config, stats, position=11, rows=1)
    assert stream.pruned == {(1, 0)}                # not a sampling position: unchanged
    stream.update(config, stats, position=16, rows=1)
    assert stream.pruned == {(2, 0)} and stream.masks_for(0, 2) is None   # rebuilt, nothing pruned there
    assert stream.masks_for(2, 4) == ((0, 1, 1), (1, 1, 1))
    stream.update(config, stats, position=17, rows=5)   # a multi-row frame runs every head
    assert stream.pruned == frozenset() and stream.masks_for(2, 4) is None
