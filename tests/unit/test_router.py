"""The router's decisions: protections, the predictor, no consecutive skips, node bypass."""

from __future__ import annotations

import pytest

from coordinator.engine.router import (
    LayerStatistics,
    NodeDecision,
    RouterConfig,
    TokenState,
    decide,
    observe,
    start_token,
    token_difficulty,
)


def warmed(layers: int = 10, r: float = 0.3) -> LayerStatistics:
    stats = LayerStatistics(layers)
    stats.mean_r = [r] * layers
    stats.count = [100] * layers
    return stats


def token(last_r: float, last_layer: int = 0) -> TokenState:
    return TokenState(last_r=last_r, last_layer=last_layer)


def test_off_never_skips():
    assert decide(RouterConfig(), warmed(), token(0.0001), 50, 1, 9) == NodeDecision(0, False)


def test_first_tokens_are_protected():
    config = RouterConfig(policy="predictor", threshold=10.0, protect_tokens=4)
    assert decide(config, warmed(), token(0.01), 3, 1, 9).skip_mask == 0
    assert decide(config, warmed(), token(0.01), 4, 1, 9).skip_mask != 0


def test_first_and_last_layer_are_protected():
    config = RouterConfig(policy="predictor", threshold=10.0)
    mask = decide(config, warmed(), token(0.01), 10, 0, 10).skip_mask
    assert not mask & 1 and not mask >> 9 & 1


def test_predictor_never_skips_two_in_a_row():
    config = RouterConfig(policy="predictor", threshold=10.0)
    mask = decide(config, warmed(), token(0.01), 10, 1, 9).skip_mask
    bits = [mask >> i & 1 for i in range(8)]
    assert bits == [1, 0, 1, 0, 1, 0, 1, 0]
    assert not decide(config, warmed(), token(0.01), 10, 1, 9).bypass


def test_predictor_scales_by_layer_means():
    config = RouterConfig(policy="predictor", threshold=0.2)
    stats = warmed()
    stats.mean_r[5] = 0.1          # a layer that usually changes little
    stats.mean_r[6] = 0.9          # and one that changes a lot
    decision = decide(config, stats, token(0.3, last_layer=4), 10, 5, 7)
    assert decision.skip_mask == 0b01   # 0.3 * 0.1/0.3 = 0.1 < 0.2 skips; 0.3 * 0.9/0.3 does not


def test_no_decision_before_warmup():
    config = RouterConfig(policy="predictor", threshold=10.0, warmup=32)
    stats = warmed()
    stats.count[3] = 5
    mask = decide(config, stats, token(0.01), 10, 3, 4).skip_mask
    assert mask == 0


def test_node_policy_bypasses_whole_nodes_but_not_protected_ones():
    config = RouterConfig(policy="node", node_threshold=0.5)
    stats = warmed()
    stats.node_mean[(3, 6)], stats.node_count[(3, 6)] = 0.3, 100
    stats.node_mean[(0, 3)], stats.node_count[(0, 3)] = 0.3, 100
    assert decide(config, stats, token(0.2, 2), 10, 3, 6) == NodeDecision(0b111, True)
    assert decide(config, stats, token(0.2, 2), 10, 0, 3) == NodeDecision(0, False)   # holds layer 0
    assert decide(config, stats, token(5.0, 2), 10, 3, 6) == NodeDecision(0, False)   # a hard token


def test_observe_updates_means_anchor_and_skip_counts():
    config = RouterConfig(policy="predictor", warmup=1)
    stats, state = LayerStatistics(4), TokenState()
    start_token(state)
    observe(config, stats, state, 10, 0, 4, NodeDecision(0b0100, False), [1.0, 0.5, 0.25], [10.0, 11.0, 12.0], 0.9)
    assert stats.executed == [1, 1, 0, 1] and stats.skipped == [0, 0, 1, 0]
    assert stats.mean_r == pytest.approx([1.0, 0.5, 0.0, 0.25])
    assert (state.last_r, state.last_layer) == (0.25, 3)
    assert stats.node_mean[(0, 4)] == pytest.approx(0.9)
    assert state.norms == [10.0, 11.0, 12.0]


def test_statistics_are_robust_to_the_attention_sink():
    """Protected tokens teach nothing, and the running mean is geometric: one r of 178
    among r = 0.3 values must not inflate the layer's mean (it did six-fold, measured)."""
    config = RouterConfig(policy="predictor", warmup=1, protect_tokens=4)
    stats, state = LayerStatistics(2), TokenState()
    observe(config, stats, state, 0, 0, 2, NodeDecision(0, False), [178.0, 0.3], [], None)
    assert stats.count == [0, 0] and state.last_r == 0.3   # position 0: the token routes, stats unchanged
    for position in range(4, 200):
        observe(config, stats, state, position, 0, 2, NodeDecision(0, False),
                [178.0 if position == 50 else 0.3, 0.3], [], None)
    assert stats.mean_r[0] < 0.45


def test_token_difficulty_is_coefficient_of_variation():
    assert token_difficulty(TokenState(norms=[2.0, 2.0])) == 0.0
    assert token_difficulty(TokenState(norms=[1.0, 3.0])) == pytest.approx(0.5)


def test_unknown_policy_and_unprotected_sink_are_refused():
    with pytest.raises(ValueError):
        RouterConfig(policy="magic")
    with pytest.raises(ValueError):
        RouterConfig(policy="predictor", protect_tokens=0)
