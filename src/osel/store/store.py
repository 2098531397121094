"""The store: SQLite (embedded, the default) or PostgreSQL (several instances).

Everything a notification causes (its audit records, scan targets, window
changes, inventory updates and its message id) is written in ONE transaction
by `commit`; only after it returns may the AMQP message be acknowledged.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    Table,
    bindparam,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from osel.config import mask_url
from osel.decide import Decision, WindowOp
from osel.inventory import Dirty, Inventory
from osel.model import AddressGroup, FloatingIP, Port, Rule, SecurityGroup
from osel.store import tables as t
from osel.store.writers import WriterTurns

MIGRATIONS = str(Path(__file__).parent / "migrations")
# The newest migration's revision (tests check it against Alembic's head). A store already
# at it is not migrated, and Alembic, which holds about 12 MiB once imported, stays out of
# the daemon's memory.
SCHEMA_REVISION = "0005"
# Prepared statements each SQLite connection keeps (Python's default is 128). Every
# length of an expanding IN list is a statement of its own, so over a long run the
# cache fills with large, rarely reused ones: measured over 500,000 messages of the
# benchmark mix, 16 instead of 128 took about 9 MiB off the peak and halved the growth,
# at the same rate.
SQLITE_STATEMENT_CACHE = 16
# WAL pages after which a commit copies the write-ahead log back into the database file
# (SQLite's default is 1,000, about 4 MB). The copy runs inside whichever transaction
# crosses the mark, holding the single write lock, and a backlog writes about a gigabyte
# per 1,000,000 messages of the benchmark mix; at 10,000 each page that is written
# again before the next checkpoint is copied once. Measured on the mix, two sets of three
# interleaved pairs of 100,000 messages against 1,000: 1.11x and 1.10x the rate (every
# pair faster), 0.95x and 0.93x the CPU time; 4,000 and 30,000 pages did about as well.
# The log then holds up to about 40 MB; SQLITE_WAL_LIMIT cuts it back after a
# checkpoint that found it larger.
SQLITE_WAL_CHECKPOINT_PAGES = 10_000
SQLITE_WAL_LIMIT = 64 * 1024 * 1024
log = logging.getLogger(__name__)

# PostgreSQL advisory lock keys (any two constants that other applications are unlikely to
# pick): one instance at a time changes the inventory; audit records get their ids in
# commit order.
INVENTORY_LOCK = 0x05E1_0001
RECORDS_LOCK = 0x05E1_0002
PRUNED_KEY = "inventory_log_pruned"
# libpq connection parameters osel sets on every PostgreSQL connection unless the store URL
# gives them. Without them a PostgreSQL host that vanishes (its packets dropped, not
# refused) leaves a statement waiting until the kernel gives up, about 15 minutes, and a
# new connection to it waiting 130 s: with them, a dead connection is found within about
# 40 s (idle: 20 s, then 4 probes 5 s apart; with unacknowledged data: 40 s), and a
# connection attempt gives up after 10 s and is retried with backoff.
PG_CONNECT_DEFAULTS: dict[str, int] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 20,
    "keepalives_interval": 5,
    "keepalives_count": 4,
    "tcp_user_timeout": 40_000,
}
_KINDS: dict[str, Table] = {
    "group": t.inv_groups,
    "rule": t.inv_rules,
    "port": t.inv_ports,
    "fip": t.inv_fips,
    "address_group": t.inv_address_groups,
}


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database is out of reach (refused, dropped, timed out,
    locked, no pooled connection free), rather than that something asked of it was
    wrong."""
    if isinstance(exc, OSError | TimeoutError | PoolTimeout | OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def utcnow() -> datetime:
    return datetime.now(UTC)


def driver_urls(url: str) -> tuple[URL, URL]:
    """The async URL osel runs on and the sync URL Alembic migrates with."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite"), parsed.set(drivername="sqlite")
    if backend == "postgresql":
        psycopg = parsed.set(drivername="postgresql+psycopg")
        return psycopg, psycopg
    raise ValueError(f"store.url: unsupported database {backend!r}; use sqlite:// or postgresql://")


@dataclass(slots=True)
class Batch:
    """What one commit writes."""

    message_ids: list[tuple[str, str]] = field(default_factory=list)  # (id, event_type)
    decisions: list[Decision] = field(default_factory=list)
    dirty: Dirty | None = None
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    deferred: list[dict[str, Any]] = field(default_factory=list)
    undeferred: list[int] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # free-standing (scan) records

    def __bool__(self) -> bool:
        return bool(
            self.message_ids
            or self.decisions
            or self.dirty
            or self.quarantined
            or self.deferred
            or self.undeferred
            or self.records
        )


def _record_row(body: dict[str, Any], now: datetime | str) -> dict[str, Any]:
    return {
        "record_uuid": body["record_id"],
        "record_type": body["record_type"],
        "change_type": body.get("change_type", ""),
        "message_id": body.get("message_id", ""),
        "address": body.get("affected_ip_address", ""),
        "project_id": body.get("project_id", ""),
        "internet_exposed": bool(body.get("internet_exposed")),
        "scan_state": body.get("scan_state", ""),
        "scan_batch_id": body.get("scan_batch_id") or None,
        "created_at": now,
        "body": record_json(body),
    }


def record_json(body: dict[str, Any]) -> str:
    """An audit record as stored and delivered: compact UTF-8 JSON, keys sorted.

    orjson, not the json module: a port's change makes records of several kB, which
    orjson encodes about ten times faster; relevant changes handled in one process
    took about 5% less time with it."""
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()


LEARNED_COLUMNS = (
    t.audit_records.c.scan_batch_id,
    t.audit_records.c.scan_state,
    t.audit_records.c.qualys_scan_id,
    t.audit_records.c.scan_result,
)


def learned(body: dict[str, Any], row: Any) -> dict[str, Any]:
    """A change record as committed plus what it learned since, from the LEARNED_COLUMNS
    of its row: its scan batch, scan reference, scan state and what the scan found for
    its address (`scan_result`). The delivered copy keeps its values at commit time; the
    scan records carry every change."""
    if body.get("record_type") != "change":
        return body
    if row.scan_batch_id:
        body["scan_batch_id"] = row.scan_batch_id
    if row.qualys_scan_id:
        body["qualys_scan_id"] = row.qualys_scan_id
    if row.scan_state:
        body["scan_state"] = row.scan_state
    if row.scan_result:
        result = dict(json.loads(row.scan_result))
        error = result.pop("qualys_scan_error", "")
        if error:
            body["qualys_scan_error"] = error
        if result:
            body["scan_result"] = result
    return body


@dataclass(frozen=True, slots=True)
class Claim:
    """An audit sink's delivery lease, taken: where its cursor is, who held it before."""

    position: int
    previous: str | None


class Store:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        async_url, self.sync_url = driver_urls(url)
        self.dialect = async_url.get_backend_name()
        if self.dialect == "sqlite" and async_url.database not in (None, "", ":memory:"):
            Path(async_url.database).parent.mkdir(parents=True, exist_ok=True)
        # SQLite serialises writers anyway, and each of its connections is a thread with
        # a page cache of its own: a few are enough, and keep the memory down
        sizing: dict[str, Any] = {}
        if self.dialect == "sqlite":
            sizing = {
                "pool_size": 3,
                "max_overflow": 2,
                "connect_args": {"cached_statements": SQLITE_STATEMENT_CACHE},
            }
        else:
            # a restarted or failed-over PostgreSQL has ended the pooled connections:
            # each is tried (one round trip) when taken from the pool, and replaced if
            # dead, rather than failing the batch or the round that took it
            sizing = {
                "pool_pre_ping": True,
                "connect_args": {
                    k: v for k, v in PG_CONNECT_DEFAULTS.items() if k not in async_url.query
                },
            }
        self.engine: AsyncEngine = create_async_engine(async_url, echo=echo, **sizing)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            event.listen(self.engine.sync_engine, "before_cursor_execute", _records_in_order)
        # the newest inventory_log entry this process has taken in (see refresh_inventory)
        self.inventory_rev = 0
        # SQLite has one writer at a time; this process's writers take turns here (see begin)
        self._writer = WriterTurns() if self.dialect == "sqlite" else None

    @asynccontextmanager
    async def begin(self, *, urgent: bool = False) -> AsyncIterator[AsyncConnection]:
        """A write transaction (commits at the end, rolls back on an exception).

        On SQLite, the process's writers (the consumer, the outbox, the scheduler)
        take turns at the database's single write lock (see `writers`), an `urgent`
        one (the consumer's commit) before those already waiting. Left to SQLite, a
        writer that finds the lock taken polls for it, sleeping up to 100 ms between
        tries: measured, those sleeps were most of a backlog's drain time. Not
        reentrant: a transaction must not open another.
        """
        turn = self._writer.turn(urgent=urgent) if self._writer else nullcontext()
        async with turn, self.engine.begin() as conn:
            yield conn

    # --- lifecycle ---------------------------------------------------------

    def migrate_sync(self, connection: Connection | None = None) -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", MIGRATIONS)
        cfg.set_main_option("sqlalchemy.url", self.sync_url.render_as_string(hide_password=False))
        if connection is not None:
            cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")

    async def migrate(self) -> None:
        """Bring the schema to this version of osel's (nothing to do if it is there).
        Raises `SchemaTooNew` for a store a newer osel has migrated."""
        async with self.engine.connect() as conn:
            revision = await conn.run_sync(schema_revision)
        if revision == SCHEMA_REVISION:
            return
        if revision is not None and revision not in known_revisions():
            raise SchemaTooNew(self.url, revision)
        async with _migration_lock(self.sync_url), self.begin() as conn:
            if await conn.run_sync(schema_revision) != SCHEMA_REVISION:  # not done meanwhile
                await conn.run_sync(lambda c: self.migrate_sync(c))

    async def close(self) -> None:
        await self.engine.dispose()

    # --- the pipeline's commit -------------------------------------------

    async def seen(self, message_ids: Sequence[str]) -> set[str]:
        if not message_ids:
            return set()
        found: set[str] = set()
        async with self.engine.connect() as conn:
            for chunk in _chunks(list(message_ids), 500):
                rows = await conn.execute(
                    select(t.seen_messages.c.message_id).where(
                        t.seen_messages.c.message_id.in_(chunk)
                    )
                )
                found.update(r[0] for r in rows)
        return found

    async def commit(self, batch: Batch) -> None:
        if not batch:
            return
        now = utcnow()
        async with self.begin(urgent=True) as conn:  # its messages wait unacknowledged
            stamp = _driver_stamp(conn, now)
            await _insert_many(
                conn,
                t.seen_messages,
                [
                    {"message_id": m, "event_type": e, "seen_at": stamp}
                    for m, e in batch.message_ids
                ],
            )
            await self._windows(conn, batch.decisions)
            records = [r for d in batch.decisions for r in d.records] + batch.records
            await _insert_many(conn, t.audit_records, [_record_row(r, stamp) for r in records])
            await _insert_many(
                conn,
                t.scan_targets,
                [
                    {
                        "record_uuid": tg.record_uuid,
                        "message_id": tg.message_id,
                        "address": tg.address,
                        "priority": tg.priority,
                        "internet_exposed": tg.internet_exposed,
                        "created_at": stamp,
                    }
                    for d in batch.decisions
                    for tg in d.targets
                ],
            )
            rev = await self._inventory(conn, batch.dirty) if batch.dirty else None
            if batch.quarantined:
                await conn.execute(
                    insert(t.quarantine), [{**q, "received_at": now} for q in batch.quarantined]
                )
            if batch.deferred:
                await conn.execute(
                    insert(t.deferred), [{**d, "received_at": now} for d in batch.deferred]
                )
            if batch.undeferred:
                await conn.execute(delete(t.deferred).where(t.deferred.c.id.in_(batch.undeferred)))
        if rev is not None:
            # the caller took in every earlier change first (Daemon.process holds the
            # inventory lock across refresh, handling and commit), so this is the newest
            self.inventory_rev = max(self.inventory_rev, rev)

    async def _windows(self, conn: AsyncConnection, decisions: list[Decision]) -> None:
        """Open the windows of permits that start, close those of permits that end.

        The decisions' window operations apply in order, with one read of the open
        windows they may name (not every open window of their addresses: a rule change
        on a group of many ports and rules would read them all) and one bulk insert
        and update for the whole commit. Opening an already open window changes
        nothing. A record whose `closed` list names a permit learns when its window
        opened.
        """
        ops = [(d, op, _window_key(op)) for d in decisions for op in d.windows]
        if not ops:
            return
        w = t.exposure_windows
        # open in the store: [(id, opened_at)]
        stored = await _open_windows(conn, {key for _, _, key in ops})
        fresh: dict[WindowKey, dict[str, Any]] = {}  # opened by this commit, still open
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        bodies: dict[str, dict[str, Any]] = {}
        for decision, op, key in ops:
            if op.action == "open":
                if key not in stored and key not in fresh:
                    fresh[key] = _window_row(op, key[1])
                    inserts.append(fresh[key])
                continue
            opened_at: str | None = None
            if key in fresh:
                opened = fresh.pop(key)
                opened.update(closed_at=op.at, closed_record=op.record_uuid)
                opened_at = opened["opened_at"]
            elif key in stored:
                # two instances that opened the same permit at one moment left two rows
                windows = stored.pop(key)
                opened_at = min(since for _, since in windows)
                updates += [
                    {"b_id": wid, "b_at": op.at, "b_record": op.record_uuid} for wid, _ in windows
                ]
            if op.record_uuid not in bodies:
                bodies.update((r["record_id"], r) for r in decision.records)
            _learn_window(bodies[op.record_uuid], key, opened_at, op.at)
        if updates:
            await conn.execute(
                update(w)
                .where(w.c.id == bindparam("b_id"))
                .values(closed_at=bindparam("b_at"), closed_record=bindparam("b_record")),
                updates,
            )
        await _insert_many(conn, w, inserts)

    async def _inventory(self, conn: AsyncConnection, dirty: Dirty) -> int | None:
        """Write the changed inventory rows and log them; the newest log id, if any."""
        kinds: list[tuple[Table, dict[str, Any]]] = [
            (t.inv_rules, dirty.rules),
            (t.inv_ports, dirty.ports),
            (t.inv_fips, dirty.fips),
            (t.inv_address_groups, dirty.address_groups),
        ]
        for table, items in kinds:
            if not items:
                continue
            await conn.execute(delete(table).where(table.c.id.in_(list(items))))
            rows = [{"id": k, "data": json.dumps(v.to_json())} for k, v in items.items() if v]
            if rows:
                await conn.execute(insert(table), rows)
        groups = set(dirty.groups) | dirty.loaded_groups
        if groups:
            g = t.inv_groups
            existing = {
                r.id: r for r in await conn.execute(select(g).where(g.c.id.in_(list(groups))))
            }
            await conn.execute(delete(g).where(g.c.id.in_(list(groups))))
            group_rows: list[dict[str, Any]] = []
            for sg_id in groups:
                if sg_id in dirty.groups and dirty.groups[sg_id] is None:
                    continue
                record = dirty.groups.get(sg_id)
                data = (
                    json.dumps(record.to_json())
                    if record is not None
                    else existing[sg_id].data
                    if sg_id in existing
                    else json.dumps(SecurityGroup(sg_id).to_json())
                )
                loaded = sg_id in dirty.loaded_groups or bool(
                    sg_id in existing and existing[sg_id].loaded
                )
                group_rows.append({"id": sg_id, "data": data, "loaded": loaded})
            if group_rows:
                await conn.execute(insert(g), group_rows)
        changed = [
            {"kind": kind, "resource_id": key}
            for kind, items in (
                ("rule", dirty.rules),
                ("port", dirty.ports),
                ("fip", dirty.fips),
                ("address_group", dirty.address_groups),
                ("group", dict.fromkeys(groups)),
            )
            for key in items
        ]
        if not changed:
            return None
        await conn.execute(insert(t.inventory_log), changed)
        return int((await conn.execute(select(func.max(t.inventory_log.c.id)))).scalar() or 0)

    async def load_inventory(self, inventory: Inventory) -> int:
        """Fill `inventory` from the store; return how many resources it holds."""
        async with self.engine.connect() as conn:
            # read the log position first: a change committed meanwhile is taken in again
            # by the next refresh_inventory, which is harmless
            rev = (await conn.execute(select(func.max(t.inventory_log.c.id)))).scalar()

            def rows(table: Table) -> Any:
                return conn.execute(select(table))

            groups = list(await rows(t.inv_groups))
            rules = list(await rows(t.inv_rules))
            ports = list(await rows(t.inv_ports))
            fips = list(await rows(t.inv_fips))
            ags = list(await rows(t.inv_address_groups))
        inventory.load(
            groups=[SecurityGroup.from_json(json.loads(r.data)) for r in groups],
            rules=[Rule.from_json(json.loads(r.data)) for r in rules],
            ports=[Port.from_json(json.loads(r.data)) for r in ports],
            fips=[FloatingIP.from_json(json.loads(r.data)) for r in fips],
            address_groups=[AddressGroup.from_json(json.loads(r.data)) for r in ags],
            loaded_groups=[r.id for r in groups if r.loaded],
        )
        self.inventory_rev = int(rev or 0)
        return len(groups) + len(rules) + len(ports) + len(fips) + len(ags)

    async def replace_inventory(self, inventory: Inventory) -> None:
        """Persist a whole inventory (after a full sync) in one transaction."""
        async with self.begin() as conn:
            for table in (t.inv_groups, t.inv_rules, t.inv_ports, t.inv_fips, t.inv_address_groups):
                await conn.execute(delete(table))
            inserts: list[tuple[Table, list[dict[str, Any]]]] = [
                (
                    t.inv_groups,
                    [
                        {
                            "id": g.id,
                            "data": json.dumps(g.to_json()),
                            "loaded": g.id in inventory.loaded_groups,
                        }
                        for g in inventory.groups.values()
                    ],
                ),
                (t.inv_rules, _json_rows(inventory.rules.values())),
                (t.inv_ports, _json_rows(inventory.ports.values())),
                (t.inv_fips, _json_rows(inventory.fips.values())),
                (t.inv_address_groups, _json_rows(inventory.address_groups.values())),
            ]
            for table, rows in inserts:
                for chunk in _chunks(rows, 1000):
                    await conn.execute(insert(table), chunk)
            await conn.execute(insert(t.inventory_log).values(kind="*", resource_id=""))
            rev = (await conn.execute(select(func.max(t.inventory_log.c.id)))).scalar()
        self.inventory_rev = int(rev or 0)
        inventory.take_dirty()

    # --- several instances: the inventory ----------------------------------

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the inventory lock: one instance at a time reads, changes and commits the
        inventory (PostgreSQL session advisory lock; SQLite serialises writers itself).

        The lock lives on one connection and dies with it: an instance that is killed
        or cut off releases it (the connection's TCP keepalives are set so that a
        vanished machine is noticed within about a minute).
        """
        if self.dialect != "postgresql":
            yield
            return
        async with self.engine.connect() as conn:
            await conn.exec_driver_sql(
                "SET tcp_keepalives_idle = 20; SET tcp_keepalives_interval = 5; "
                "SET tcp_keepalives_count = 4; SET tcp_user_timeout = 40000"
            )
            await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": INVENTORY_LOCK})
            await conn.commit()
            try:
                yield
            finally:
                try:
                    await conn.exec_driver_sql("SELECT pg_advisory_unlock_all()")
                    await conn.commit()
                except BaseException:
                    # never hand a connection that may still hold the lock back to the pool
                    await conn.invalidate()
                    raise

    async def refresh_inventory(self, inventory: Inventory) -> int:
        """Take in the inventory changes committed by other instances since this one last
        looked (the inventory_log); return how many entries it read."""
        lg = t.inventory_log
        async with self.engine.connect() as conn:
            entries = list(
                await conn.execute(
                    select(lg.c.id, lg.c.kind, lg.c.resource_id)
                    .where(lg.c.id > self.inventory_rev)
                    .order_by(lg.c.id)
                )
            )
            if not entries:
                return 0
            full = any(e.kind == "*" or e.kind not in _KINDS for e in entries)
            if not full and entries[0].id > self.inventory_rev + 1:
                pruned = (
                    await conn.execute(select(t.meta.c.value).where(t.meta.c.key == PRUNED_KEY))
                ).scalar_one_or_none()
                full = int(pruned or 0) > self.inventory_rev
            changes = Dirty() if full else await _read_changes(conn, entries)
        if full:
            log.info("inventory changed as a whole in the store: reloading it")
            inventory.clear()
            await self.load_inventory(inventory)
        else:
            inventory.apply(changes)
            self.inventory_rev = int(entries[-1].id)
        return len(entries)

    async def prune_inventory_log(self, keep: int = 100_000) -> int:
        """Forget all but the newest `keep` log entries; an instance further behind
        reloads the whole inventory. Return how many entries went."""
        lg = t.inventory_log
        async with self.begin() as conn:
            top = int((await conn.execute(select(func.max(lg.c.id)))).scalar() or 0)
            cut = top - keep
            if cut <= 0:
                return 0
            gone = (await conn.execute(delete(lg).where(lg.c.id <= cut))).rowcount or 0
            await conn.execute(delete(t.meta).where(t.meta.c.key == PRUNED_KEY))
            await conn.execute(insert(t.meta).values(key=PRUNED_KEY, value=str(cut)))
        return int(gone)

    # --- several instances: audit sink leases ------------------------------

    async def claim_sink(self, sink: str, owner: str, lease_seconds: float) -> Claim | None:
        """Take or renew the lease on delivering to `sink`: its cursor position and the
        previous holder, or None while another instance's lease runs."""
        c = t.sink_cursors
        now = utcnow()
        until = now + timedelta(seconds=lease_seconds)
        async with self.begin() as conn:
            query = select(c.c.owner, c.c.lease_until, c.c.position).where(c.c.sink == sink)
            if self.dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            row = (await conn.execute(query)).first()
            if row is None:
                if self.dialect == "postgresql" and await _exists(conn, sink):
                    return None  # another instance is claiming it right now
                try:
                    async with conn.begin_nested():
                        await conn.execute(
                            insert(c).values(
                                sink=sink,
                                position=0,
                                updated_at=now,
                                owner=owner,
                                lease_until=until,
                            )
                        )
                except IntegrityError:
                    return None  # another instance created it first
                return Claim(0, None)
            if row.owner not in (None, owner) and aware(row.lease_until) > now:
                return None
            await conn.execute(
                update(c).where(c.c.sink == sink).values(owner=owner, lease_until=until)
            )
            return Claim(int(row.position), row.owner)

    async def advance_cursor(
        self, sink: str, owner: str, position: int, lease_seconds: float
    ) -> bool:
        """Move the cursor (and renew the lease) if `owner` still holds the lease."""
        c = t.sink_cursors
        now = utcnow()
        async with self.begin() as conn:
            done = await conn.execute(
                update(c)
                .where((c.c.sink == sink) & (c.c.owner == owner))
                .values(
                    position=func.max(c.c.position, position)
                    if self.dialect == "sqlite"
                    else func.greatest(c.c.position, position),
                    updated_at=now,
                    lease_until=now + timedelta(seconds=lease_seconds),
                )
            )
        return bool(done.rowcount)

    async def release_sink(self, sink: str, owner: str) -> None:
        c = t.sink_cursors
        async with self.begin() as conn:
            await conn.execute(
                update(c)
                .where((c.c.sink == sink) & (c.c.owner == owner))
                .values(owner=None, lease_until=None)
            )

    async def sink_owner(self, sink: str) -> tuple[str | None, datetime | None]:
        c = t.sink_cursors
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(c.c.owner, c.c.lease_until).where(c.c.sink == sink))
            ).first()
        if row is None:
            return None, None
        return row.owner, aware(row.lease_until) if row.lease_until else None

    # --- meta --------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        async with self.engine.connect() as conn:
            return (
                await conn.execute(select(t.meta.c.value).where(t.meta.c.key == key))
            ).scalar_one_or_none()

    async def set_meta(self, key: str, value: str) -> None:
        async with self.begin() as conn:
            await conn.execute(delete(t.meta).where(t.meta.c.key == key))
            await conn.execute(insert(t.meta).values(key=key, value=value))

    # --- reading -----------------------------------------------------------

    async def records_after(self, position: int, limit: int) -> list[tuple[int, str]]:
        r = t.audit_records
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(r.c.id, r.c.body).where(r.c.id > position).order_by(r.c.id).limit(limit)
            )
            return [(record_id, body) for record_id, body in rows]

    async def tail(self, n: int) -> list[dict[str, Any]]:
        """The newest records, change records with what they learned since (`learned`)."""
        r = t.audit_records
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(r.c.body, *LEARNED_COLUMNS).order_by(r.c.id.desc()).limit(n)
            )
            bodies = [learned(json.loads(row.body), row) for row in rows]
        return list(reversed(bodies))

    async def last_record_id(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.max(t.audit_records.c.id)))).scalar() or 0)

    async def cursor(self, sink: str) -> int:
        c = t.sink_cursors
        async with self.engine.connect() as conn:
            value = (
                await conn.execute(select(c.c.position).where(c.c.sink == sink))
            ).scalar_one_or_none()
        return int(value or 0)

    async def set_cursor(self, sink: str, position: int) -> None:
        c = t.sink_cursors
        async with self.begin() as conn:
            done = await conn.execute(
                update(c).where(c.c.sink == sink).values(position=position, updated_at=utcnow())
            )
            if done.rowcount == 0:
                await conn.execute(
                    insert(c).values(sink=sink, position=position, updated_at=utcnow())
                )

    async def deferred_head(self, limit: int) -> list[Any]:
        d = t.deferred
        async with self.engine.connect() as conn:
            return list(await conn.execute(select(d).order_by(d.c.id).limit(limit)))

    async def deferred_count(self) -> int:
        async with self.engine.connect() as conn:
            return int(
                (await conn.execute(select(func.count()).select_from(t.deferred))).scalar() or 0
            )

    async def quarantine_list(self, limit: int = 100) -> list[Any]:
        q = t.quarantine
        async with self.engine.connect() as conn:
            return list(await conn.execute(select(q).order_by(q.c.id.desc()).limit(limit)))

    async def quarantined(self, row_id: int) -> Any:
        q = t.quarantine
        async with self.engine.connect() as conn:
            return (await conn.execute(select(q).where(q.c.id == row_id))).first()

    async def mark_retried(self, row_id: int) -> None:
        q = t.quarantine
        async with self.begin() as conn:
            await conn.execute(update(q).where(q.c.id == row_id).values(retried_at=utcnow()))

    async def open_windows(self, address: str | None = None) -> list[Any]:
        w = t.exposure_windows
        query = select(w).where(w.c.closed_at.is_(None))
        if address:
            query = query.where(w.c.address == address)
        async with self.engine.connect() as conn:
            return list(await conn.execute(query.order_by(w.c.id)))


