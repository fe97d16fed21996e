"""A request's state as data, and the pure half of a step: schedule and update.

Owns the split the rest of the engine relies on:

- a **Sequence** is what the request is: prompt ids, the tokens generated so far, the
  sampler's parameters and RNG, and why it finished. It survives any change of pipeline.
- a **PipelineSession** (in `engine.py`, it holds links) is where the sequence runs now:
  stream id, stages, codec states, router state. It can be thrown away at any time;
  `cached` says how many of the sequence's ids its workers' caches hold.

A step goes schedule -> execute -> update, and only execute does I/O:
`schedule(sequence, cached)` names the rows the caches lack (all of them on a new
session: a replay is a prefill of prompt + generated), plus any drafted tokens to verify;
a prefill longer than `max_rows` goes in chunks, each a `partial` step that samples nothing
(so a long prompt never asks a tab for more rows than its memory plans for); `update` appends one emitted token and decides whether the sequence is finished
(a verify step emits several: the engine calls it once per token). Nothing here touches sockets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from protocol.frames import StepKind
from shards.sampling import SamplingParams, make_rng


@dataclass
class Sequence:
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    stop_ids: frozenset[int]
    rng: np.random.Generator
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None     # "stop" (a stop id was sampled) or "length"

    @classmethod
    def start(cls, prompt_ids: tuple[int, ...], params: SamplingParams, stop_ids: frozenset[int]) -> Sequence:
        if not prompt_ids:
            raise ValueError("the prompt has no tokens")
        return cls(tuple(prompt_ids), params, stop_ids, make_rng(params))

    @property
    def length(self) -> int:
        """Ids the model has to have seen before sampling the next token."""
        return len(self.prompt_ids) + len(self.generated)

    def ids(self, start: int = 0) -> tuple[int, ...]:
        prompt = len(self.prompt_ids)
        return self.prompt_ids[start:] + tuple(self.generated[max(start - prompt, 0):])


@dataclass(frozen=True)
class Step:
    """One pass through the pipeline: rows ids at positions position.. (row 0's).

    `ids` ends with `drafts` on a VERIFY step: speculated tokens whose logits the step
    computes too (the caches then hold them until the engine truncates rejected ones)."""

    step_id: int
    kind: StepKind
    position: int
    ids: tuple[int, ...]
    drafts: tuple[int, ...] = ()
    partial: bool = False        # a prefill chunk that does not reach the last id: nothing is sampled

    @property
    def rows(self) -> int:
        return len(self.ids)


def schedule(sequence: Sequence, cached: int, step_id: int, drafts: tuple[int, ...] = (),
             max_rows: int | None = None) -> Step:
    """The next step for a sequence whose session's caches hold its first `cached` ids,
    verifying `drafts` (tokens that may follow) in the same pass; a prefill of more than
    `max_rows` ids runs its first `max_rows` as a partial step."""
    if sequence.finish_reason is not None:
        raise ValueError("the sequence is finished")
    if not 0 <= cached < sequence.length:
        raise ValueError(f"caches hold {cached} of {sequence.length} ids: nothing or too much to run")
    ids = sequence.ids(cached)
    if drafts:
        if len(ids) != 1 or not cached:
            raise ValueError("drafts are verified on a decode step only (caches hold all but the last id)")
        return Step(step_id, StepKind.VERIFY, cached, ids + tuple(drafts), tuple(drafts))
    if max_rows is not None and len(ids) > max_rows:
        return Step(step_id, StepKind.PREFILL, cached, ids[:max_rows], partial=True)
    kind = StepKind.DECODE if cached and len(ids) == 1 else StepKind.PREFILL
    return Step(step_id, kind, cached, ids)


def update(sequence: Sequence, token: int) -> str | None:
    """Record the sampled token; return the finish reason once the sequence is done."""
    sequence.generated.append(token)
    if token in sequence.stop_ids:
        sequence.finish_reason = "stop"
    elif len(sequence.generated) >= sequence.params.max_tokens:
        sequence.finish_reason = "length"
    return sequence.finish_reason


def through_stop(tokens: tuple[int, ...], stop_ids: frozenset[int]) -> tuple[int, ...]:
    """`tokens` up to and including the first stop id: nothing after an end-of-text token is
    emitted, drafted or counted as accepted."""
    stop = next((index for index, token in enumerate(tokens) if token in stop_ids), None)
    return tokens if stop is None else tokens[:stop + 1]
