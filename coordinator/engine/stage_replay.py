"""What a lost stage needs to be rebuilt exactly: the frames it was sent. Pure, no I/O.

The coordinator relays every hop, so it has, for each stage of a stream, every FORWARD
frame that stage received. When a stage's worker is lost and the new pipeline differs
only in that stage's worker (a standby took exactly the lost range), the replacement is
sent the same frames again, in order, with NO_REPLY on all but the last: it computes
what the lost worker computed, bit for bit (same inputs, same one-row steps, same graphs),
while the surviving stages keep their caches. That makes a greedy stream identical to an
uninterrupted one, which a one-prefill replay of the whole history is not quite (its
multi-row sums differ from one-row decode steps in the last float bits).

Speculative decoding cuts caches back (`truncate`): the recorder drops frames wholly
past the cut, and `replay_messages` puts the cut back in wherever a frame starts before
the previous one ended, so a replay leaves the replacement's caches as the lost one's.

`StageRecorder` keeps the frames, up to a limit (past it, or when the stream uses
something a replay of frames alone cannot rebuild — per-stream head masks, delta coding —
the engine falls back to the whole-history replay).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator.swarm.planner import Stage


@dataclass
class StageRecorder:
    stages: int
    max_frames: int = 256
    frames: list[list[bytes]] = field(default_factory=list)
    usable: bool = True

    def __post_init__(self) -> None:
        self.frames = [[] for _ in range(self.stages)]

    def record(self, stage_index: int, frame: bytes) -> None:
        if not self.usable:
            return
        recorded = self.frames[stage_index]
        if len(recorded) >= self.max_frames:
            self.give_up()
            return
        recorded.append(frame)

    def truncate(self, length: int) -> None:
        """The stream's caches were cut to `length` positions: frames wholly past it are
        dropped; a frame that straddles it stays, and `replay_messages` re-cuts after it."""
        for recorded in self.frames:
            while recorded and frame_position(recorded[-1]) >= length:
                recorded.pop()

    def give_up(self) -> None:
        """This stream can no longer be rebuilt from its frames: forget them."""
        self.usable = False
        self.frames = [[] for _ in range(self.stages)]

    def frames_with(self, stage_index: int, frame: bytes) -> list[bytes]:
        """What a replacement for the stage is sent: its recorded frames, then `frame` (the
        current step's); nothing when the stream can no longer be rebuilt from frames."""
        if not self.usable or len(self.frames[stage_index]) >= self.max_frames:
            return []
        return [*self.frames[stage_index], frame]

    def replay_frames(self, stage_index: int) -> list[bytes]:
        return list(self.frames[stage_index]) if self.usable else []


def frame_position(frame: bytes) -> int:
    return int.from_bytes(frame[12:16], "little")


def frame_rows(frame: bytes) -> int:
    return int.from_bytes(frame[16:20], "little")


def replay_messages(frames: list[bytes]) -> list[bytes | int]:
    """The frames in order, with a truncate length (an int) before any frame that starts
    before the end of the previous one: the worker's caches were cut there (a verify
    pass's rejected drafts, or self-speculative draft rows)."""
    messages: list[bytes | int] = []
    length = 0
    for frame in frames:
        position = frame_position(frame)
        if position < length:
            messages.append(position)
        messages.append(frame)
        length = position + frame_rows(frame)
    return messages


def replaced_stage(old: list[Stage], new: list[Stage], lost: int) -> bool:
    """Whether `new` is `old` with only stage `lost` on another worker, same layers."""
    if len(old) != len(new):
        return False
    for index, (before, after) in enumerate(zip(old, new, strict=True)):
        if (before.layer_start, before.layer_end) != (after.layer_start, after.layer_end):
            return False
        if index != lost and before.worker != after.worker:
            return False
    return old[lost].worker != new[lost].worker