WindowKey = tuple[str, str, int, int, str]  # address, protocol, port_min, port_max, remote

# the most lowest ports one read of the open windows names (SQLite and asyncpg take
# at most 32,767 parameters in a statement; 500 addresses go with them)
_WINDOW_PORTS_READ = 2000


def _window_key(op: WindowOp) -> WindowKey:
    p = op.permit
    return (op.address, p.protocol or "any", p.port_min, p.port_max, p.remote)


async def _open_windows(
    conn: AsyncConnection, wanted: set[WindowKey]
) -> dict[WindowKey, list[tuple[int, str]]]:
    """The open windows among `wanted`: [(id, opened_at)] by key.

    Read by address and lowest port, the rest compared here: a statement the driver
    runs as it is, however many windows are named. A commit naming more lowest ports
    than a statement takes parameters (a backlog of many different rules) reads every
    open window of its addresses instead."""
    w = t.exposure_windows
    stored: dict[WindowKey, list[tuple[int, str]]] = {}
    port_mins = sorted({key[2] for key in wanted})
    for chunk in _chunks(sorted({key[0] for key in wanted}), 500):
        query = select(
            w.c.id, w.c.address, w.c.protocol, w.c.port_min, w.c.port_max, w.c.remote,
            w.c.opened_at,
        ).where(w.c.address.in_(chunk) & w.c.closed_at.is_(None))  # fmt: skip
        if len(port_mins) <= _WINDOW_PORTS_READ:
            query = query.where(w.c.port_min.in_(port_mins))
        # unpacked, not read by attribute: a row's attributes cost ten times as much
        for wid, address, protocol, port_min, port_max, remote, since in await conn.execute(query):
            key = (address, protocol, port_min, port_max, remote)
            if key in wanted:
                stored.setdefault(key, []).append((wid, since))
    return stored


