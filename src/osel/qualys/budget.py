"""The Qualys API budget, kept in the store so that every osel instance shares it.

Qualys counts calls per subscription and per API over a sliding window and says
where a subscription stands in the headers of every answer
(`X-RateLimit-Limit`, `-Window-Sec`, `-Remaining`, `-ToWait-Sec`,
`X-Concurrency-Limit-Limit`, `-Running`). osel keeps the newest of them per API
and logs every call it makes, so it knows when its own calls age out of the
window without asking Qualys (asking would cost a call):

    remaining now ~ remaining seen + osel's calls that left the window since

A call is taken (counted before it is made, in one transaction, row-locked on
PostgreSQL) only while that estimate is above a floor: `min_remaining` for a
launch and what a launch needs (finding a launch in doubt, checking or adding
subscription addresses), twice that for following scans (polls and result
fetches stop first: launches matter more, and results wait in Qualys). While
Qualys says to wait (`X-RateLimit-ToWait-Sec`, or a 409), nothing is taken.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from osel.store import tables as t
from osel.store.store import Store, utcnow

DEFAULT_WINDOW = 3600  # when Qualys sends a remaining count but no window

HEADERS = {
    "rate_limit": "x-ratelimit-limit",
    "window_seconds": "x-ratelimit-window-sec",
    "remaining": "x-ratelimit-remaining",
    "to_wait": "x-ratelimit-towait-sec",
    "concurrency_limit": "x-concurrency-limit-limit",
    "concurrency_running": "x-concurrency-limit-running",
}


@dataclass(frozen=True, slots=True)
class Limits:
    """The limit headers of one answer (None: not sent)."""

    rate_limit: int | None = None
    window_seconds: int | None = None
    remaining: int | None = None
    to_wait: int | None = None
    concurrency_limit: int | None = None
    concurrency_running: int | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Limits:
        lowered = {k.lower(): v for k, v in headers.items()}
        values: dict[str, int | None] = {}
        for name, header in HEADERS.items():
            raw = lowered.get(header)
            try:
                values[name] = int(float(raw)) if raw is not None and raw.strip() else None
            except ValueError:
                values[name] = None
        return cls(**values)

    def __bool__(self) -> bool:
        return any(
            v is not None
            for v in (
                self.rate_limit,
                self.window_seconds,
                self.remaining,
                self.to_wait,
                self.concurrency_limit,
                self.concurrency_running,
            )
        )


@dataclass(frozen=True, slots=True)
class Ticket:
    """One call taken from the budget (or, with `wait` > 0, refused by it)."""

    api: str
    wait: float
    call_id: int | None = None
    at: datetime | None = None


def _aware(stamp: datetime | None) -> datetime | None:
    if stamp is not None and stamp.tzinfo is None:
        return stamp.replace(tzinfo=UTC)
    return stamp


class Budget:
    def __init__(
        self, store: Store, *, min_remaining: int, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.store = store
        self.min_remaining = min_remaining
        self.clock = clock

    async def wait(self, api: str, *, launch: bool = False) -> float:
        """Seconds before a call to `api` may be made (0: now); takes nothing. `launch`:
        for a launch (the lower floor); otherwise for following scans."""
        async with self.store.engine.connect() as conn:
            row = await self._row(conn, api, lock=False)
            return await self._wait(conn, row, api, launch, self.clock())

    async def take(self, api: str, *, launch: bool = False) -> Ticket:
        """Count one call to `api` before it is made. The ticket's `wait` is 0 when it may
        go now; otherwise the seconds to wait, and nothing was counted."""
        async with self.store.begin() as conn:
            now = self.clock()
            row = await self._row(conn, api, lock=True)
            wait = await self._wait(conn, row, api, launch, now)
            if wait > 0:
                return Ticket(api, wait)
            calls = t.qualys_calls
            if row is not None and row.remaining is not None:
                await conn.execute(
                    update(t.qualys_budget)
                    .where(t.qualys_budget.c.api == api)
                    .values(remaining=t.qualys_budget.c.remaining - 1)
                )
            done = await conn.execute(insert(calls).values(api=api, at=now))
            window = (row.window_seconds if row is not None else None) or DEFAULT_WINDOW
            horizon = now - timedelta(seconds=max(window, DEFAULT_WINDOW) + 60)
            await conn.execute(delete(calls).where((calls.c.api == api) & (calls.c.at < horizon)))
            key = done.inserted_primary_key
            return Ticket(api, 0.0, int(key[0]) if key else None, now)

    async def refund(self, ticket: Ticket) -> None:
        """Qualys blocked the call (409): blocked calls are not counted, so neither is it."""
        if ticket.call_id is None or ticket.at is None:
            return
        b, calls = t.qualys_budget, t.qualys_calls
        async with self.store.begin() as conn:
            row = await self._row(conn, ticket.api, lock=True)
            await conn.execute(delete(calls).where(calls.c.id == ticket.call_id))
            observed = _aware(row.observed_at) if row is not None else None
            # no answer since has said how many are left: give the count back too
            if (
                row is not None
                and row.remaining is not None
                and observed is not None
                and (observed <= ticket.at)
            ):
                await conn.execute(
                    update(b).where(b.c.api == ticket.api).values(remaining=b.c.remaining + 1)
                )

    async def observe(self, api: str, limits: Limits, *, at: datetime | None = None) -> None:
        """Keep the limit headers of an answer (the newest rate observation wins; an answer
        with concurrency headers only, a 409 for concurrency, leaves the rate part alone)."""
        if not limits:
            return
        at = at or self.clock()
        values: dict[str, Any] = {}
        if limits.remaining is not None:
            values.update(observed_at=at, remaining=limits.remaining)
            if limits.rate_limit is not None:
                values["rate_limit"] = limits.rate_limit
            if limits.window_seconds is not None:
                values["window_seconds"] = limits.window_seconds
            values["wait_until"] = None
        if limits.to_wait:
            values["wait_until"] = at + timedelta(seconds=limits.to_wait)
        if limits.concurrency_limit is not None:
            values["concurrency_limit"] = limits.concurrency_limit
        if limits.concurrency_running is not None:
            values["concurrency_running"] = limits.concurrency_running
        await self._upsert(api, values, at=at)

    async def block(self, api: str, seconds: float, *, at: datetime | None = None) -> None:
        """Qualys refused a call and said to wait: nothing is taken for `seconds`."""
        at = at or self.clock()
        until = at + timedelta(seconds=max(seconds, 0.0))
        b = t.qualys_budget
        async with self.store.begin() as conn:
            row = await self._row(conn, api, lock=True)
            if row is None:
                await conn.execute(insert(b).values(api=api, observed_at=at, wait_until=until))
                return
            current = _aware(row.wait_until)
            if current is None or current < until:
                await conn.execute(update(b).where(b.c.api == api).values(wait_until=until))

    async def snapshot(self) -> list[dict[str, Any]]:
        """Every API's budget as last seen (for `osel scans` and the logs)."""
        b = t.qualys_budget
        async with self.store.engine.connect() as conn:
            rows = list(await conn.execute(select(b).order_by(b.c.api)))
        return [
            {
                "api": r.api,
                "observed_at": (_aware(r.observed_at) or self.clock()).isoformat(),
                "rate_limit": r.rate_limit,
                "window_seconds": r.window_seconds,
                "remaining": r.remaining,
                "wait_until": w.isoformat() if (w := _aware(r.wait_until)) else None,
                "concurrency_limit": r.concurrency_limit,
                "concurrency_running": r.concurrency_running,
            }
            for r in rows
        ]

    # --- internals -----------------------------------------------------------------

    async def _row(self, conn: AsyncConnection, api: str, *, lock: bool) -> Any:
        b = t.qualys_budget
        query = select(b).where(b.c.api == api)
        if lock and self.store.dialect == "postgresql":
            query = query.with_for_update()
        return (await conn.execute(query)).first()

    async def _wait(
        self, conn: AsyncConnection, row: Any, api: str, launch: bool, now: datetime
    ) -> float:
        if row is None:
            return 0.0
        wait_until = _aware(row.wait_until)
        if wait_until is not None and wait_until > now:
            return (wait_until - now).total_seconds()
        if row.remaining is None:
            return 0.0
        floor = self.min_remaining if launch else 2 * self.min_remaining
        seconds = float(row.window_seconds or DEFAULT_WINDOW)
        window = timedelta(seconds=seconds)
        observed = _aware(row.observed_at) or now
        limit = row.rate_limit if row.rate_limit is not None else max(row.remaining, 0)
        if now - window >= observed:
            # everything counted in that observation has left the window since
            estimate = limit - await self._count(conn, api, now - window, now)
            others = 0
        else:
            # osel's own calls leave the window at known times; the calls of others
            # (counted in the observation, not in osel's log) are taken as spread evenly
            taken_since = await self._count(conn, api, observed, now)
            ours = await self._count(conn, api, observed - window, observed)
            others = max(0, limit - (row.remaining + taken_since) - ours)
            freed = await self._count(conn, api, observed - window, now - window)
            spread = int(others * (now - observed).total_seconds() / seconds)
            estimate = row.remaining + freed + spread
            if wait_until is not None:
                # Qualys said when to call again: at least one call is free from then on
                estimate = max(estimate, row.remaining + 1)
        if estimate > floor:
            return 0.0
        need = floor + 1 - estimate
        candidates = [observed + window]
        upcoming = [
            _aware(at)
            for (at,) in await conn.execute(
                select(t.qualys_calls.c.at)
                .where((t.qualys_calls.c.api == api) & (t.qualys_calls.c.at > now - window))
                .order_by(t.qualys_calls.c.at)
                .limit(need)
            )
        ]
        if len(upcoming) >= need and upcoming[-1] is not None:
            candidates.append(upcoming[-1] + window)
        if others:
            spread_now = int(others * (now - observed).total_seconds() / seconds)
            candidates.append(observed + window * min(1.0, (spread_now + need) / others))
        return max(0.01, (min(candidates) - now).total_seconds())

    async def _count(
        self, conn: AsyncConnection, api: str, after: datetime, until: datetime
    ) -> int:
        calls = t.qualys_calls
        return int(
            (
                await conn.execute(
                    select(func.count()).where(
                        (calls.c.api == api) & (calls.c.at > after) & (calls.c.at <= until)
                    )
                )
            ).scalar()
            or 0
        )

    async def _upsert(self, api: str, values: dict[str, Any], *, at: datetime) -> None:
        b = t.qualys_budget
        for _ in range(2):
            try:
                async with self.store.begin() as conn:
                    row = await self._row(conn, api, lock=True)
                    if row is None:
                        await conn.execute(
                            insert(b).values(api=api, **{"observed_at": at, **values})
                        )
                        return
                    changes = dict(values)
                    if "observed_at" in changes and (_aware(row.observed_at) or at) > at:
                        return  # the answer to an older call: a newer observation is there
                    current = _aware(row.wait_until)
                    if changes.get("wait_until") is None and current is not None and current > at:
                        changes["wait_until"] = current  # a 409 said to wait longer
                    if changes:
                        await conn.execute(update(b).where(b.c.api == api).values(**changes))
                    return
            except IntegrityError:
                continue  # another instance inserted the row first: update it
