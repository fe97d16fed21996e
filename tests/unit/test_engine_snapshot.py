"""The engine's counters as one frozen view: later work by the engine does not change a
snapshot already taken (status, metrics and the dashboard read the same numbers)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from coordinator.engine.drafting import StepCosts
from coordinator.engine.engine_snapshot import EngineSnapshot
from coordinator.engine.head_pruning import HeadStatistics
from coordinator.engine.router import LayerStatistics
from coordinator.swarm.time_breakdown import TimeTotals
from coordinator.trust.spot_checks import CheckCounters


def engine():
    layers = LayerStatistics(3)
    layers.skipped[:] = [0, 1, 3]
    layers.executed[:] = [0, 3, 1]
    timing = TimeTotals()
    timing.step(1)
    timing.add(1, "head", 0.004)
    return SimpleNamespace(tokens_generated=5, replays_total=1, moves_total=2, failures_total=0, timing=timing,
                           spot_checks=SimpleNamespace(counters=CheckCounters(passed=4, evicted=["w1"])),
                           step_costs=StepCosts(one_row=0.05), layer_statistics=layers,
                           head_statistics=HeadStatistics(3, 4))


def test_a_snapshot_does_not_move_when_the_engine_does():
    live = engine()
    snapshot = EngineSnapshot.of(live)
    live.tokens_generated += 10
    live.timing.add(1, "head", 1.0)
    live.spot_checks.counters.evicted.append("w2")
    live.layer_statistics.skipped[0] = 9
    assert snapshot.tokens_generated == 5
    assert snapshot.timing.as_dict()["decode"]["ms"]["head"] == 4.0
    assert snapshot.checks.evicted == ("w1",) and snapshot.skipped_per_layer == (0, 1, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.tokens_generated = 0   # type: ignore[misc]


def test_derived_views():
    snapshot = EngineSnapshot.of(engine())
    assert snapshot.skip_rates() == [None, 0.25, 0.75]
    assert snapshot.verification()["passed"] == 4 and snapshot.verification()["evicted"] == ["w1"]
    assert (snapshot.one_row_step, snapshot.draft_step) == (0.05, None)
