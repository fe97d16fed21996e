"""Prometheus metrics: what the coordinator counts, and `/metrics` in the text format.

Owns one `CollectorRegistry` per app (never prometheus-client's module-level default: two
apps in one process, as the tests run them, must not share counters) with two kinds of
series:

- **instruments** the HTTP layer observes into (`RequestMetrics`): requests by endpoint,
  outcome and status; time to first token, inter-token latency and duration histograms;
  tokens, hops, activation bytes, layers skipped, nodes bypassed and speculative drafts,
  added once per finished request from its `HopStats`;
- **read at scrape time** (`SwarmCollector`) from the state the cluster, the engine and
  admissions already keep: queue depth, workers by state, per-worker step-time
  histograms, bytes and load progress, cluster events (joins, losses, replans,
  evictions), replays, spot checks. Per-worker series exist only for the workers
  connected now, so a worker that left leaves no series behind (bounded cardinality by
  construction, nothing to remove).

Decides nothing and never touches a socket; the handler only renders the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from coordinator.engine.engine_snapshot import EngineSnapshot
from coordinator.engine.session import HopStats
from coordinator.swarm.worker_lifecycle import WorkerState

if TYPE_CHECKING:
    from coordinator.engine.generation import GenerationEngine
    from coordinator.engine.scheduler import Load
    from coordinator.swarm.cluster import Cluster

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 120.0)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
WORKER_LABELS = ["worker", "name"]
MAX_NAME = 64   # a tab names itself: its label is cut to this


class RequestMetrics:
    """The instruments the HTTP handlers observe into (one set per app)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, text: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, text, list(labels), registry=registry)

        self.requests = counter("tabswarm_requests", "Completion requests by endpoint, outcome and HTTP status",
                                ("endpoint", "outcome", "status"))
        self.first_token = Histogram("tabswarm_time_to_first_token_seconds",
                                     "From a request's arrival to its first token", buckets=FIRST_TOKEN_BUCKETS,
                                     registry=registry)
        self.inter_token = Histogram("tabswarm_inter_token_latency_seconds",
                                     "Between consecutive tokens of one request, as its client sees them "
                                     "(a verify pass emits several at once)", buckets=LATENCY_BUCKETS,
                                     registry=registry)
        self.duration = Histogram("tabswarm_request_duration_seconds", "Whole requests, arrival to last byte",
                                  buckets=DURATION_BUCKETS, registry=registry)
        self.prompt_tokens = counter("tabswarm_prompt_tokens", "Prompt tokens of finished requests")
        self.completion_tokens = counter("tabswarm_completion_tokens", "Tokens returned to clients")
        self.hops = counter("tabswarm_hops", "Stage hops (one hidden state to one tab and back)")
        self.activation_bytes = counter("tabswarm_activation_bytes", "Activation frame bytes by direction "
                                        "(sent: coordinator to tabs)", ("direction",))
        self.layer_executions = counter("tabswarm_layer_executions", "Layers a step's rows had to pass")
        self.layers_skipped = counter("tabswarm_layers_skipped", "Layers the router skipped")
        self.nodes_bypassed = counter("tabswarm_nodes_bypassed", "Stages a token went past entirely")
        self.heads_pruned = counter("tabswarm_heads_pruned", "Attention head executions masked")
        self.drafted = counter("tabswarm_speculative_drafted_tokens", "Tokens drafted for verification",
                               ("method",))
        self.accepted = counter("tabswarm_speculative_accepted_tokens", "Drafted tokens the verify passes accepted",
                                ("method",))
        self.verify_passes = counter("tabswarm_speculative_verify_passes", "Multi-row verify passes", ("method",))
        self.request_replays = counter("tabswarm_request_replays", "Sessions of finished requests rebuilt after "
                                       "a lost tab")

    def finished(self, endpoint: str, outcome: str, status: int, seconds: float, prompt_tokens: int,
                 completion_tokens: int, stats: HopStats | None) -> None:
        self.requests.labels(endpoint, outcome, str(status)).inc()
        self.duration.observe(seconds)
        if stats is None:
            return
        self.prompt_tokens.inc(prompt_tokens)
        self.completion_tokens.inc(completion_tokens)
        self.hops.inc(stats.hops)
        self.activation_bytes.labels("sent").inc(stats.bytes_sent)
        self.activation_bytes.labels("received").inc(stats.bytes_received)
        self.layer_executions.inc(stats.layer_executions)
        self.layers_skipped.inc(stats.layers_skipped)
        self.nodes_bypassed.inc(stats.nodes_bypassed)
        self.heads_pruned.inc(stats.heads_pruned)
        self.request_replays.inc(stats.replays)
        if stats.speculation != "off":
            self.drafted.labels(stats.speculation).inc(stats.drafted)
            self.accepted.labels(stats.speculation).inc(stats.accepted)
            self.verify_passes.labels(stats.speculation).inc(stats.verify_passes)


