"""Deliver committed audit records to each sink, in commit order, at least once.

Each sink has its own cursor in the store (the id of the last record it
confirmed). A sink that fails is retried with backoff; its records wait, and
the other sinks go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from osel.backoff import BackoffPolicy, OutageLog
from osel.sinks import Sink
from osel.store.store import Store

log = logging.getLogger(__name__)


class Outbox:
    def __init__(
        self,
        store: Store,
        sinks: list[Sink],
        *,
        chunk: int = 500,
        idle_seconds: float = 0.5,
        backoff: BackoffPolicy | None = None,
    ) -> None:
        self.store = store
        self.sinks = sinks
        self.chunk = chunk
        self.idle = idle_seconds
        self.backoff = backoff or BackoffPolicy()
        self.wake = asyncio.Event()

    async def drain_once(self, sink: Sink) -> int:
        """Deliver what is waiting for one sink; return how many records went out."""
        position = await self.store.cursor(sink.sink_id)
        sent = 0
        while True:
            records = await self.store.records_after(position, self.chunk)
            if not records:
                return sent
            await sink.send(records)
            position = records[-1][0]
            await self.store.set_cursor(sink.sink_id, position)
            sent += len(records)

    async def run_sink(self, sink: Sink, stop: asyncio.Event) -> None:
        outage = OutageLog(f"audit sink {sink.sink_id}", log, cap=self.backoff.cap)
        while not stop.is_set():
            try:
                await self.drain_once(sink)
            except Exception as exc:  # a sink must never stop the daemon; its records wait
                outage.failed(exc)
                await _sleep(stop, self.backoff.delay(outage.attempts))
                continue
            outage.recovered()
            self.wake.clear()
            await _wait(self.wake, stop, self.idle)

    async def lag(self) -> dict[str, int]:
        last = await self.store.last_record_id()
        return {s.sink_id: last - await self.store.cursor(s.sink_id) for s in self.sinks}


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def _wait(event: asyncio.Event, stop: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
