"""What a client asked the engine to generate: the prompt's ids, the sampling parameters,
the wire codec, the stop ids, and the router's and speculation's settings for this request.

A frozen dataclass, built by the HTTP layer from a parsed request; the engine reads it and
never changes it. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator.engine.drafting import SpeculationConfig
from coordinator.engine.router import RouterConfig
from protocol.activation_codec import CodecSettings
from shards.sampling import SamplingParams


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    codec: CodecSettings
    stop_ids: frozenset[int]
    router: RouterConfig = field(default_factory=RouterConfig)
    speculation: SpeculationConfig = field(default_factory=SpeculationConfig)
