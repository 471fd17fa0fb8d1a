"""Group commit for the API's hot write path: votes that arrive together share one transaction and one commit.

A vote is a few small SQLite statements (microseconds, with WAL and synchronous=NORMAL); what costs is the
commit and, in an async server, handing each write to a worker thread and back. `WriteBatcher.run(fn)`
queues the blocking call `fn`; one flush at a time runs every queued call inside one `Store.batch()`
transaction, then answers each caller with its own result or exception. A flush first lets GATHER_TURNS
event-loop turns pass: requests read together reach `run` a turn or two apart (body, auth and validation each
await), and they join the same commit instead of taking one each. The flush writes in place, on the
event loop, when the store's writer is free; when it is not (another thread is writing, or another process
such as a training job holds the database's write lock) the batch goes to a worker thread, so the loop never
waits on a lock. While a flush waits there, the next votes queue up, so batches grow with the load. A caller
is answered only after the commit: an acknowledged vote is on disk. Measured by bench/store.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from feedback.errors import WriterBusy
from feedback.store import Store

T = TypeVar("T")
Outcome = tuple[bool, Any]  # (True, result) or (False, exception)

# Loop turns a flush waits before it writes; without them each vote of a quiet server took a commit of its own
# (bench/store.py, 8 clients: 542-978 votes/s without, ~1,600 with)
GATHER_TURNS = 4


class WriteBatcher:
    def __init__(self, store: Store, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: list[tuple[Callable[[], Any], asyncio.Future]] = []
        self._flushing = False

    async def run(self, fn: Callable[[], T]) -> T:
        """Run the blocking store call `fn` in a batch; returns its result or raises its exception."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((fn, future))
        if not self._flushing:
            self._flushing = True
            asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            for _ in range(GATHER_TURNS):
                await asyncio.sleep(0)
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                try:
                    outcomes = await self._commit([fn for fn, _ in batch])
                except BaseException as exc:  # the commit failed: none of this batch is stored
                    outcomes = [(False, exc)] * len(batch)
                for (_, future), (ok, value) in zip(batch, outcomes):
                    if future.done():  # the caller went away
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
                await asyncio.sleep(0)  # a long queue is written in turns with the rest of the loop's work
        finally:
            self._flushing = False

    async def _commit(self, calls: list[Callable[[], Any]]) -> list[Outcome]:
        try:
            return self._write(calls, wait=False)  # the writer is free: no thread hop
        except WriterBusy:
            return await asyncio.to_thread(self._write, calls, wait=True)

    def _write(self, calls: list[Callable[[], Any]], *, wait: bool) -> list[Outcome]:
        outcomes: list[Outcome] = []
        with self.store.batch(wait=wait):
            for fn in calls:
                try:
                    outcomes.append((True, fn()))
                except Exception as exc:  # this call's savepoint is rolled back; the others stand
                    outcomes.append((False, exc))
        return outcomes