class SwarmCollector(Collector):
    """Series read from the cluster's, the engine's and admissions' own state per scrape."""

    def __init__(self, cluster: Cluster, engine: GenerationEngine, load: Callable[[], Load]) -> None:
        self.cluster, self.engine, self.load = cluster, engine, load

    def collect(self) -> Iterator[Metric]:
        yield from self._queue_and_plan()
        yield from self._workers()
        yield from self._engine()

    def _queue_and_plan(self) -> Iterator[Metric]:
        load = self.load()
        yield GaugeMetricFamily("tabswarm_requests_active", "Requests generating now", value=load.active)
        yield GaugeMetricFamily("tabswarm_requests_waiting", "Requests queued for a slot", value=load.queued)
        yield GaugeMetricFamily("tabswarm_pipeline_ready", "1 when a pipeline can serve",
                                value=int(self.cluster.pipeline() is not None))
        yield GaugeMetricFamily("tabswarm_plan_version", "Active plan version (counts plan switches)",
                                value=self.cluster.plan_version)
        yield GaugeMetricFamily("tabswarm_plan_stages", "Stages of the active plan", value=len(self.cluster.plan))
        events = CounterMetricFamily("tabswarm_cluster_events", "Cluster events by kind: join, leave (a lost "
                                     "tab), evict, ban, replan (a new target), plan (a plan switch), ready, speeds, "
                                     "oom (a tab ran out of memory loading)", labels=["event"])
        for kind in ("join", "leave", "evict", "ban", "replan", "plan", "ready", "speeds", "oom"):
            events.add_metric([kind], self.cluster.events.counts[kind])
        yield events

    def _workers(self) -> Iterator[Metric]:
        states = GaugeMetricFamily("tabswarm_workers", "Connected worker tabs by state", labels=["state"])
        info = GaugeMetricFamily("tabswarm_worker_info", "One per connected tab (value 1)",
                                 labels=[*WORKER_LABELS, "backend", "role", "state"])
        layers = GaugeMetricFamily("tabswarm_worker_layers", "Layers assigned to the tab", labels=WORKER_LABELS)
        progress = GaugeMetricFamily("tabswarm_worker_load_progress_ratio", "Share of its assignment a loading "
                                     "tab has downloaded/created (1 when ready)", labels=WORKER_LABELS)
        steps = HistogramMetricFamily("tabswarm_worker_step_seconds", "Round trip of one step at the tab "
                                      "(send to result)", labels=WORKER_LABELS)
        sent = CounterMetricFamily("tabswarm_worker_sent_bytes", "Bytes the coordinator sent the tab",
                                   labels=WORKER_LABELS)
        received = CounterMetricFamily("tabswarm_worker_received_bytes", "Result bytes the tab sent back",
                                       labels=WORKER_LABELS)
        parts = CounterMetricFamily("tabswarm_worker_step_part_seconds", "Where the tab's step time went, as it "
                                    "reports: decode (frame in), layers, encode (result out); kind decode = one-row "
                                    "steps, prefill = more rows", labels=[*WORKER_LABELS, "kind", "part"])
        passes = CounterMetricFamily("tabswarm_worker_passes", "Layer passes the tab ran (one per batch of "
                                     "waiting frames)", labels=WORKER_LABELS)
        pass_frames = CounterMetricFamily("tabswarm_worker_pass_frames", "Frames (streams) those passes held; "
                                          "rate over tabswarm_worker_passes = batch size", labels=WORKER_LABELS)
        largest = GaugeMetricFamily("tabswarm_worker_largest_pass", "Most streams in one of the tab's passes",
                                    labels=WORKER_LABELS)
        by_state: dict[str, int] = dict.fromkeys((str(state) for state in WorkerState), 0)
        for link in list(self.cluster.workers.values()):
            worker = link.info
            labels = [link.id, worker.name[:MAX_NAME]]
            by_state[str(worker.state)] += 1
            info.add_metric([*labels, worker.backend[:16], worker.role, str(worker.state)], 1)
            layers.add_metric(labels, worker.stage.size if worker.stage else 0)
            done = (worker.progress[0] / worker.progress[1] if worker.progress and worker.progress[1]
                    else 1.0 if worker.state == WorkerState.READY else 0.0)
            progress.add_metric(labels, done)
            steps.add_metric(labels, link.step_times.cumulative(), link.step_times.total_seconds)
            sent.add_metric(labels, link.bytes_sent)
            received.add_metric(labels, link.bytes_received)
            if worker.passes:
                passes.add_metric(labels, worker.passes.passes)
                pass_frames.add_metric(labels, worker.passes.frames)
                largest.add_metric(labels, worker.passes.largest)
            for kind, totals in (worker.timing.kinds.items() if worker.timing else ()):
                for part, seconds in totals.seconds.items():
                    parts.add_metric([*labels, kind, part], seconds)
        for state, count in by_state.items():
            states.add_metric([state], count)
        yield from (states, info, layers, progress, steps, sent, received, parts, passes, pass_frames, largest)

    def _engine(self) -> Iterator[Metric]:
        engine = EngineSnapshot.of(self.engine)   # one view for the whole scrape
        checks = engine.checks
        yield CounterMetricFamily("tabswarm_tokens_generated", "Tokens generated (all requests, so far)",
                                  value=engine.tokens_generated)
        yield CounterMetricFamily("tabswarm_replays", "Stage or pipeline replays after a lost tab",
                                  value=engine.replays)
        yield CounterMetricFamily("tabswarm_session_moves", "Running requests moved to a new plan",
                                  value=engine.moves)
        yield CounterMetricFamily("tabswarm_failed_after_loss", "Requests that failed after losing tabs",
                                  value=engine.failures)
        steps = CounterMetricFamily("tabswarm_steps", "Pipeline steps executed (kind decode = one row, "
                                    "prefill = more)", labels=["kind"])
        parts = CounterMetricFamily("tabswarm_step_part_seconds", "The coordinator's parts of its steps: embed, "
                                    "encode, relay (its own work per hop), stage_wait (send to result, all stages), "
                                    "decode, head, sample", labels=["kind", "part"])
        for kind, totals in engine.timing.kinds.items():
            steps.add_metric([kind], totals.steps)
            for part, seconds in totals.seconds.items():
                parts.add_metric([kind, part], seconds)
        yield steps
        yield parts
        spot = CounterMetricFamily("tabswarm_spot_checks", "Tab results re-run natively, by result",
                                   labels=["result"])
        for result, count in (("passed", checks.passed), ("failed", checks.failed),
                              ("skipped_busy", checks.skipped_busy)):
            spot.add_metric([result], count)
        yield spot
        yield CounterMetricFamily("tabswarm_spot_check_cpu_seconds", "Coordinator CPU spent on spot checks",
                                  value=checks.seconds)


def metrics_handler(registry: CollectorRegistry):
    async def handle(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
    return handle
