"""Rebuilding one lost stage of a running stream from its recorded frames (I/O).

When a stage's worker is lost and a worker that already holds exactly that stage's
layers is there (a standby), `replace_stage` sends it the lost stage's recorded frames
(the cuts after rejected drafts included, NO_REPLY on all but the last) and returns the
current step's RESULT: the surviving stages keep their caches, and the stream goes on
bit for bit as it would have. Anything else re-raises the loss, and the engine replays
the whole history as one prefill on whatever pipeline forms. Decides nothing about
which plan to run (the cluster does) and never samples.
"""

from __future__ import annotations

import logging

from coordinator.config import ServerConfig
from coordinator.engine.generation_state import Step
from coordinator.engine.session import HopStats, PipelineSession
from coordinator.engine.stage_replay import frame_rows, replaced_stage, replay_messages
from coordinator.swarm.cluster import Cluster
from coordinator.swarm.worker_link import WorkerLost
from protocol.control import Truncate
from protocol.frames import with_no_reply

log = logging.getLogger(__name__)


async def replace_stage(cluster: Cluster, config: ServerConfig, stats: HopStats, session: PipelineSession,
                        index: int, frames: list[bytes], step: Step, error: WorkerLost) -> bytes:
    """Send the lost stage's `frames` (everything it was sent, the current step's last) to
    the worker that now holds its layers; return the current step's RESULT. Re-raises
    `error` when that is not possible (no frames: the stream cannot be rebuilt from them)."""
    if not frames or error.refused:
        log.info("stream %d: stage %d cannot be rebuilt from frames (%s)", session.stream, index,
                 "refused" if error.refused else "no recorded frames")
        raise error
    lost = session.pipeline[index][1]
    estimate = len(frames) * (lost.timer.one_row_seconds or 0.05)
    if estimate > config.exact_replay_seconds:
        log.info("stream %d: replaying stage %d's %d frames would take ~%.1f s; replaying the history as "
                 "one prefill instead", session.stream, index, len(frames), estimate)
        raise error
    await drop_worker(cluster, error)
    # No waiting here: a replacement that already holds the range is planned at once. If
    # there is none, the whole-history replay waits (once) for whatever pipeline forms.
    pipeline = cluster.pipeline()
    if pipeline is None:
        raise error
    if not replaced_stage([stage for stage, _ in session.pipeline], [stage for stage, _ in pipeline], index):
        log.info("stream %d: the new pipeline %s does not just replace stage %d of %s", session.stream,
                 [stage for stage, _ in pipeline], index, [stage for stage, _ in session.pipeline])
        raise error
    stage, link = pipeline[index]
    log.warning("stream %d: %s; replaying stage %d's %d frames on %s", session.stream, error, index,
                len(frames), stage.worker)
    try:
        messages = replay_messages(frames)
        for message in messages[:-1]:
            if isinstance(message, int):   # a cut the lost worker's caches had (rejected drafts)
                await link.send_control(Truncate(stream=session.stream, length=message), session.stream)
            else:
                await link.send(with_no_reply(message))
        # The answer comes after the worker has run every frame: bound it by all their rows.
        rows = sum(frame_rows(frame) for frame in frames)
        result = await link.call(frames[-1], session.stream, step.step_id, rows)
    except WorkerLost as again:
        raise again from error
    stats.bytes_sent += sum(len(frame) for frame in frames)
    stats.replays += 1
    stats.replayed_rows += len(frames)
    await cluster.session_closed(session.plan_version)
    session.plan_version = cluster.plan_version
    cluster.session_opened(session.plan_version)
    session.pipeline = pipeline
    session.masks_sent.pop(error.worker, None)
    return result


async def drop_worker(cluster: Cluster, error: WorkerLost) -> None:
    """A stalled worker is evicted; one whose socket failed under a send may not have
    been noticed by its reader yet: either way the next pipeline must not include it."""
    link = cluster.workers.get(error.worker)
    if link is not None and not error.refused:
        await (cluster.evict(link, str(error)) if error.stalled else cluster.leave(link, str(error)))
