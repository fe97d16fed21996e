"""Placement input from facts (coordinator/swarm/capacity.py) and the tab memory model
(shards/footprint.py): pure, on numbers a user can check by hand."""

from __future__ import annotations

from coordinator.swarm.capacity import (
    WorkerFacts,
    capacities,
    max_layers,
    shortfall,
    speed_replan_due,
)
from shards.footprint import TabFootprint, layer_bytes, prefill_rows
from shards.model_config import ModelConfig

QWEN = ModelConfig(architecture="qwen2", name="qwen-1.5b-shape", layers=28, hidden=1536, heads=12, kv_heads=2,
                   head_dim=128, mlp_hidden=8960, vocab=151936, context=32768, norm_eps=1e-6,
                   rope_theta=1e6, tied_embeddings=False)


def test_an_int8_layer_needs_about_a_quarter_of_a_float32_one():
    int8, float32 = layer_bytes(QWEN, "int8"), layer_bytes(QWEN, "float32")
    assert 48 * 2**20 < int8 < 52 * 2**20 and 3.6 < float32 / int8 < 3.8
    assert prefill_rows(QWEN, "int8") == 16 and prefill_rows(QWEN, "float32") == 128


def test_the_layouts_the_big_model_is_served_with_fit_what_the_tabs_offer():
    plan = TabFootprint.of(QWEN, "int8")
    assert plan.layers_within(1024) >= 14 and plan.layers_within(512) >= 7     # 2 x 1 GB, 4 x 512 MB
    assert plan.needed_mb(plan.layers_within(512)) <= 512 < plan.needed_mb(plan.layers_within(512) + 1)
    assert TabFootprint.of(QWEN, "float32").layers_within(4096) < 28           # float32: no tab holds it


def test_capacity_follows_memory_never_below_what_a_worker_holds_nor_above_a_failed_allocation():
    plan = TabFootprint(layer_mb=50.0, overhead_mb=64.0)
    assert max_layers(WorkerFacts("a", 1.0, None, 300.0), 30, plan) == 4
    assert max_layers(WorkerFacts("a", 1.0, None, 300.0, held_layers=30), 30, plan) == 30
    assert max_layers(WorkerFacts("a", 1.0, None, 9000.0, allocation_cap=3), 30, plan) == 3
    assert max_layers(WorkerFacts("a", 1.0, None, None), 30, plan) == 30
    assert max_layers(WorkerFacts("a", 1.0, None, 50_000.0), 100, plan) == (4096 - 64) // 50   # claims capped at 4 GiB


def test_a_shortfall_says_how_much_more_memory_and_what_to_do():
    plan = TabFootprint(layer_mb=50.0, overhead_mb=64.0)
    workers = [WorkerFacts("a", 1.0, None, 364.0), WorkerFacts("b", 1.0, None, 364.0)]   # 6 layers each
    message = shortfall(workers, 28, plan)
    assert message is not None
    assert "offer 728 MB and can hold 12 of the model's 28 layers" in message
    assert "needs ≈ 800 MB more" in message and "one offering at least 864 MB" in message
    assert shortfall([*workers, WorkerFacts("c", 1.0, None, 1000.0)], 28, plan) is None


def test_a_newcomers_claimed_speed_buys_no_more_than_the_measured_ones():
    plan = TabFootprint(layer_mb=1.0, overhead_mb=1.0)
    facts = [WorkerFacts("proven", 10.0, 2.0, None), WorkerFacts("boaster", 0.01, None, None)]
    speeds = {entry.worker: entry.speed for entry in capacities(facts, 30, plan)}
    assert speeds["boaster"] <= speeds["proven"]


def test_a_speed_replan_waits_for_a_lasting_change_while_streams_run():
    # idle: two heartbeats in a row with other speeds replan (a slow tab is rebalanced soon)
    assert not speed_replan_due(1, 0, idle_checks=2, busy_checks=12)
    assert speed_replan_due(2, 0, idle_checks=2, busy_checks=12)
    # running streams would each be moved (a replay): the change must last
    assert not speed_replan_due(2, 16, idle_checks=2, busy_checks=12)
    assert not speed_replan_due(11, 1, idle_checks=2, busy_checks=12)
    assert speed_replan_due(12, 1, idle_checks=2, busy_checks=12)
