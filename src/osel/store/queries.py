"""Read-side queries for the HTTP API, the status page and the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, select, true
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from osel.store import tables as t
from osel.store.store import LEARNED_COLUMNS, Store, learned


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_after: int | None  # pass as `after` for the next page; None: no more


@dataclass(frozen=True, slots=True)
class ChangeFilter:
    since: datetime | None = None
    until: datetime | None = None
    project_id: str | None = None
    address: str | None = None
    after: int | None = None  # records older (smaller id) than this, newest first
    limit: int = 100


async def changes(store: Store, f: ChangeFilter) -> Page:
    """Change records, newest first, with what they learnt since (their scan batch)."""
    r = t.audit_records
    cond: list[ColumnElement[bool]] = [r.c.record_type == "change"]
    if f.since:
        cond.append(r.c.created_at >= f.since)
    if f.until:
        cond.append(r.c.created_at < f.until)
    if f.project_id:
        cond.append(r.c.project_id == f.project_id)
    if f.address:
        cond.append(r.c.address == f.address)
    if f.after:
        cond.append(r.c.id < f.after)
    b = t.scan_batches
    query = (
        select(
            r.c.id,
            r.c.body,
            *LEARNED_COLUMNS,
            b.c.state.label("batch_state"),
            b.c.error.label("batch_error"),
        )
        .select_from(r.outerjoin(b, b.c.id == r.c.scan_batch_id))
        .where(and_(*cond))
        .order_by(r.c.id.desc())
        .limit(f.limit + 1)
    )
    async with store.engine.connect() as conn:
        rows = list(await conn.execute(query))
    items = []
    for row in rows[: f.limit]:
        body = learned(json.loads(row.body), row)
        body["id"] = row.id
        if row.scan_batch_id:
            body["scan_batch_state"] = row.batch_state
            body["scan_batch_error"] = row.batch_error or ""
        items.append(body)
    more = len(rows) > f.limit
    return Page(items, items[-1]["id"] if more and items else None)


@dataclass(frozen=True, slots=True)
class ScanFilter:
    since: datetime | None = None
    until: datetime | None = None
    state: str | None = None
    address: str | None = None
    offset: int = 0
    limit: int = 100


def batch_view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "state": row.state,
        "backend": row.backend,
        "title": row.title,
        "reference": row.reference or "",
        "priority": row.priority,
        "addresses": json.loads(row.addresses),
        "error": row.error or "",
        "summary": json.loads(row.summary) if row.summary else None,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


async def scans(store: Store, f: ScanFilter) -> Page:
    b = t.scan_batches
    cond: list[ColumnElement[bool]] = [true()]
    if f.since:
        cond.append(b.c.created_at >= f.since)
    if f.until:
        cond.append(b.c.created_at < f.until)
    if f.state:
        cond.append(b.c.state == f.state)
    if f.address:
        # addresses are a JSON list: match the quoted address inside it
        cond.append(b.c.addresses.contains(json.dumps(f.address)))
    query = (
        select(b)
        .where(and_(*cond))
        .order_by(b.c.created_at.desc(), b.c.id)
        .offset(f.offset)
        .limit(f.limit + 1)
    )
    async with store.engine.connect() as conn:
        rows = list(await conn.execute(query))
    items = [batch_view(row) for row in rows[: f.limit]]
    return Page(items, f.offset + f.limit if len(rows) > f.limit else None)


async def scans_by_state(store: Store) -> dict[str, int]:
    """How many scan batches are in each state."""
    async with store.engine.connect() as conn:
        return await _scans_by_state(conn)


async def _scans_by_state(conn: AsyncConnection) -> dict[str, int]:
    b = t.scan_batches
    rows = (await conn.execute(select(b.c.state, func.count()).group_by(b.c.state))).all()
    return {str(state): int(number) for state, number in rows}


async def counts(store: Store) -> dict[str, Any]:
    """Totals for the status page header."""
    r = t.audit_records
    async with store.engine.connect() as conn:
        by_state = await _scans_by_state(conn)
        exposed = (
            await conn.execute(
                select(func.count()).where(
                    (r.c.record_type == "change") & r.c.internet_exposed.is_(True)
                )
            )
        ).scalar()
    return {
        "scans_by_state": by_state,
        "internet_exposed_changes": int(exposed or 0),
    }


async def sink_lag(store: Store, sinks: list[str]) -> dict[str, dict[str, float | int | None]]:
    """Per sink: records committed but not yet delivered, and the oldest one's age (s)."""
    r, c = t.audit_records, t.sink_cursors
    out: dict[str, dict[str, float | int | None]] = {}
    async with store.engine.connect() as conn:
        last = int((await conn.execute(select(func.max(r.c.id)))).scalar() or 0)
        for sink in sinks:
            position = (
                await conn.execute(select(c.c.position).where(c.c.sink == sink))
            ).scalar_one_or_none() or 0
            oldest = (
                await conn.execute(
                    select(r.c.created_at).where(r.c.id > position).order_by(r.c.id).limit(1)
                )
            ).scalar_one_or_none()
            age = None
            if oldest is not None:
                if oldest.tzinfo is None:
                    oldest = oldest.replace(tzinfo=UTC)
                age = max(0.0, (datetime.now(UTC) - oldest).total_seconds())
            out[sink] = {"behind": max(0, last - int(position)), "oldest_seconds": age}
    return out
