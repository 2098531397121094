"""Forgetting what the store no longer needs (`store.retention_days`).

Deleted once older than the retention, in short transactions so that the consumer's
commits go between them:

- audit records delivered to every audit sink, unless their scan is still under way
  (its batch still writes its state into them); with them, the exposure windows they
  closed;
- scan batches that ended (finished, error, skipped; launched, when the backend does not
  follow its scans: dry-run, or `qualys.follow: false`), with their targets;
- the ids of messages seen (a message redelivered after that is handled again);
- quarantined messages that were retried.

Kept whatever their age: records a sink has not delivered, open exposure windows (they
are the exposure in effect), targets not yet in a batch, quarantined messages nobody
retried, and the newest audit record. SQLite gives a new row the highest id in the table
plus one: with every record gone, ids would start again at 1, below the sinks' cursors,
and the records after that would never be delivered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, Table, delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from osel.config import Settings
from osel.scan_backend import ERROR, FINISHED, LAUNCHED, QUEUED, RUNNING, SKIPPED
from osel.store import tables as t
from osel.store.store import Store, aware

# PostgreSQL advisory lock key (see store.INVENTORY_LOCK): one instance prunes at a time
PRUNE_LOCK = 0x05E1_0003
ENDED = (FINISHED, ERROR, SKIPPED)  # batch states nothing changes any more
# a change record's scan states its batch still updates (launched and running only when
# the backend follows its scans)
UNSETTLED = (QUEUED, LAUNCHED, RUNNING)


@dataclass(slots=True)
class Pruned:
    """Rows deleted (or, counted, that would be), by table; `busy` when another
    instance was pruning (PostgreSQL)."""

    rows: dict[str, int] = field(default_factory=dict)
    busy: bool = False

    def add(self, table: str, count: int) -> None:
        if count:
            self.rows[table] = self.rows.get(table, 0) + count

    @property
    def total(self) -> int:
        return sum(self.rows.values())

    def __str__(self) -> str:
        return ", ".join(f"{n} from {table}" for table, n in sorted(self.rows.items()))


async def delivered_up_to(store: Store, sinks: Sequence[str], before: datetime) -> int | None:
    """The newest audit record id every sink has delivered, or None when there is no sink.

    Counted: the sinks named (a configured sink with no cursor yet has delivered
    nothing), and any other cursor that moved since `before` (a sink another instance
    delivers to). A cursor no instance has moved since `before` and that is not
    configured here is a sink that was removed, and holds nothing back.
    """
    c = t.sink_cursors
    positions = dict.fromkeys(sinks, 0)
    async with store.engine.connect() as conn:
        for sink, position, updated_at in await conn.execute(
            select(c.c.sink, c.c.position, c.c.updated_at)
        ):
            if sink in positions or aware(updated_at) >= before:
                positions[sink] = int(position)
    return min(positions.values(), default=None)


@dataclass(frozen=True, slots=True)
class Old:
    """What is past the retention: the queries that find it."""

    records: Select[Any]  # (id, record_uuid) of audit records
    batches: Select[Any]  # (id,) of scan batches
    messages: ColumnElement[bool]  # seen_messages rows
    quarantined: ColumnElement[bool]  # quarantine rows


async def old(
    store: Store,
    *,
    before: datetime,
    batches_before: datetime,
    sinks: Sequence[str],
    followed: bool = True,
) -> Old:
    """What is older than `before` (ended scan batches: `batches_before`, which the
    scan cool-down may set earlier) and no longer needed. `followed`: whether the scan
    backend follows launched scans to their end."""
    ar, sb, sm, q = t.audit_records, t.scan_batches, t.seen_messages, t.quarantine
    records = (
        select(ar.c.id, ar.c.record_uuid)
        .where(ar.c.created_at < before)
        .where(ar.c.id < select(func.max(ar.c.id)).scalar_subquery())
        .where(
            (ar.c.record_type != "change")
            | ar.c.scan_state.not_in(UNSETTLED if followed else (QUEUED,))
        )
    )
    upto = await delivered_up_to(store, sinks, before)
    if upto is not None:
        records = records.where(ar.c.id <= upto)
    ended = ENDED if followed else (*ENDED, LAUNCHED)
    return Old(
        records=records,
        batches=select(sb.c.id).where(sb.c.state.in_(ended) & (sb.c.updated_at < batches_before)),
        messages=sm.c.seen_at < before,
        quarantined=q.c.retried_at.is_not(None) & (q.c.retried_at < before),
    )


async def prune(store: Store, found: Old, *, chunk: int = 1000, most: int = 50_000) -> Pruned:
    """Delete what `found` finds, at most `most` rows of each kind per call, `chunk` rows
    a transaction."""
    pruned = Pruned()
    ar, w, sb, tg = t.audit_records, t.exposure_windows, t.scan_batches, t.scan_targets
    sm, q = t.seen_messages, t.quarantine

    async def drop_records(conn: AsyncConnection) -> int:
        rows = list(await conn.execute(found.records.limit(chunk)))
        if rows:
            await conn.execute(delete(ar).where(ar.c.id.in_([r[0] for r in rows])))
            gone = await conn.execute(delete(w).where(w.c.closed_record.in_([r[1] for r in rows])))
            pruned.add("exposure_windows", gone.rowcount or 0)
        pruned.add("audit_records", len(rows))
        return len(rows)

    async def drop_batches(conn: AsyncConnection) -> int:
        ids = list((await conn.execute(found.batches.limit(chunk))).scalars())
        if ids:
            gone = await conn.execute(delete(tg).where(tg.c.batch_id.in_(ids)))
            pruned.add("scan_targets", gone.rowcount or 0)
            await conn.execute(delete(sb).where(sb.c.id.in_(ids)))
        pruned.add("scan_batches", len(ids))
        return len(ids)

    steps = (
        drop_records,
        drop_batches,
        _drop_where(pruned, sm, sm.c.message_id, found.messages, chunk),
        _drop_where(pruned, q, q.c.id, found.quarantined, chunk),
    )
    for step in steps:
        if not await _in_chunks(store, step, chunk, most):
            pruned.busy = True
            break
    return pruned


async def count(store: Store, found: Old) -> Pruned:
    """How many rows `prune` would delete now, all rounds together."""
    w, tg = t.exposure_windows, t.scan_targets
    records = found.records.subquery()
    batches = found.batches.subquery()
    queries = {
        "audit_records": select(func.count()).select_from(records),
        "exposure_windows": select(func.count())
        .select_from(w)
        .where(w.c.closed_record.in_(select(records.c.record_uuid))),
        "scan_batches": select(func.count()).select_from(batches),
        "scan_targets": select(func.count())
        .select_from(tg)
        .where(tg.c.batch_id.in_(select(batches.c.id))),
        "seen_messages": select(func.count()).select_from(t.seen_messages).where(found.messages),
        "quarantine": select(func.count()).select_from(t.quarantine).where(found.quarantined),
    }
    counted = Pruned()
    async with store.engine.connect() as conn:
        for table, query in queries.items():
            counted.add(table, int((await conn.execute(query)).scalar_one()))
    return counted


Step = Callable[[AsyncConnection], Awaitable[int]]


async def _in_chunks(store: Store, step: Step, chunk: int, most: int) -> bool:
    """Run `step` (one chunk: it deletes up to `chunk` rows of its kind and says how
    many), each in a transaction of its own, until it finds fewer or `most` went; False
    when another instance is pruning."""
    done = 0
    while done < most:
        async with store.begin() as conn:
            if not await _our_turn(store, conn):
                return False
            deleted = await step(conn)
        done += deleted
        if deleted < chunk:
            break
    return True


def _drop_where(
    pruned: Pruned, table: Table, key: ColumnElement[object], old: ColumnElement[bool], chunk: int
) -> Step:
    """A step that deletes `chunk` rows of `table` that are `old`."""

    async def step(conn: AsyncConnection) -> int:
        keys = select(key).where(old).limit(chunk).scalar_subquery()
        gone = (await conn.execute(delete(table).where(key.in_(keys)))).rowcount or 0
        pruned.add(table.name, gone)
        return int(gone)

    return step


async def old_for(store: Store, settings: Settings, days: float) -> Old:
    """`old` for a configuration: older than `days`, its sinks, its backend, and the scan
    cool-down (a batch stays as long as it can hold an address back)."""
    now = datetime.now(UTC)
    before = now - timedelta(days=days)
    cooldown = now - timedelta(minutes=settings.scan.cooldown_minutes)
    return await old(
        store,
        before=before,
        batches_before=min(before, cooldown),
        sinks=[sink.sink_id for sink in settings.audit.sinks],
        followed=settings.scan.backend == "qualys" and settings.qualys.follow,
    )


async def prune_for(store: Store, settings: Settings, days: float, **limits: int) -> Pruned:
    """`prune` what is older than `days` for a configuration (see `old_for`)."""
    return await prune(store, await old_for(store, settings, days), **limits)


async def _our_turn(store: Store, conn: AsyncConnection) -> bool:
    """On PostgreSQL, whether this transaction may prune: one instance at a time."""
    if store.dialect != "postgresql":
        return True
    taken = await conn.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": PRUNE_LOCK})
    return bool(taken.scalar())
