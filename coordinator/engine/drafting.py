"""Speculative drafting decisions: what to draft and how many. Pure; no sockets, no model.

- `SpeculationConfig`: the method (`lookup`, `self`, `off`), the longest draft, and the
  self-speculative drafter's router setting.
- `lookup_draft`: prompt lookup. The last n tokens (n = ngram_max down to ngram_min) are
  searched for in everything before them (prompt + generated); the tokens that followed
  the most recent earlier match are the draft. No model runs.
- `DraftLength`: one request's adaptive draft length. It grows by one when a whole draft
  is accepted and shrinks to what was accepted + 1 on a rejection; and it turns drafting
  off when the expected tokens per second of the best length, from the request's
  acceptance rate and the pipeline's measured step costs (`StepCosts`), fall below plain
  decoding's. While off it probes again every `probe_interval` tokens, so a request whose
  text turns repetitive (a quote, code being edited) picks speculation back up.

The self-speculative drafter itself runs pipeline steps, so it lives in the engine; it
uses `SpeculationConfig.draft_router` to decide skips and node bypasses for draft tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from coordinator.engine.router import RouterConfig

METHODS = ("off", "lookup", "self")


@dataclass(frozen=True)
class SpeculationConfig:
    # Measured (bench/speculation.py, 2 Chromium tabs): lookup 1.35x median on input-grounded
    # prompts, 1.07x on open chat, tokens identical; self-speculation does not pay here.
    method: str = "lookup"
    max_draft: int = 6
    ngram_max: int = 3
    ngram_min: int = 1
    adaptive: bool = True
    # Lookup drafts cut into chunks, one per stage in flight (pipelined_speculation.py); greedy only.
    pipelined: bool = False
    # Self-speculative drafts: the router's skips and whole-node bypasses (docs/speculation.md).
    draft_router: RouterConfig = field(default_factory=lambda: RouterConfig(policy="predictor", threshold=0.3,
                                                                            warmup=8))

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"speculation method must be one of {', '.join(METHODS)}")
        if not 1 <= self.max_draft <= 32:
            raise ValueError("max_draft must be between 1 and 32")
        if not 1 <= self.ngram_min <= self.ngram_max <= 8:
            raise ValueError("n-gram sizes must satisfy 1 <= ngram_min <= ngram_max <= 8")

    @property
    def enabled(self) -> bool:
        return self.method != "off"


def lookup_draft(ids: tuple[int, ...] | list[int], length: int, ngram_max: int = 3, ngram_min: int = 1
                 ) -> tuple[int, ...]:
    """Up to `length` tokens that followed the latest earlier occurrence of the last n ids."""
    if length < 1 or len(ids) < 2:
        return ()
    tokens = np.asarray(ids, dtype=np.int64)
    total = len(tokens)
    for size in range(min(ngram_max, total - 1), ngram_min - 1, -1):
        pattern = tokens[total - size:]
        # Windows that start at 0 .. total - size - 1: every occurrence before the suffix itself.
        windows = np.lib.stride_tricks.sliding_window_view(tokens[:total - 1], size)
        matches = np.flatnonzero((windows == pattern).all(axis=1))
        if matches.size:
            follow = int(matches[-1]) + size
            return tuple(int(token) for token in tokens[follow:follow + length])
    return ()


@dataclass
class StepCosts:
    """Measured pipeline step times (shared by all requests of one engine): the seconds of
    a one-row decode step, the extra seconds per additional verified row, and the seconds
    of one self-speculative draft step. Moving averages; `None` until first measured."""

    one_row: float | None = None
    extra_row: float | None = None
    draft_step: float | None = None
    smoothing: float = 0.1

    def _mix(self, current: float | None, value: float) -> float:
        return value if current is None else current + self.smoothing * (value - current)

    def observe_step(self, rows: int, seconds: float) -> None:
        if rows == 1:
            self.one_row = self._mix(self.one_row, seconds)
        elif self.one_row is not None:
            self.extra_row = self._mix(self.extra_row, max(seconds - self.one_row, 0.0) / (rows - 1))

    def observe_draft(self, seconds: float) -> None:
        self.draft_step = self._mix(self.draft_step, seconds)

    def verify_seconds(self, rows: int) -> float | None:
        if self.one_row is None:
            return None
        extra = self.extra_row if self.extra_row is not None else 0.1 * self.one_row   # a prior until measured
        return self.one_row + (rows - 1) * extra


def expected_tokens(acceptance: float, drafts: int) -> float:
    """Mean tokens one verify pass yields when each draft is accepted with this probability."""
    return float(sum(acceptance**index for index in range(drafts + 1)))


@dataclass
class DraftLength:
    """One request's draft length (0: decode plainly this step)."""

    max_draft: int
    adaptive: bool = True
    drafts_cost_steps: bool = False   # self-speculation: every draft token is a pipeline step
    length: int = 2
    acceptance: float = 0.5           # moving average of per-draft acceptance
    smoothing: float = 0.2
    probe_interval: int = 16
    idle: int = 0                      # tokens left before probing again, while off
    # Switching off by measured step costs depends on timing. A seeded sampled request must
    # not: how many drafts are made changes how its RNG is drawn, so it only grows/shrinks.
    cost_aware: bool = True

    def __post_init__(self) -> None:
        self.length = min(self.length, self.max_draft) if self.adaptive else self.max_draft

    def next_length(self, costs: StepCosts, remaining: int) -> int:
        """Drafts to make now; `remaining` tokens may still be generated (the bonus is one)."""
        cap = min(self.length, remaining - 1)
        if cap < 1:
            return 0
        if not self.adaptive:
            return cap
        if self.idle > 0:
            self.idle -= 1
            return 0
        if self.cost_aware and not self._pays(costs, cap):
            self.idle = self.probe_interval
            self.length = 1
            return 0
        return cap

    def _pays(self, costs: StepCosts, drafts: int) -> bool:
        plain = costs.one_row
        verify = costs.verify_seconds(drafts + 1)
        if plain is None or verify is None:
            return True            # nothing measured yet: try, and learn
        cost = verify + (drafts * (costs.draft_step or plain) if self.drafts_cost_steps else 0.0)
        return expected_tokens(self.acceptance, drafts) / cost > 1.0 / plain

    def observe(self, drafted: int, accepted: int) -> None:
        if drafted < 1:
            return
        # Drafts are checked in order until the first rejection: those examined are the
        # accepted ones plus the rejected one, each accepted with the per-token probability.
        examined = accepted + (accepted < drafted)
        self.acceptance += self.smoothing * (accepted / examined - self.acceptance)
        if not self.adaptive:
            return
        self.length = min(self.length + 1, self.max_draft) if accepted == drafted else max(accepted + 1, 1)
