"""One call for the rows of every stream waiting on the same per-row function: the
coordinator's side of continuous batching (the head, over all streams sampling at once).

Owns only the grouping: rows submitted while a call runs wait, and go together into the next
call; each caller gets its own rows back. The function must be row-invariant (a row's result
does not depend on the rows beside it, bitwise); the compact head is
(tests/unit/test_row_batcher.py). Batching it matters twice: the head reads its 8-bit table
once for all streams rather than once per stream, and the streams that sampled together
send their next frames together, so the tabs get them as one pass (worker_web/batch_former.js).
Decides nothing about requests; never touches sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np


async def off_loop(function, *args):
    """Run a native onnxruntime call off the event loop (it releases the GIL)."""
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


class RowBatcher:
    """`await batcher(rows)`: function(rows) (rows, ...) for one caller, run with every other
    caller's rows that are waiting at the same time (at most `max_rows` per call)."""

    def __init__(self, function: Callable[[np.ndarray], np.ndarray], max_rows: int = 256) -> None:
        self.function = function
        self.max_rows = max_rows
        self._waiting: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
        self._runner: asyncio.Task[None] | None = None
        self.calls = 0          # calls made, and the rows and callers they held (for benchmarks)
        self.callers = 0

    async def __call__(self, rows: np.ndarray) -> np.ndarray:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._waiting.append((rows, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return await future

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]:
        """The next call's callers, in arrival order: at least one, then while the rows fit."""
        taken: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
        total = 0
        while self._waiting and (not taken or total + len(self._waiting[0][0]) <= self.max_rows):
            entry = self._waiting.pop(0)
            if entry[1].done():          # its caller was cancelled: nothing to compute
                continue
            taken.append(entry)
            total += len(entry[0])
        return taken

    async def _run(self) -> None:
        while self._waiting:
            await asyncio.sleep(0)       # the streams that are ready in this turn of the loop join
            taken = self._take()
            if not taken:
                continue
            try:
                out = await off_loop(self.function, np.concatenate([rows for rows, _ in taken]))
            except Exception as error:   # why: every caller of the failed call gets the error, none hangs
                for _, future in taken:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.calls += 1
            self.callers += len(taken)
            start = 0
            for rows, future in taken:
                if not future.done():
                    future.set_result(out[start:start + len(rows)])
                start += len(rows)
