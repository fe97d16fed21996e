"""Operating the swarm over real sockets: /metrics in Prometheus' text format (parsed with
prometheus-client's own parser), counters that move with requests, joins and losses,
bounded per-worker cardinality, access rules, and the dashboard's live stream."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from coordinator.trust.access import AccessConfig
from protocol.control import Hello, Stats, encode_control
from protocol.frames import VERSION
from tests.integration.fake_worker import FakeWorker
from tests.support import FRANCE, post, running_app, wait_ready


async def scrape(base: str, key: str | None = None) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} from one /metrics scrape."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as session, session.get(base + "/metrics", headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, metric: str, **labels: str) -> float:
    return samples.get(metric, {}).get(tuple(sorted(labels.items())), 0.0)


def worker_series(samples: dict) -> set[str]:
    """The worker ids any per-worker series names."""
    return {dict(labels)["worker"] for name, series in samples.items() if name.startswith("tabswarm_worker_")
            for labels in series if "worker" in dict(labels)}


async def scrape_when(base: str, event: str, count: int) -> dict:
    """The first scrape (within 5 s) whose cluster event counter reached `count`."""
    for _ in range(100):
        samples = await scrape(base)
        if value(samples, "tabswarm_cluster_events_total", event=event) == count:
            return samples
        await asyncio.sleep(0.05)
    raise AssertionError(f"{event} events never reached {count}: {samples.get('tabswarm_cluster_events_total')}")


async def first_snapshot(base: str) -> dict:
    async with aiohttp.ClientSession() as session, session.get(base + "/v1/dashboard/stream") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async for line in response.content:
            if line.startswith(b"data: "):
                return json.loads(line[6:])
    raise AssertionError("the stream ended without a snapshot")


async def test_counters_move_with_requests_joins_and_losses(shard_dir):
    async with running_app(shard_dir) as (_, base):
        workers = [await FakeWorker(base, shard_dir, f"metrics-{i}").start() for i in range(2)]
        await wait_ready(base, 2)
        before = await scrape(base)
        assert value(before, "tabswarm_cluster_events_total", event="join") == 2
        assert value(before, "tabswarm_pipeline_ready") == 1
        assert value(before, "tabswarm_workers", state="ready") == 2

        status, body = await post(base, "/v1/chat/completions", {"messages": FRANCE, "max_tokens": 6})
        assert status == 200
        completion = body["usage"]["completion_tokens"]
        status, _ = await post(base, "/v1/chat/completions", {"messages": "not a list"})
        assert status == 400
        after = await scrape(base)
        assert value(after, "tabswarm_requests_total", endpoint="chat", outcome="done", status="200") == 1
        assert value(after, "tabswarm_requests_total", endpoint="chat", outcome="client_error", status="400") == 1
        assert value(after, "tabswarm_completion_tokens_total") == completion
        assert value(after, "tabswarm_tokens_generated_total") - value(before, "tabswarm_tokens_generated_total") \
            >= completion
        assert value(after, "tabswarm_hops_total") == body["usage"]["tabswarm"]["hops"]
        assert value(after, "tabswarm_activation_bytes_total", direction="sent") == \
            body["usage"]["tabswarm"]["bytes_sent"]
        assert value(after, "tabswarm_time_to_first_token_seconds_count") == 1
        assert value(after, "tabswarm_inter_token_latency_seconds_count") == completion - 1
        assert value(after, "tabswarm_request_duration_seconds_count") == 2
        ids = worker_series(after)
        assert len(ids) == 2
        steps_total = 0.0
        for worker in ids:
            name = next(dict(labels)["name"] for labels in after["tabswarm_worker_layers"]
                        if dict(labels)["worker"] == worker)
            steps = value(after, "tabswarm_worker_step_seconds_count", worker=worker, name=name)
            assert steps >= 2                              # the prefill and at least one decode/verify pass
            assert value(after, "tabswarm_worker_step_seconds_bucket", worker=worker, name=name, le="+Inf") == steps
            assert value(after, "tabswarm_worker_sent_bytes_total", worker=worker, name=name) > 0
            steps_total += steps
        assert steps_total == body["usage"]["tabswarm"]["hops"]   # one timed step per hop

        await workers[1].kill()
        lost = await scrape_when(base, "leave", 1)
        assert len(worker_series(lost)) == 1                   # the lost tab's series are gone
        assert value(lost, "tabswarm_cluster_events_total", event="replan") > \
            value(after, "tabswarm_cluster_events_total", event="replan")   # the swarm replanned without it
        await workers[0].stop()


async def bare_join_and_leave(base: str, name: str) -> None:
    """A tab that says hello and closes at once (never loads a layer)."""
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(base.replace("http", "ws") + "/ws/worker") as socket:
        hello = Hello(protocol=VERSION, backend="native-test", threads=1, benchmark_ms=10.0, worker=name)
        await socket.send_bytes(encode_control(hello))
        await asyncio.sleep(0.01)


async def test_per_worker_series_stay_bounded_after_100_joins_and_leaves(shard_dir):
    async with running_app(shard_dir) as (_, base):
        stay = await FakeWorker(base, shard_dir, "stays").start()
        for index in range(100):
            await bare_join_and_leave(base, f"transient-{index}")
        samples = await scrape_when(base, "leave", 100)
        assert value(samples, "tabswarm_cluster_events_total", event="join") == 101
        assert len(worker_series(samples)) == 1
        series = sum(len(values) for values in samples.values())
        assert series < 250, f"{series} series after 100 joins and leaves"
        await stay.stop()


async def test_metrics_need_the_api_key_when_one_is_set_and_can_be_switched_off(shard_dir):
    keys = AccessConfig(api_keys=("ops-key",))
    async with running_app(shard_dir, access=keys) as (_, base):
        async with aiohttp.ClientSession() as session, session.get(base + "/metrics") as response:
            assert response.status == 401
        assert "tabswarm_requests_active" in await scrape(base, "ops-key")
    async with running_app(shard_dir, metrics=False) as (_, base), aiohttp.ClientSession() as session, \
            session.get(base + "/metrics") as response:
        assert response.status == 404


async def test_dashboard_stream_shows_the_pipeline_in_layer_order_and_recent_requests(shard_dir):
    async with running_app(shard_dir) as (_, base):
        workers = [await FakeWorker(base, shard_dir, f"dash-{i}").start() for i in range(2)]
        await wait_ready(base, 2)
        status, body = await post(base, "/v1/chat/completions", {"messages": FRANCE, "max_tokens": 5})
        assert status == 200
        snapshot = await first_snapshot(base)
        starts = [worker["layers"][0] for worker in snapshot["pipeline"]]
        assert starts == sorted(starts) and starts[0] == 0
        assert all(worker["active"] and worker["state"] == "ready" for worker in snapshot["pipeline"])
        latest = snapshot["requests"][0]
        assert latest["state"] == "done" and latest["status"] == 200
        assert latest["completion_tokens"] == body["usage"]["completion_tokens"]
        assert latest["usage"]["hops"] == body["usage"]["tabswarm"]["hops"]
        assert [event["event"] for event in snapshot["status"]["events"]].count("join") == 2
        async with aiohttp.ClientSession() as session, session.get(base + "/dashboard") as page:
            assert page.status == 200 and "dashboard.js" in await page.text()
        for worker in workers:
            await worker.stop()


async def test_where_step_time_goes_is_reported_per_request_in_status_and_in_metrics(shard_dir):
    async with running_app(shard_dir) as (_, base):
        workers = [await FakeWorker(base, shard_dir, f"timing-{i}").start() for i in range(2)]
        await wait_ready(base, 2)
        status, body = await post(base, "/v1/chat/completions", {
            "messages": FRANCE, "max_tokens": 6, "tabswarm": {"speculation": {"method": "off"}}})
        assert status == 200
        usage = body["usage"]["tabswarm"]
        timing = usage["timing"]
        assert timing["prefill"]["steps"] == 1 and timing["prefill"]["rows"] == body["usage"]["prompt_tokens"]
        assert timing["decode"]["steps"] + timing["prefill"]["steps"] == usage["hops"] // usage["stages"]
        for kind in ("decode", "prefill"):
            parts = timing[kind]["ms"]
            assert set(parts) == {"embed", "encode", "relay", "stage_wait", "decode", "head", "sample"}, parts
            assert all(ms >= 0 for ms in parts.values()) and parts["stage_wait"] > 0

        # a tab's own report shows under its worker in /v1/status and in /metrics; a malformed one is ignored
        report = {"decode": {"steps": 5, "rows": 5, "ms": {"decode": 0.5, "layers": 20.0, "encode": 1.0}},
                  "prefill": {"steps": 1, "rows": 9, "ms": {"decode": 0.3, "layers": 30.0, "encode": 0.4}}}
        await workers[0].send_control(Stats(tokens=14, compute_ms=50.0, timing=report))
        await workers[1].send_control(Stats(tokens=14, compute_ms=50.0, timing={"decode": 3}))
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as session, session.get(base + "/v1/status") as response:
            current = await response.json()
        by_name = {worker["name"]: worker for worker in current["workers"]}
        assert by_name["timing-0"]["timing"] == report
        assert by_name["timing-1"]["timing"] is None and by_name["timing-1"]["tokens"] == 14
        assert current["timing"]["decode"]["steps"] == timing["decode"]["steps"]
        samples = await scrape(base)
        worker_id = by_name["timing-0"]["id"]
        assert value(samples, "tabswarm_worker_step_part_seconds_total", worker=worker_id, name="timing-0",
                     kind="decode", part="layers") == 0.02
        assert value(samples, "tabswarm_steps_total", kind="prefill") == 1
        assert value(samples, "tabswarm_step_part_seconds_total", kind="decode", part="stage_wait") > 0
        for worker in workers:
            await worker.stop()
