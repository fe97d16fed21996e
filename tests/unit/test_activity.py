"""The dashboard's activity log and a worker's step-time histogram: pure bookkeeping."""

from __future__ import annotations

from coordinator.api.activity import ActivityLog
from coordinator.engine.session import HopStats
from coordinator.swarm.step_timing import StepHistogram


def test_step_histogram_buckets_are_cumulative_and_inclusive():
    histogram = StepHistogram(bounds=(0.01, 0.1))
    histogram.counts = [0, 0, 0]
    for seconds in (0.005, 0.01, 0.05, 3.0):
        histogram.observe(seconds)
    assert histogram.cumulative() == [("0.01", 2), ("0.1", 3), ("+Inf", 4)]   # 0.01 counts as <= 0.01
    assert abs(histogram.total_seconds - 3.065) < 1e-12


def test_activity_log_times_tokens_and_samples_throughput():
    log = ActivityLog(keep_requests=2, keep_seconds=3)
    record = log.open("chat", now=1000.0, monotonic=50.0, prompt_tokens=7, max_tokens=4, stream=True)
    log.sample(1000.0, tokens_generated=0)                 # the first sample only sets the baseline
    assert log.token(record, 50.25) is None                # the first token: time to first token instead
    assert record.first_token_seconds == 0.25
    assert abs(log.token(record, 50.30) - 0.05) < 1e-9
    assert abs(log.token(record, 50.40) - 0.10) < 1e-9
    log.sample(1002.0, tokens_generated=3)
    assert log.samples[-1]["tokens_per_second"] == 1.5
    assert log.samples[-1]["token_ms"] == 75.0             # gaps of 50 and 100 ms
    log.sample(1003.0, tokens_generated=3)
    assert log.samples[-1] == {"time": 1003.0, "tokens_per_second": 0.0, "token_ms": None}
    record.stats = HopStats(hops=6, stages=2)             # live accounting, read at each view
    assert log.view()["requests"][0]["usage"]["hops"] == 6
    record.stats.hops = 8
    log.close(record, "done", 200, 51.0)
    view = log.view()["requests"][0]
    assert view["state"] == "done" and view["seconds"] == 1.0 and view["completion_tokens"] == 3
    assert view["usage"]["hops"] == 8 and view["usage"]["stages"] == 2 and "arrived_monotonic" not in view
    for index in range(3):                                 # only the last `keep_requests` are kept
        log.open("completions", 1004.0 + index, 52.0 + index, 1, 1, False)
    assert [entry["id"] for entry in log.view()["requests"]] == [4, 3]
