"""Where a step's time goes: totals by kind of step and part, a tab's report read
defensively, and per-step figures from two snapshots (what bench/time_breakdown.py does)."""

from __future__ import annotations

from coordinator.swarm.time_breakdown import (
    TimeTotals,
    hop_ms,
    kind_of,
    parse_tab_timing,
    per_step_ms,
)


def tab_report(decode_steps: int, layers_ms: float) -> dict:
    """A tab's stats.timing, as worker_web/step_timing.js writes it."""
    return {"decode": {"steps": decode_steps, "rows": decode_steps,
                       "ms": {"decode": 0.1 * decode_steps, "layers": layers_ms, "encode": 0.2 * decode_steps}},
            "prefill": {"steps": 1, "rows": 40, "ms": {"decode": 1.0, "layers": 80.0, "encode": 2.0}}}


def test_one_row_steps_are_decode_and_more_rows_prefill():
    assert kind_of(1) == "decode" and kind_of(2) == "prefill" and kind_of(512) == "prefill"
    totals = TimeTotals()
    totals.step(1)
    totals.add(1, "embed", 0.001)
    totals.add(1, "embed", 0.002)
    totals.step(7)
    totals.add(7, "head", 0.5)
    report = totals.as_dict()
    assert report["decode"] == {"steps": 1, "rows": 1, "ms": {"embed": 3.0}}
    assert report["prefill"] == {"steps": 1, "rows": 7, "ms": {"head": 500.0}}


def test_a_tab_report_is_read_in_seconds_and_malformed_ones_are_dropped():
    totals = parse_tab_timing(tab_report(10, 50.0))
    assert totals is not None
    assert totals.kinds["decode"].steps == 10 and totals.kinds["prefill"].rows == 40
    assert abs(totals.kinds["decode"].seconds["layers"] - 0.05) < 1e-12
    for broken in (None, "fast", {}, {"decode": {"steps": 1, "rows": 1, "ms": {}}},   # no prefill
                   tab_report(-1, 5.0), tab_report(3, -5.0),
                   {**tab_report(3, 5.0), "decode": {"steps": 1.5, "rows": 1, "ms": {}}},
                   {**tab_report(3, 5.0), "decode": {"steps": 1, "rows": 1, "ms": {"layers": "slow"}}}):
        assert parse_tab_timing(broken) is None, broken


def test_per_step_figures_come_from_the_difference_of_two_snapshots():
    before = parse_tab_timing(tab_report(10, 50.0))
    after = parse_tab_timing(tab_report(30, 130.0))
    assert before is not None and after is not None
    window = per_step_ms(before.as_dict(), after.as_dict())
    assert window["steps"] == 20 and window["rows"] == 20
    assert window["ms"] == {"decode": 0.1, "layers": 4.0, "encode": 0.2}
    assert per_step_ms(before.as_dict(), before.as_dict()) == {"steps": 0, "rows": 0, "ms": {}}
    # the prefill window is empty (no new prefill steps): no per-step figures, not a division by zero
    assert per_step_ms(before.as_dict(), after.as_dict(), "prefill")["ms"] == {}


def test_the_hop_is_the_wait_beyond_what_the_tabs_spent():
    tabs = [{"ms": {"decode": 0.1, "layers": 4.0, "encode": 0.2}}, {"ms": {"decode": 0.1, "layers": 3.0, "encode": 0.2}}]
    assert hop_ms(9.0, tabs) == 1.4