def _window_row(op: WindowOp, protocol: str) -> dict[str, Any]:
    p = op.permit
    return {
        "address": op.address,
        "protocol": protocol,
        "port_min": p.port_min,
        "port_max": p.port_max,
        "remote": p.remote,
        "internet_exposed": p.internet,
        "rule_id": p.rule_id,
        "security_group_id": p.security_group_id,
        "opened_at": op.at,
        "opened_record": op.record_uuid,
        "closed_at": None,
        "closed_record": None,
    }


def _learn_window(
    body: dict[str, Any], key: tuple[str, str, int, int, str], opened_at: str | None, at: str
) -> None:
    """A record that closed the window `key` learns when it opened and closed."""
    for closed in body["closed"]:
        if (
            closed["protocol"],
            closed["port_range_min"],
            closed["port_range_max"],
            closed["remote"],
        ) == key[1:]:
            closed["window_opened_at"] = opened_at
            closed["window_closed_at"] = at


async def _read_changes(conn: AsyncConnection, entries: list[Any]) -> Dirty:
    """The current rows of the inventory entries named in `entries` (None: deleted)."""
    changes = Dirty()
    wanted: dict[str, set[str]] = {}
    for e in entries:
        wanted.setdefault(e.kind, set()).add(e.resource_id)
    parse: dict[str, Any] = {
        "group": SecurityGroup.from_json,
        "rule": Rule.from_json,
        "port": Port.from_json,
        "fip": FloatingIP.from_json,
        "address_group": AddressGroup.from_json,
    }
    target: dict[str, dict[str, Any]] = {
        "group": changes.groups,
        "rule": changes.rules,
        "port": changes.ports,
        "fip": changes.fips,
        "address_group": changes.address_groups,
    }
    for kind, ids in wanted.items():
        table = _KINDS[kind]
        found: dict[str, Any] = {}
        for chunk in _chunks(sorted(ids), 500):
            for row in await conn.execute(select(table).where(table.c.id.in_(chunk))):
                found[row.id] = row
        for key in ids:
            current = found.get(key)
            target[kind][key] = parse[kind](json.loads(current.data)) if current else None
            if kind == "group" and current is not None and current.loaded:
                changes.loaded_groups.add(key)
    return changes


