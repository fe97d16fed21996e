"""The coordinator's row batcher on plain numpy functions: rows that wait together go in one
call, each caller gets its own rows back, a cancelled caller costs nothing, an error reaches
every caller of the call, and a call never exceeds its row budget."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from coordinator.engine.row_batcher import RowBatcher


class Recorder:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.calls.append(len(rows))
        return rows * 10.0


async def test_callers_waiting_together_share_one_call_and_get_their_own_rows():
    recorder = Recorder()
    batcher = RowBatcher(recorder)
    inputs = [np.full((count, 2), float(caller)) for caller, count in enumerate((1, 3, 1, 2))]
    outputs = await asyncio.gather(*(batcher(rows) for rows in inputs))
    assert recorder.calls == [7]
    for rows, out in zip(inputs, outputs, strict=True):
        assert np.array_equal(out, rows * 10.0)
    assert (batcher.calls, batcher.callers) == (1, 4)


async def test_rows_arriving_during_a_call_form_the_next_call():
    recorder = Recorder()
    batcher = RowBatcher(recorder)
    first = asyncio.create_task(batcher(np.ones((1, 2))))
    await asyncio.sleep(0)
    await asyncio.sleep(0)      # the first call is running now
    later = [asyncio.create_task(batcher(np.full((1, 2), 2.0))) for _ in range(3)]
    results = await asyncio.gather(first, *later)
    assert recorder.calls == [1, 3]
    assert [float(out[0, 0]) for out in results] == [10.0, 20.0, 20.0, 20.0]


async def test_a_call_holds_at_most_the_row_budget_and_no_caller_waits_forever():
    recorder = Recorder()
    batcher = RowBatcher(recorder, max_rows=4)
    outputs = await asyncio.gather(*(batcher(np.full((3, 1), float(i))) for i in range(3)))
    assert recorder.calls == [3, 3, 3]
    assert [float(out[0, 0]) for out in outputs] == [0.0, 10.0, 20.0]
    assert np.array_equal(await batcher(np.ones((9, 1))), np.full((9, 1), 10.0))   # one caller over the budget still runs


async def test_a_cancelled_caller_is_left_out_and_an_error_reaches_every_caller():
    recorder = Recorder()
    batcher = RowBatcher(recorder)
    kept = asyncio.create_task(batcher(np.ones((2, 1))))
    dropped = asyncio.create_task(batcher(np.ones((5, 1))))
    await asyncio.sleep(0)
    dropped.cancel()
    assert np.array_equal(await kept, np.full((2, 1), 10.0))
    assert recorder.calls == [2]

    def broken(rows: np.ndarray) -> np.ndarray:
        raise RuntimeError("head failed")

    failing = RowBatcher(broken)
    results = await asyncio.gather(failing(np.ones((1, 1))), failing(np.ones((1, 1))), return_exceptions=True)
    assert all(isinstance(result, RuntimeError) for result in results)
    with pytest.raises(RuntimeError):
        await failing(np.ones((1, 1)))
