"""The store: SQLite (embedded, the default) or PostgreSQL (several instances).

Everything a notification causes (its audit records, scan targets, window
changes, inventory updates and its message id) is written in ONE transaction
by `commit`; only after it returns may the AMQP message be acknowledged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Table, delete, event, func, insert, select, update
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from osel.decide import Decision
from osel.inventory import Dirty, Inventory
from osel.model import AddressGroup, FloatingIP, Port, Rule, SecurityGroup
from osel.store import tables as t

MIGRATIONS = str(Path(__file__).parent / "migrations")


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


def _record_row(body: dict[str, Any], now: datetime) -> dict[str, Any]:
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
        "body": json.dumps(body, sort_keys=True),
    }


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


class Store:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        async_url, self.sync_url = driver_urls(url)
        self.dialect = async_url.get_backend_name()
        if self.dialect == "sqlite" and async_url.database not in (None, "", ":memory:"):
            Path(async_url.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: AsyncEngine = create_async_engine(async_url, echo=echo)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    # --- lifecycle ---------------------------------------------------------

    def migrate_sync(self, connection: Connection | None = None) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", MIGRATIONS)
        cfg.set_main_option("sqlalchemy.url", self.sync_url.render_as_string(hide_password=False))
        if connection is not None:
            cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")

    async def migrate(self) -> None:
        async with self.engine.begin() as conn:
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
        async with self.engine.begin() as conn:
            if batch.message_ids:
                await conn.execute(
                    insert(t.seen_messages),
                    [
                        {"message_id": m, "event_type": e, "seen_at": now}
                        for m, e in batch.message_ids
                    ],
                )
            for decision in batch.decisions:
                await self._windows(conn, decision)
            records = [r for d in batch.decisions for r in d.records] + batch.records
            if records:
                await conn.execute(insert(t.audit_records), [_record_row(r, now) for r in records])
            targets = [tg for d in batch.decisions for tg in d.targets]
            if targets:
                await conn.execute(
                    insert(t.scan_targets),
                    [
                        {
                            "record_uuid": tg.record_uuid,
                            "message_id": tg.message_id,
                            "address": tg.address,
                            "priority": tg.priority,
                            "internet_exposed": tg.internet_exposed,
                            "created_at": now,
                        }
                        for tg in targets
                    ],
                )
            if batch.dirty:
                await self._inventory(conn, batch.dirty)
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

    async def _windows(self, conn: AsyncConnection, decision: Decision) -> None:
        """Keep one open window per (address, permit) in effect; close the ones that end.

        Opening an already open window changes nothing. A record whose `closed`
        list names a permit learns when its window opened.
        """
        if not decision.windows:
            return
        w = t.exposure_windows
        addresses = sorted({op.address for op in decision.windows})
        open_rows: dict[tuple[str, str, int, int, str], Any] = {}
        for chunk in _chunks(addresses, 500):
            rows = await conn.execute(
                select(w).where(w.c.address.in_(chunk) & w.c.closed_at.is_(None))
            )
            for row in rows:
                open_rows[(row.address, row.protocol, row.port_min, row.port_max, row.remote)] = row
        bodies = {r["record_id"]: r for r in decision.records}
        inserts: list[dict[str, Any]] = []
        for op in decision.windows:
            p = op.permit
            key = (op.address, p.protocol or "any", p.port_min, p.port_max, p.remote)
            if op.action == "open":
                if key not in open_rows:
                    open_rows[key] = None
                    inserts.append(
                        {
                            "address": op.address,
                            "protocol": key[1],
                            "port_min": p.port_min,
                            "port_max": p.port_max,
                            "remote": p.remote,
                            "internet_exposed": p.internet,
                            "rule_id": p.rule_id,
                            "security_group_id": p.security_group_id,
                            "opened_at": op.at,
                            "opened_record": op.record_uuid,
                        }
                    )
                continue
            row = open_rows.pop(key, None)
            if row is not None:
                await conn.execute(
                    update(w)
                    .where(w.c.id == row.id)
                    .values(closed_at=op.at, closed_record=op.record_uuid)
                )
            for closed in bodies[op.record_uuid]["closed"]:
                if (
                    op.address,
                    closed["protocol"],
                    closed["port_range_min"],
                    closed["port_range_max"],
                    closed["remote"],
                ) == key:
                    closed["window_opened_at"] = row.opened_at if row is not None else None
                    closed["window_closed_at"] = op.at
        if inserts:
            await conn.execute(insert(w), inserts)

    async def _inventory(self, conn: AsyncConnection, dirty: Dirty) -> None:
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

    async def load_inventory(self, inventory: Inventory) -> int:
        """Fill `inventory` from the store; return how many resources it holds."""
        async with self.engine.connect() as conn:

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
        return len(groups) + len(rules) + len(ports) + len(fips) + len(ags)

    async def replace_inventory(self, inventory: Inventory) -> None:
        """Persist a whole inventory (after a full sync) in one transaction."""
        async with self.engine.begin() as conn:
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
        inventory.take_dirty()

    # --- meta --------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        async with self.engine.connect() as conn:
            return (
                await conn.execute(select(t.meta.c.value).where(t.meta.c.key == key))
            ).scalar_one_or_none()

    async def set_meta(self, key: str, value: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(t.meta).where(t.meta.c.key == key))
            await conn.execute(insert(t.meta).values(key=key, value=value))

    # --- reading -----------------------------------------------------------

    async def records_after(self, position: int, limit: int) -> list[tuple[int, str]]:
        r = t.audit_records
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(r.c.id, r.c.body).where(r.c.id > position).order_by(r.c.id).limit(limit)
            )
            return [(row.id, row.body) for row in rows]

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
        async with self.engine.begin() as conn:
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
        async with self.engine.begin() as conn:
            await conn.execute(update(q).where(q.c.id == row_id).values(retried_at=utcnow()))

    async def open_windows(self, address: str | None = None) -> list[Any]:
        w = t.exposure_windows
        query = select(w).where(w.c.closed_at.is_(None))
        if address:
            query = query.where(w.c.address == address)
        async with self.engine.connect() as conn:
            return list(await conn.execute(query.order_by(w.c.id)))


def _json_rows(items: Iterable[Any]) -> list[dict[str, Any]]:
    return [{"id": i.id, "data": json.dumps(i.to_json())} for i in items]


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # a commit that returned survives power loss
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