async def _exists(conn: AsyncConnection, sink: str) -> bool:
    c = t.sink_cursors
    return (await conn.execute(select(c.c.sink).where(c.c.sink == sink))).first() is not None


def aware(value: datetime | None) -> datetime:
    """SQLite hands back naive datetimes (stored in UTC)."""
    if value is None:
        return datetime.min.replace(tzinfo=UTC)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _records_in_order(
    conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
) -> None:
    """On PostgreSQL, take a transaction lock before inserting audit records, so that
    their ids are assigned in commit order: once a record is visible, every record with
    a lower id is too, and an audit sink's cursor never passes a record still being
    committed by another instance."""
    if statement.startswith("INSERT INTO audit_records"):
        cursor.execute(f"SELECT pg_advisory_xact_lock({RECORDS_LOCK})")


async def _insert_many(conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT rows (dicts with the same keys, in the same order) with one executemany
    of the driver, bypassing SQLAlchemy's per-row parameter processing, which was a
    third of a commit's CPU on a backlog. The values must be what the driver takes
    as they are: strings, numbers, booleans, None, and timestamps from
    `_driver_stamp`."""
    if not rows:
        return
    sql, order = _insert_sql(conn.dialect, table, tuple(rows[0]))
    if order is None:
        await conn.exec_driver_sql(sql, rows)
        return
    pick = itemgetter(*order)
    values = [pick(r) for r in rows] if len(order) > 1 else [(pick(r),) for r in rows]
    await conn.exec_driver_sql(sql, values)


@lru_cache(maxsize=64)
def _insert_sql(
    dialect: Any, table: Table, keys: tuple[str, ...]
) -> tuple[str, tuple[str, ...] | None]:
    """The driver's INSERT text for these columns, and the order of a positional
    driver's parameters (None: the driver takes the rows' dicts by name)."""
    compiled = insert(table).compile(dialect=dialect, column_keys=list(keys))
    if not compiled.positional:
        return str(compiled), None
    return str(compiled), tuple(compiled.positiontup or ())


def _driver_stamp(conn: AsyncConnection, when: datetime) -> datetime | str:
    """A timestamp as the driver takes it: SQLite stores SQLAlchemy's text form."""
    if conn.dialect.name == "sqlite":
        return when.strftime("%Y-%m-%d %H:%M:%S.%f")
    return when


