"""The turns of one process's writers at SQLite's single write lock.

SQLite lets one transaction write at a time. Left to SQLite, a writer that finds
the lock taken polls for it, sleeping up to 100 ms between tries, so osel's own
writers (the consumer's commit, the scan scheduler, the sinks' cursors) queue
here instead, and each is woken as soon as the one before has finished.

The consumer's commit is urgent: it goes before the writers already waiting.
Until it commits, the messages of its batch stay unacknowledged and the batch
after it waits; the scheduler and the sinks work on what was committed and lose
nothing by waiting one transaction more. They are not starved: after each commit
the consumer handles a whole batch before it asks for its next turn, and the
others take theirs meanwhile. Written by hand because asyncio's `Lock` has a
single first-come, first-served queue and no maintained library offers a lock
with two classes of waiters.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class WriterTurns:
    """A lock with two queues: urgent waiters get it before the others, each queue
    in arrival order."""

    def __init__(self) -> None:
        self._held = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._others: deque[asyncio.Future[None]] = deque()

    @property
    def held(self) -> bool:
        return self._held

    @asynccontextmanager
    async def turn(self, *, urgent: bool = False) -> AsyncIterator[None]:
        await self.acquire(urgent=urgent)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, *, urgent: bool = False) -> None:
        if not self._held:  # release() frees it only with both queues empty
            self._held = True
            return
        queue = self._urgent if urgent else self._others
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed the lock as it was cancelled: pass it on
            elif waiter in queue:  # release() drops cancelled waiters it meets
                queue.remove(waiter)
            raise

    def release(self) -> None:
        """Hand the lock to the next waiter, urgent ones first, or free it."""
        if not self._held:
            raise RuntimeError("WriterTurns.release() without a turn held")
        for queue in (self._urgent, self._others):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # still held: it passes to this waiter
                    return
        self._held = False
