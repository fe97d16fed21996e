"""The data a running request carries besides its Sequence: where it runs now (a
PipelineSession: stream, stages, codec and router state, cache length, recorded frames)
and what it cost (HopStats, reported in `usage.tabswarm`). Plain dataclasses; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator.engine.head_pruning import Masks, StreamHeadMasks
from coordinator.engine.pipelined_speculation import ChunkPipeline
from coordinator.engine.router import TokenState
from coordinator.engine.stage_replay import StageRecorder
from coordinator.swarm.pipeline import Pipeline
from coordinator.swarm.time_breakdown import TimeTotals
from protocol.activation_codec import StreamCodecState


@dataclass
class HopStats:
    """Accounting for one request, reported in `usage.tabswarm`."""

    hops: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    stages: int = 0
    layer_executions: int = 0
    layers_skipped: int = 0
    nodes_bypassed: int = 0
    hops_saved: int = 0
    heads_pruned: int = 0          # (token, layer, head) attention executions masked
    replays: int = 0               # sessions rebuilt after a lost worker
    moves: int = 0                 # sessions moved to a newly activated plan
    replayed_rows: int = 0
    step_seconds: list[float] = field(default_factory=list)
    speculation: str = "off"       # the method this request drafted with
    drafted: int = 0               # tokens drafted
    accepted: int = 0              # drafted tokens the verify passes accepted
    verify_passes: int = 0
    draft_steps: int = 0           # self-speculative draft steps (pipeline passes with skips)
    most_in_flight: int = 0        # pipelined speculation: most verify chunks in flight at once
    timing: TimeTotals = field(default_factory=TimeTotals)   # the coordinator's parts of its steps


@dataclass(frozen=True)
class TokenEvent:
    token: int
    seconds: float


@dataclass
class PipelineSession:
    """Where a sequence runs now: one stream on one pipeline, and the state that goes with it."""

    stream: int
    pipeline: Pipeline
    plan_version: int
    encoder: StreamCodecState = field(default_factory=StreamCodecState)   # coordinator -> stage 0
    decoder: StreamCodecState = field(default_factory=StreamCodecState)   # last stage -> coordinator
    routing: TokenState = field(default_factory=TokenState)
    heads: StreamHeadMasks | None = None
    masks_sent: dict[str, Masks | None] = field(default_factory=dict)    # worker id -> masks it applies
    cached: int = 0                # ids of the sequence the workers' caches hold
    cut_to: int | None = None      # caches hold rejected drafts: cut them to this before the next step
    recorder: StageRecorder | None = None   # every frame each stage was sent (exact stage replay)
    chunks: ChunkPipeline | None = None     # pipelined speculation: verify chunks in flight

    def cut_back_to_cached(self) -> None:
        """The caches hold rows past `cached` (rejected drafts): cut them first thing next step
        (no I/O after sampling), and forget those frames for an exact replay."""
        self.cut_to = self.cached
        if self.recorder is not None:
            self.recorder.truncate(self.cached)