@asynccontextmanager
async def _migration_lock(url: URL) -> AsyncIterator[None]:
    """One process at a time migrates a SQLite file (an intake and a worker started
    together on a new store). PostgreSQL has its own lock (migrations/env.py).

    An exclusive `flock` on a file beside the database, not on the database itself:
    closing any descriptor of the database would drop the POSIX locks SQLite holds on it
    in this process."""
    database = url.database
    if url.get_backend_name() != "sqlite" or database in (None, "", ":memory:"):
        yield
        return
    fd = os.open(f"{database}.migrate-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:  # polled: a thread blocked in flock could not be cancelled
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.1)
        yield
    finally:
        os.close(fd)  # releases the lock


def known_revisions() -> set[str]:
    """The revisions of this osel's migrations (imports Alembic)."""
    from alembic.script import ScriptDirectory

    return {script.revision for script in ScriptDirectory(MIGRATIONS).walk_revisions()}


class SchemaTooNew(Exception):
    """The store's schema is at a revision this osel does not know: a newer osel
    migrated it (an upgrade rolled back without restoring the store, or an old instance
    beside new ones)."""

    def __init__(self, url: str, revision: str) -> None:
        super().__init__(
            f"the store (store.url={mask_url(url)}) has schema revision {revision}, which "
            f"this osel does not know (its newest is {SCHEMA_REVISION}): a newer osel upgraded "
            "it. Run that newer version, or restore the store's backup from before the "
            "upgrade (docs/deploying.md, Upgrading)"
        )
        self.revision = revision


def schema_revision(connection: Connection) -> str | None:
    """The store's schema revision as Alembic wrote it; None for an empty store."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    rows = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    return rows[0][0] if len(rows) == 1 else None


def _json_rows(items: Iterable[Any]) -> list[dict[str, Any]]:
    return [{"id": i.id, "data": json.dumps(i.to_json())} for i in items]


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    for attempt in range(100):
        # a new database switched to WAL by two processes at once: SQLite answers "locked"
        # at once instead of waiting, and the switch succeeds a moment later
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.05)
    cursor.execute("PRAGMA synchronous=FULL")  # a commit that returned survives power loss
    cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_CHECKPOINT_PAGES}")
    cursor.execute(f"PRAGMA journal_size_limit={SQLITE_WAL_LIMIT}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
