"""Deliver committed audit records to each sink, in commit order, at least once.

Each sink has its own cursor in the store (the id of the last record it
confirmed). A sink that fails is retried with capped exponential backoff and
jitter; its records wait, and the other sinks go on. A sink whose failure
cannot pass by itself (a bad or disabled HEC token, a record too large for
UDP) raises `PermanentSinkError`: the outbox stops that sink, says so in one
error line, and its records wait in the store until the configuration is
fixed and osel restarted.

Each sink's state (ok, retrying, stopped) and last error are kept in the
store's meta table under ``audit_sink:<sink id>``, so ``osel audit status``
can show them from another process.

Several instances on one store: one instance at a time delivers to a sink. It
holds a lease on the sink's cursor row (claimed with ``FOR UPDATE SKIP LOCKED``
on PostgreSQL), renews it while it delivers, and gives it back when it stops;
an instance that dies holding it loses it when the lease runs out
(``service.lease_seconds``), and another takes over from the cursor. The
others stand by.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from osel.backoff import BackoffPolicy, OutageLog, describe_error
from osel.sinks import Sink
from osel.store.queries import sink_lag
from osel.store.store import Claim, Store, utcnow

log = logging.getLogger(__name__)

SinkState = Literal["ok", "retrying", "stopped", "standby"]
_STATES: tuple[SinkState, ...] = ("ok", "retrying", "stopped", "standby")
STATE_KEY = "audit_sink:"


class PermanentSinkError(Exception):
    """The sink cannot deliver until its configuration is fixed and osel restarted.

    The message says which sink and what to fix; it must carry no secret.
    """


class MetaStore(Protocol):
    """The part of the store a sink may keep its own state in."""

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta(self, key: str, value: str) -> None: ...


@runtime_checkable
class StatefulSink(Protocol):
    """A sink that keeps state in the store (the HEC channel and its pending acks)."""

    async def attach(self, meta: MetaStore) -> None: ...


@dataclass(frozen=True, slots=True)
class SinkHealth:
    state: SinkState = "ok"
    error: str = ""
    since: str = ""  # ISO 8601 time of the last change of state or error

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> SinkHealth | None:
        if not text:
            return None
        try:
            data = json.loads(text)
            state = data["state"]
            error, since = str(data.get("error", "")), str(data.get("since", ""))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        for known in _STATES:
            if state == known:
                return cls(known, error, since)
        return None


class Outbox:
    def __init__(
        self,
        store: Store,
        sinks: list[Sink],
        *,
        chunk: int = 500,
        idle_seconds: float = 0.5,
        backoff: BackoffPolicy | None = None,
        instance: str = "osel",
        lease_seconds: float = 30.0,
    ) -> None:
        self.store = store
        self.sinks = sinks
        self.chunk = chunk
        self.idle = idle_seconds
        self.backoff = backoff or BackoffPolicy()
        self.wake = asyncio.Event()
        self.health: dict[str, SinkHealth] = {s.sink_id: SinkHealth() for s in sinks}
        # the instance name (service.instance_name, by default the host name): each instance
        # needs its own; a restarted instance takes its own lease back at once
        self.owner = instance
        self.lease_seconds = lease_seconds
        self.holding: set[str] = set()  # the sinks this process delivers to now
        self._renew_at: dict[str, float] = {}  # monotonic time to write the lease again
        self._attached: set[str] = set()

    def stopped(self, sink: Sink) -> bool:
        return self.health.get(sink.sink_id, SinkHealth()).state == "stopped"

    async def drain_once(self, sink: Sink) -> int:
        """Deliver what is waiting for one sink; return how many records went out.

        A stopped sink delivers nothing until osel is restarted.
        """
        if self.stopped(sink):
            return 0
        sink_id = sink.sink_id
        if sink_id in self.holding and time.monotonic() < self._renew_at.get(sink_id, 0.0):
            # the lease runs for a while yet: no write needed to go on delivering
            claim: Claim | None = Claim(await self.store.cursor(sink_id), self.owner)
        else:
            claim = await self.store.claim_sink(sink_id, self.owner, self.lease_seconds)
            self._leased(sink_id)
        if claim is None:
            if sink_id in self.holding:
                self.holding.discard(sink_id)
                log.warning("audit sink %s: another instance took over its delivery", sink_id)
            return 0
        position = claim.position
        if sink_id not in self.holding:
            self.holding.add(sink_id)
            self._attached.discard(sink_id)  # take in what the previous holder left
            if claim.previous not in (None, self.owner):
                log.info(
                    "audit sink %s: delivery taken over from %s (its lease ran out), from "
                    "record %d",
                    sink_id,
                    claim.previous,
                    position,
                )
        if sink_id not in self._attached and isinstance(sink, StatefulSink):
            await sink.attach(self.store)
        self._attached.add(sink_id)
        sent = 0
        while True:
            records = await self.store.records_after(position, self.chunk)
            if not records:
                return sent
            try:
                await self._send(sink, records)
            except PermanentSinkError as exc:
                self.health[sink_id] = SinkHealth("stopped", str(exc), _now())
                raise
            position = records[-1][0]
            moved = await self.store.advance_cursor(
                sink_id, self.owner, position, self.lease_seconds
            )
            self._leased(sink_id)
            if not moved:
                self.holding.discard(sink_id)
                log.warning(
                    "audit sink %s: the delivery lease ran out while sending records up to "
                    "%d; another instance delivers from its cursor, so some records may go "
                    "out twice (de-duplicate on record_id)",
                    sink_id,
                    position,
                )
                return sent
            sent += len(records)

    def _leased(self, sink_id: str) -> None:
        """The lease was just written: renew it again once half of it has passed."""
        self._renew_at[sink_id] = time.monotonic() + self.lease_seconds / 2

    async def _send(self, sink: Sink, records: list[tuple[int, str]]) -> None:
        """Send, renewing the lease meanwhile (an acknowledged HEC batch can take long)."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.lease_seconds / 3)
                await self.store.claim_sink(sink.sink_id, self.owner, self.lease_seconds)

        renewer = asyncio.create_task(renew())
        try:
            await sink.send(records)
        finally:
            renewer.cancel()
            with contextlib.suppress(BaseException):
                await renewer

    async def release(self) -> None:
        """Give back the leases this process holds, so another instance goes on at once."""
        for sink_id in sorted(self.holding):
            with contextlib.suppress(Exception):
                await self.store.release_sink(sink_id, self.owner)
        self.holding.clear()

    async def run_sink(self, sink: Sink, stop: asyncio.Event) -> None:
        outage = OutageLog(f"audit sink {sink.sink_id}", log, cap=self.backoff.cap)
        await self._keep(sink, SinkHealth("ok", "", _now()))
        while not stop.is_set():
            try:
                await self.drain_once(sink)
            except PermanentSinkError as exc:
                await self._stop(sink, exc)
                return
            except Exception as exc:  # a sink must never stop the daemon; its records wait
                outage.failed(exc)
                await self._set(sink, "retrying", describe_error(exc))
                await _sleep(stop, self.backoff.delay(outage.attempts))
                continue
            outage.recovered()
            if sink.sink_id in self.holding:
                await self._set(sink, "ok", "")
            else:
                self.health[sink.sink_id] = SinkHealth("standby", "", _now())
            self.wake.clear()
            await _wait(self.wake, stop, self.idle)

    async def _stop(self, sink: Sink, exc: PermanentSinkError) -> None:
        behind = (await self.lag()).get(sink.sink_id, 0)
        log.error(
            "audit sink %s stopped: %s. Its %d undelivered record(s) wait in the store and "
            "go out once this is fixed and osel restarted",
            sink.sink_id,
            exc,
            behind,
            extra={"sink": sink.sink_id, "behind": behind},
        )
        await self._keep(sink, SinkHealth("stopped", str(exc), _now()))
        if sink.sink_id in self.holding:  # an instance configured differently may deliver
            self.holding.discard(sink.sink_id)
            with contextlib.suppress(Exception):
                await self.store.release_sink(sink.sink_id, self.owner)

    async def _set(self, sink: Sink, state: SinkState, error: str) -> None:
        current = self.health.get(sink.sink_id)
        if current is not None and (current.state, current.error) == (state, error):
            return
        await self._keep(sink, SinkHealth(state, error, _now()))

    async def _keep(self, sink: Sink, health: SinkHealth) -> None:
        self.health[sink.sink_id] = health
        try:
            await self.store.set_meta(STATE_KEY + sink.sink_id, health.to_json())
        except Exception as exc:  # the state is informative; the store may be what is down
            log.debug("could not record the state of audit sink %s: %s", sink.sink_id, exc)

    async def lag(self) -> dict[str, int]:
        last = await self.store.last_record_id()
        return {s.sink_id: last - await self.store.cursor(s.sink_id) for s in self.sinks}

    async def status(self) -> list[dict[str, Any]]:
        """Per sink: records behind, the oldest undelivered record's age, state, last error."""
        return await sink_status(self.store, [s.sink_id for s in self.sinks], self.health)


async def sink_status(
    store: Store, sink_ids: list[str], live: dict[str, SinkHealth] | None = None
) -> list[dict[str, Any]]:
    """The status of the given sinks: from this process (``live``) or as the daemon left it."""
    lag = await sink_lag(store, sink_ids)
    out = []
    for sink_id in sink_ids:
        health = (live or {}).get(sink_id)
        if health is None:
            health = SinkHealth.from_json(await store.get_meta(STATE_KEY + sink_id))
        out.append(
            {
                "sink": sink_id,
                "behind": int(lag[sink_id]["behind"] or 0),
                "oldest_seconds": lag[sink_id]["oldest_seconds"],
                "state": health.state if health else "unknown",
                "error": health.error if health else "",
                "since": health.since if health else "",
            }
        )
    return out


def _now() -> str:
    return utcnow().isoformat(timespec="seconds")


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
