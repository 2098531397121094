"""Coalesce scan targets into batches and hand them to the scan backend.

Targets wait until the oldest of them is `window_seconds` old; then every
pending target is taken at once, deduplicated by address, ordered by risk and
split into batches of at most `max_targets`. Claiming is one transaction
(with `FOR UPDATE SKIP LOCKED` on PostgreSQL), so a target joins one batch
only, whatever the number of instances.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from osel.decide import SOURCE_TYPE, now_iso
from osel.store import tables as t
from osel.store.store import Store, _record_row, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScanBatch:
    id: str
    title: str
    addresses: list[str]
    priority: int
    record_uuids: list[str]
    message_ids: list[str]


@dataclass(frozen=True, slots=True)
class LaunchResult:
    state: str  # launched | error
    reference: str = ""
    error: str = ""


class ScanBackend(Protocol):
    name: str

    async def launch(self, batch: ScanBatch) -> LaunchResult: ...


class DryRunBackend:
    """Records the batch it would launch; sends nothing anywhere."""

    name = "dry-run"

    async def launch(self, batch: ScanBatch) -> LaunchResult:
        log.info(
            "dry-run: would scan %d address(es) in batch %s: %s",
            len(batch.addresses),
            batch.id,
            ", ".join(batch.addresses),
        )
        return LaunchResult("launched")


def plan(targets: list[Any], max_targets: int) -> list[list[Any]]:
    """Dedupe by address (keeping the most urgent), order by risk, split."""
    best: dict[str, Any] = {}
    for tg in targets:
        if tg.address not in best or tg.priority < best[tg.address].priority:
            best[tg.address] = tg
    ordered = sorted(best.values(), key=lambda tg: (tg.priority, tg.id))
    return [ordered[i : i + max_targets] for i in range(0, len(ordered), max_targets)]


def scan_record(
    batch: ScanBatch,
    state: str,
    *,
    backend: str,
    instance: str,
    reference: str = "",
    error: str = "",
) -> dict[str, Any]:
    now = now_iso()
    return {
        "source_type": SOURCE_TYPE,
        "record_type": "scan",
        "record_id": str(uuid.uuid4()),
        "change_type": "scan",
        "timestamp": now,
        "observed_at": now,
        "scan_batch_id": batch.id,
        "scan_title": batch.title,
        "scan_backend": backend,
        "scan_state": state,
        "qualys_scan_id": reference,
        "qualys_scan_error": error,
        "target_addresses": batch.addresses,
        "change_record_ids": batch.record_uuids,
        "message_ids": batch.message_ids,
        "priority": batch.priority,
        "affected_ip_address": "",
        "internet_exposed": batch.priority < 2,
        "osel_instance": instance,
    }


class Scheduler:
    def __init__(
        self,
        store: Store,
        backend: ScanBackend,
        *,
        window_seconds: float,
        max_targets: int,
        instance: str,
    ) -> None:
        self.store = store
        self.backend = backend
        self.window = timedelta(seconds=window_seconds)
        self.max_targets = max_targets
        self.instance = instance

    async def tick(self) -> list[ScanBatch]:
        """Form and launch the batches that are due; return them."""
        batches = await self._claim()
        for batch in batches:
            result = await self.backend.launch(batch)
            await self._finish(batch, result)
        return batches

    async def resume(self) -> list[ScanBatch]:
        """Launch batches claimed before a crash but never handed to the backend."""
        sb = t.scan_batches
        async with self.store.engine.connect() as conn:
            rows = list(
                await conn.execute(
                    select(sb)
                    .where(sb.c.state == "queued")
                    .order_by(sb.c.priority, sb.c.created_at)
                )
            )
            batches = []
            for row in rows:
                members = list(
                    await conn.execute(
                        select(t.scan_targets).where(t.scan_targets.c.batch_id == row.id)
                    )
                )
                batches.append(
                    ScanBatch(
                        id=row.id,
                        title=row.title,
                        addresses=json.loads(row.addresses),
                        priority=row.priority,
                        record_uuids=sorted({m.record_uuid for m in members}),
                        message_ids=sorted({m.message_id for m in members}),
                    )
                )
        for batch in batches:
            await self._finish(batch, await self.backend.launch(batch))
        return batches

    async def _claim(self) -> list[ScanBatch]:
        st = t.scan_targets
        async with self.store.engine.begin() as conn:
            oldest = (
                await conn.execute(select(func.min(st.c.created_at)).where(st.c.batch_id.is_(None)))
            ).scalar()
            if oldest is None:
                return []
            if oldest.tzinfo is None:
                oldest = oldest.replace(tzinfo=utcnow().tzinfo)
            if utcnow() - oldest < self.window:
                return []
            query = select(st).where(st.c.batch_id.is_(None)).order_by(st.c.id)
            if self.store.dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            targets = list(await conn.execute(query))
            return [
                await self._create(conn, group, targets)
                for group in plan(targets, self.max_targets)
            ]

    async def _create(
        self, conn: AsyncConnection, group: list[Any], all_targets: list[Any]
    ) -> ScanBatch:
        batch_id = str(uuid.uuid4())
        addresses = [tg.address for tg in group]
        members = [tg for tg in all_targets if tg.address in set(addresses)]
        batch = ScanBatch(
            id=batch_id,
            title=f"osel {batch_id} ({len(addresses)} address(es))",
            addresses=addresses,
            priority=min(tg.priority for tg in group),
            record_uuids=sorted({tg.record_uuid for tg in members}),
            message_ids=sorted({tg.message_id for tg in members}),
        )
        now = utcnow()
        await conn.execute(
            insert(t.scan_batches).values(
                id=batch.id,
                created_at=now,
                updated_at=now,
                backend=self.backend.name,
                state="queued",
                title=batch.title,
                priority=batch.priority,
                addresses=json.dumps(addresses),
            )
        )
        st = t.scan_targets
        await conn.execute(
            update(st).where(st.c.id.in_([tg.id for tg in members])).values(batch_id=batch.id)
        )
        ar = t.audit_records
        await conn.execute(
            update(ar)
            .where(ar.c.record_uuid.in_(batch.record_uuids))
            .values(scan_batch_id=batch.id)
        )
        record = scan_record(batch, "queued", backend=self.backend.name, instance=self.instance)
        await conn.execute(insert(ar), [_record_row(record, now)])
        return batch

    async def _finish(self, batch: ScanBatch, result: LaunchResult) -> None:
        now = utcnow()
        record = scan_record(
            batch,
            result.state,
            backend=self.backend.name,
            instance=self.instance,
            reference=result.reference,
            error=result.error,
        )
        async with self.store.engine.begin() as conn:
            await conn.execute(
                update(t.scan_batches)
                .where(t.scan_batches.c.id == batch.id)
                .values(
                    state=result.state,
                    reference=result.reference or None,
                    error=result.error or None,
                    updated_at=now,
                )
            )
            await conn.execute(insert(t.audit_records), [_record_row(record, now)])

    async def batches(self, limit: int = 50) -> list[Any]:
        sb = t.scan_batches
        async with self.store.engine.connect() as conn:
            return list(
                await conn.execute(select(sb).order_by(sb.c.created_at.desc()).limit(limit))
            )
