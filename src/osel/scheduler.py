"""Coalesce scan targets into batches, launch each batch once, follow it to its end.

Targets wait until the oldest of them is `window_seconds` old; then every
pending target is taken at once, deduplicated by address, ordered by risk and
split into batches of at most `max_targets`. Claiming is one transaction
(with `FOR UPDATE SKIP LOCKED` on PostgreSQL), so a target joins one batch
only, whatever the number of instances. An address scanned less than
`cooldown_minutes` ago (or already waiting in a batch) is not scanned again:
its targets form a `skipped` batch that says why.

A batch's life (`scan_batches.state`):

    queued ─► launching ─► launched ─► running ─► finished
                 │    ▲                     └───► error   (the backend's Error or Canceled)
                 │    └── a launch that may have reached the backend unseen (a crash, a
                 │        timeout) stays here: it is reconciled by its title, and launched
                 │        again only when the backend has no scan of that title
                 ├─► queued  (throttled: nothing was launched; retried when the budget allows)
                 ├─► held    (refused for a reason of its own; tried again at the next start)
                 └─► error   (every address refused)

`launching` is written (and committed) before the launch call: the intent.
Every other move is a compare-and-set on the state, so two instances never
launch one batch, and every state change the backend reports becomes one
`record_type: scan` audit record. Change records learn their scan reference
and, when results arrive, what the scan found on the ports they opened (the
`qualys_scan_id` and `scan_result` columns; their committed body is never
rewritten).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from osel.backoff import BackoffPolicy, OutageLog
from osel.decide import SOURCE_TYPE, now_iso, random_id
from osel.exposure import normalize_protocol
from osel.faults import crash_point
from osel.scan_backend import (
    ACTIVE,
    ERROR,
    FINISHED,
    HELD,
    LAUNCHED,
    LAUNCHING,
    QUEUED,
    SKIPPED,
    AuthFailed,
    LaunchResult,
    Rejected,
    ScanBackend,
    ScanBatch,
    ScanProblem,
    ScanStatus,
    Throttled,
    Unavailable,
)
from osel.store import tables as t
from osel.store.store import Store, _record_row, utcnow

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- pure helpers


class Pending(NamedTuple):
    """A scan target not in a batch yet: its scan_targets row. A tuple rather than the
    row itself: a SQLAlchemy row's attributes cost ten times a tuple's, and a backlog's
    claim reads them tens of thousands of times."""

    id: int
    record_uuid: str
    message_id: str
    address: str
    priority: int


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
    **extra: Any,
) -> dict[str, Any]:
    now = now_iso()
    record = {
        "source_type": SOURCE_TYPE,
        "record_type": "scan",
        "record_id": random_id(),
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
    record.update(extra)
    return record


def _port_key(protocol: str, port: int) -> str:
    return f"{protocol}/{port}"


def _covers(permit: Mapping[str, Any], key: str) -> bool:
    protocol, _, port_text = key.partition("/")
    wanted = normalize_protocol(str(permit.get("protocol") or "any")) or "any"
    if wanted not in ("any", protocol):
        return False
    try:
        port = int(port_text)
    except ValueError:
        return False
    low = permit.get("port_range_min")
    high = permit.get("port_range_max")
    return (low is None or int(low) <= port) and (high is None or port <= int(high))


def link(change: Mapping[str, Any], host: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the scan found on the (protocol, port) pairs a change record opened (and, for
    a closing change, which of the pairs it closed are still open)."""
    opened = change.get("opened") or []
    closed = change.get("closed") or []
    open_ports: list[str] = list(host.get("open", [])) if host else []
    ports: Mapping[str, Any] = host.get("ports", {}) if host else {}
    return {
        "change_record_id": change.get("record_id", ""),
        "address": change.get("affected_ip_address", ""),
        "reported": host is not None,
        "ip_status": host.get("ip_status", "") if host else "",
        "found_open": [k for k in open_ports if any(_covers(p, k) for p in opened)],
        "found_vulnerable": [
            {"port": k, **ports[k]}
            for k in sorted(ports)
            if ports[k].get("vulnerabilities") and any(_covers(p, k) for p in opened)
        ],
        "still_open": [k for k in open_ports if any(_covers(p, k) for p in closed)],
    }


def _aware(stamp: datetime | None) -> datetime | None:
    if stamp is not None and stamp.tzinfo is None:
        return stamp.replace(tzinfo=UTC)
    return stamp


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


# --------------------------------------------------------------------------- the scheduler


class Scheduler:
    def __init__(
        self,
        store: Store,
        backend: ScanBackend,
        *,
        window_seconds: float,
        max_targets: int,
        instance: str,
        cooldown_minutes: float = 0.0,
        backoff: BackoffPolicy | None = None,
        missing_scan_hours: float = 24.0,
    ) -> None:
        self.store = store
        self.backend = backend
        self.window = timedelta(seconds=window_seconds)
        self.max_targets = max_targets
        self.instance = instance
        self.cooldown = timedelta(minutes=cooldown_minutes)
        self.backoff = backoff or BackoffPolicy()
        self.blocked: str | None = None  # the backend refused the credentials: wait for a fix
        self.outage = OutageLog(f"scan backend {backend.name}", log, cap=self.backoff.cap)
        self._wait_notes: set[str] = set()
        self._results_due: dict[str, ScanStatus] = {}  # finished, results not fetched yet
        # how long a launched scan may be missing from the backend's list (deleted in
        # Qualys) before its batch ends in error; since when is in scan_batches
        self.missing_after = timedelta(hours=missing_scan_hours)

    # --- the loops' entry points ----------------------------------------------

    async def tick(self) -> list[ScanBatch]:
        """Form the batches that are due, then launch what may be launched; return the
        batches formed."""
        formed = await self._claim()
        await self.advance()
        return formed

    async def resume(self) -> list[ScanBatch]:
        """After a (re)start: held batches get another chance, launches in doubt are
        reconciled, queued batches are launched. Returns the batches launched."""
        await self._release_held()
        return await self.advance()

    async def advance(self) -> list[ScanBatch]:
        """Reconcile launches in doubt, then launch due batches in risk order."""
        if self.blocked is not None:
            await self._note_blocked()
            return []
        if not await self._reconcile_due():
            return []
        return await self._launch_due()

    async def follow(self) -> int:
        """Ask the backend about launched and running scans once; record every change.
        Returns how many batches changed state."""
        if not self.backend.follows or self.blocked is not None:
            return 0
        sb = t.scan_batches
        async with self.store.engine.connect() as conn:
            rows = list(
                await conn.execute(
                    select(sb)
                    .where(sb.c.state.in_(ACTIVE) & sb.c.reference.is_not(None))
                    .order_by(sb.c.launched_at)
                    .limit(200)
                )
            )
        if not rows:
            return 0
        active = {r.reference for r in rows}
        self._results_due = {k: v for k, v in self._results_due.items() if k in active}
        due = [r for r in rows if r.reference in self._results_due]
        changed = 0
        if not due:  # when results are due, fetch them before spending a call on a poll
            try:
                statuses = await self.backend.status(
                    [(r.reference, _aware(r.launched_at)) for r in rows]
                )
            except ScanProblem as exc:
                await self._problem(exc, "following scans")
                return 0
            self.outage.recovered()
            for row in rows:
                status = statuses.get(row.reference)
                if status is None:
                    changed += await self._not_listed(row)
                    continue
                await self._listed_again(row)
                if status.state == FINISHED:
                    self._results_due[row.reference] = status
                    due.append(row)
                elif (status.state, status.backend_state) != (row.state, row.qualys_state or ""):
                    changed += await self._moved(row, status)
        for row in due:
            status = self._results_due[row.reference]
            try:
                hosts: dict[str, Any] | None = await self.backend.results(row.reference)
                note = ""
            except Rejected as exc:
                hosts, note = None, f"results could not be fetched: {exc.reason}"
            except ScanProblem as exc:
                await self._problem(exc, f"fetching the results of {row.reference}")
                break
            self._results_due.pop(row.reference, None)
            changed += await self._finished(row, status, hosts, note)
        return changed

    async def _not_listed(self, row: Any) -> int:
        """A launched scan the backend does not list (deleted, or purged by its
        retention): warned about once, then, after ``missing_after`` of polls that
        do not find it, its batch ends in error and is no longer polled. Since when it
        is missing is kept in the store, so that neither a restart nor another instance
        following the scan starts the clock again."""
        now = utcnow()
        since = _aware(row.missing_since)
        if since is None:
            since = now
            sb = t.scan_batches
            async with self.store.begin() as conn:
                started = await conn.execute(
                    update(sb)
                    .where((sb.c.id == row.id) & sb.c.missing_since.is_(None))
                    .values(missing_since=now, updated_at=now)
                )
            if started.rowcount == 1:
                log.warning(
                    "scan %s (batch %s) is not listed by %s; it ends in error if it is "
                    "still missing after %s (qualys.missing_scan_hours)",
                    row.reference,
                    row.id,
                    self.backend.name,
                    self.missing_after,
                )
        if now - since < self.missing_after:
            return 0
        error = (
            f"{self.backend.name} no longer lists the scan (deleted there?); polled "
            f"without finding it since {since.isoformat(timespec='seconds')}, osel stopped "
            "following it"
        )
        return await self._moved(row, ScanStatus(row.reference, ERROR, "Not listed", error))

    async def _listed_again(self, row: Any) -> None:
        """A scan missing from the backend's list is there again: stop the clock."""
        if row.missing_since is None:
            return
        sb = t.scan_batches
        async with self.store.begin() as conn:
            await conn.execute(
                update(sb)
                .where((sb.c.id == row.id) & sb.c.missing_since.is_not(None))
                .values(missing_since=None)
            )
        log.info("scan %s (batch %s) is listed by %s again", row.reference, row.id,
                 self.backend.name)  # fmt: skip

    # --- forming batches ------------------------------------------------------

    async def _claim(self) -> list[ScanBatch]:
        st = t.scan_targets
        async with self.store.begin() as conn:
            oldest = (
                await conn.execute(select(func.min(st.c.created_at)).where(st.c.batch_id.is_(None)))
            ).scalar()
            if oldest is None:
                return []
            if utcnow() - (_aware(oldest) or utcnow()) < self.window:
                return []
            query = (
                select(*(st.c[name] for name in Pending._fields))
                .where(st.c.batch_id.is_(None))
                .order_by(st.c.id)
            )
            if self.store.dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            targets = [Pending._make(row) for row in await conn.execute(query)]
            if self.cooldown > timedelta(0) and targets:
                recent = await self._recent(conn, sorted({tg.address for tg in targets}))
                cooled = [tg for tg in targets if tg.address in recent]
                if cooled:
                    await self._skip(conn, cooled, recent)
                    targets = [tg for tg in targets if tg.address not in recent]
            by_address: dict[str, list[Pending]] = {}
            for tg in targets:
                by_address.setdefault(tg.address, []).append(tg)
            return [
                await self._create(conn, group, by_address)
                for group in plan(targets, self.max_targets)
            ]

    async def _recent(self, conn: AsyncConnection, addresses: list[str]) -> dict[str, str]:
        """Addresses scanned within the cool-down, or waiting in a batch: address -> why."""
        st, sb = t.scan_targets, t.scan_batches
        since = utcnow() - self.cooldown
        minutes = f"{self.cooldown.total_seconds() / 60:g}"
        found: dict[str, str] = {}
        for start in range(0, len(addresses), 500):
            rows = await conn.execute(
                select(st.c.address, sb.c.id, sb.c.state, sb.c.reference, sb.c.launched_at)
                .select_from(st.join(sb, sb.c.id == st.c.batch_id))
                .where(
                    st.c.address.in_(addresses[start : start + 500])
                    & (
                        sb.c.state.in_((QUEUED, LAUNCHING))
                        | (sb.c.state.in_((*ACTIVE, FINISHED)) & (sb.c.launched_at >= since))
                    )
                )
                .order_by(sb.c.launched_at.desc())
            )
            for row in rows:
                if row.address in found:
                    continue
                if row.state in (QUEUED, LAUNCHING):
                    found[row.address] = (
                        f"already in scan batch {row.id}, not launched yet "
                        f"(scan.cooldown_minutes: {minutes})"
                    )
                else:
                    when = (_aware(row.launched_at) or utcnow()).isoformat(timespec="seconds")
                    found[row.address] = (
                        f"scanned at {when} by {row.reference or 'batch ' + row.id}, less than "
                        f"scan.cooldown_minutes ({minutes}) ago"
                    )
        return found

    async def _skip(self, conn: AsyncConnection, cooled: list[Any], why: dict[str, str]) -> None:
        addresses = sorted({tg.address for tg in cooled})
        reasons = {a: why[a] for a in addresses}
        error = f"{len(addresses)} address(es) not scanned again: within scan.cooldown_minutes"
        batch = await self._store_batch(
            conn,
            addresses,
            cooled,
            SKIPPED,
            f"skipped: {len(addresses)} address(es) in cool-down",
            error=error,
            address_errors=json.dumps(reasons),
        )
        for record_uuid, address in batch.members:
            await self._learn(conn, [record_uuid], batch.id, SKIPPED, error=reasons[address])
        record = scan_record(
            batch,
            SKIPPED,
            backend=self.backend.name,
            instance=self.instance,
            error=error,
            address_errors=reasons,
        )
        await conn.execute(insert(t.audit_records), [_record_row(record, utcnow())])
        log.info("scan batch %s skipped: %s", batch.id, "; ".join(reasons[a] for a in addresses))

    async def _create(
        self, conn: AsyncConnection, group: list[Pending], by_address: dict[str, list[Pending]]
    ) -> ScanBatch:
        """A queued batch over `group` (one target per address), claiming every target
        of those addresses (`by_address`: the claimed targets by address)."""
        addresses = [tg.address for tg in group]
        members = [tg for address in addresses for tg in by_address[address]]
        batch = await self._store_batch(
            conn, addresses, members, QUEUED, f"{len(addresses)} address(es)", priority_of=group
        )
        ar = t.audit_records
        await conn.execute(
            update(ar)
            .where(ar.c.record_uuid.in_(batch.record_uuids))
            .values(scan_batch_id=batch.id)
        )
        record = scan_record(batch, QUEUED, backend=self.backend.name, instance=self.instance)
        await conn.execute(insert(ar), [_record_row(record, utcnow())])
        return batch

    async def _store_batch(
        self,
        conn: AsyncConnection,
        addresses: list[str],
        targets: list[Any],
        state: str,
        what: str,
        *,
        priority_of: list[Any] | None = None,
        **columns: Any,
    ) -> ScanBatch:
        """A new batch row over `addresses`, claiming `targets` for it."""
        batch_id = random_id()
        batch = ScanBatch(
            id=batch_id,
            title=f"osel {batch_id} ({what})",
            addresses=addresses,
            priority=min(tg.priority for tg in (priority_of or targets)),
            record_uuids=sorted({tg.record_uuid for tg in targets}),
            message_ids=sorted({tg.message_id for tg in targets}),
            members=tuple(sorted({(tg.record_uuid, tg.address) for tg in targets})),
        )
        now = utcnow()
        await conn.execute(
            insert(t.scan_batches).values(
                id=batch.id,
                created_at=now,
                updated_at=now,
                backend=self.backend.name,
                state=state,
                title=batch.title,
                priority=batch.priority,
                addresses=json.dumps(addresses),
                **columns,
            )
        )
        st = t.scan_targets
        await conn.execute(
            update(st).where(st.c.id.in_([tg.id for tg in targets])).values(batch_id=batch.id)
        )
        return batch

    # --- launching --------------------------------------------------------------

    async def _launch_due(self) -> list[ScanBatch]:
        launched: list[ScanBatch] = []
        for row in await self._due(QUEUED):
            wait = await self.backend.launch_wait()
            if wait > 0:
                self._note_wait(f"launches wait {wait:.1f}s for the {self.backend.name} budget")
                break
            batch = await self._take(row)
            if batch is None:
                continue  # another instance took it
            crash_point("after_launch_intent")
            outcome = await self._launch(batch)
            if outcome == LAUNCHED:
                launched.append(batch)
            elif outcome != "next":
                break
        return launched

    async def _launch(self, batch: ScanBatch) -> str:
        try:
            result = await self.backend.launch(batch)
        except Throttled as exc:
            await self._set(batch.id, LAUNCHING, QUEUED, in_doubt=False, due=exc.wait)
            self._note_wait(exc.reason)
            return "stop"
        except Unavailable as exc:
            self.outage.failed(exc)
            attempts = await self._attempts(batch.id)
            delay = max(1.0, self.backoff.delay(attempts + 1))
            if exc.maybe_done:
                await self._set(batch.id, LAUNCHING, LAUNCHING, due=delay, failed=True)
            else:
                await self._set(batch.id, LAUNCHING, QUEUED, in_doubt=False, due=delay, failed=True)
            return "stop"
        except AuthFailed as exc:
            self._block(exc.reason)
            await self._set(batch.id, LAUNCHING, QUEUED, in_doubt=False)
            await self._note_blocked()
            return "stop"
        except Rejected as exc:
            await self._hold(batch, exc.reason, LAUNCHING, in_doubt=False)
            return "next"
        self.outage.recovered()
        self._wait_notes.clear()
        await self._launched(batch, result)
        return LAUNCHED if result.state == LAUNCHED else "next"

    async def _launched(
        self, batch: ScanBatch, result: LaunchResult, *, reconciled: bool = False
    ) -> bool:
        sb, ar = t.scan_batches, t.audit_records
        now = utcnow()
        refused = dict(result.address_errors)
        state = result.state if result.state in (LAUNCHED, ERROR) else LAUNCHED
        async with self.store.begin() as conn:
            done = await conn.execute(
                update(sb)
                .where((sb.c.id == batch.id) & (sb.c.state == LAUNCHING))
                .values(
                    state=state,
                    reference=result.reference or None,
                    qualys_id=result.scan_id or None,
                    error=result.error or None,
                    address_errors=json.dumps(refused) if refused else None,
                    in_doubt=False,
                    owner=None,
                    due_at=None,
                    attempts=0,
                    launched_at=now if state == LAUNCHED else None,
                    finished_at=now if state == ERROR else None,
                    updated_at=now,
                )
            )
            if done.rowcount != 1:
                return False  # another instance reconciled it meanwhile
            started: list[str] = []
            for record_uuid, address in batch.members:
                if address in refused:
                    await self._learn(conn, [record_uuid], batch.id, ERROR, error=refused[address])
                elif state == LAUNCHED:
                    started.append(record_uuid)
            for chunk in _chunks(started, 500):
                await conn.execute(
                    update(ar)
                    .where(ar.c.record_uuid.in_(chunk))
                    .values(
                        qualys_scan_id=result.reference or None,
                        scan_state=LAUNCHED,
                        scan_result=None,
                    )
                )
            extra: dict[str, Any] = {"address_errors": refused} if refused else {}
            if reconciled:
                extra["reconciled"] = True
            record = scan_record(
                batch,
                state,
                backend=self.backend.name,
                instance=self.instance,
                reference=result.reference,
                error=result.error,
                **extra,
            )
            await conn.execute(
                insert(ar),
                [{**_record_row(record, now), "qualys_scan_id": result.reference or None}],
            )
        if refused:
            log.warning(
                "scan batch %s: %d address(es) not scanned: %s",
                batch.id,
                len(refused),
                "; ".join(f"{a}: {m}" for a, m in sorted(refused.items())),
            )
        if state == ERROR:
            log.error("scan batch %s could not be launched: %s", batch.id, result.error)
        return True

    # --- launches in doubt ------------------------------------------------------

    async def _reconcile_due(self) -> bool:
        """Find out, by title, whether launches in doubt reached the backend. False: stop
        for now (the backend is throttling, away or refusing us)."""
        for row in await self._due(LAUNCHING):
            batch = await self._take(row)
            if batch is None:
                continue
            since = (_aware(row.launched_at) or _aware(row.created_at) or utcnow()) - timedelta(
                minutes=10
            )
            try:
                found = await self.backend.find(batch, since)
            except Throttled as exc:
                await self._set(batch.id, LAUNCHING, LAUNCHING, due=exc.wait)
                self._note_wait(exc.reason)
                return False
            except Unavailable as exc:
                self.outage.failed(exc)
                attempts = await self._attempts(batch.id)
                delay = max(1.0, self.backoff.delay(attempts + 1))
                await self._set(batch.id, LAUNCHING, LAUNCHING, due=delay, failed=True)
                return False
            except AuthFailed as exc:
                self._block(exc.reason)
                await self._set(batch.id, LAUNCHING, LAUNCHING)
                await self._note_blocked()
                return False
            except Rejected as exc:
                reason = f"cannot tell whether its launch reached {self.backend.name}: {exc.reason}"
                await self._hold(batch, reason, LAUNCHING, in_doubt=True)
                continue
            self.outage.recovered()
            if found is None:
                log.info(
                    "scan batch %s: its launch never reached %s (no scan titled %r); "
                    "launching it now",
                    batch.id,
                    self.backend.name,
                    batch.title,
                )
                await self._set(batch.id, LAUNCHING, QUEUED, in_doubt=False)
                continue
            log.info(
                "scan batch %s: its launch did reach %s as %s (%s); following it",
                batch.id,
                self.backend.name,
                found.reference,
                found.backend_state,
            )
            await self._launched(batch, LaunchResult(LAUNCHED, found.reference), reconciled=True)
        return True

    # --- following --------------------------------------------------------------

    async def _moved(self, row: Any, status: ScanStatus) -> int:
        sb, ar = t.scan_batches, t.audit_records
        now = utcnow()
        terminal = status.state == ERROR
        async with self.store.begin() as conn:
            done = await conn.execute(
                update(sb)
                .where(
                    (sb.c.id == row.id)
                    & (sb.c.state == row.state)
                    & sb.c.qualys_state.is_not_distinct_from(row.qualys_state)
                )
                .values(
                    state=status.state,
                    qualys_state=status.backend_state or None,
                    error=status.error or None,
                    finished_at=now if terminal else None,
                    updated_at=now,
                )
            )
            if done.rowcount != 1:
                return 0
            batch = await self._load(conn, row)
            await conn.execute(
                update(ar)
                .where((ar.c.scan_batch_id == row.id) & (ar.c.qualys_scan_id == row.reference))
                .values(scan_state=status.state)
            )
            record = scan_record(
                batch,
                status.state,
                backend=self.backend.name,
                instance=self.instance,
                reference=row.reference,
                error=status.error,
                qualys_state=status.backend_state,
                **self._refused(row),
            )
            await conn.execute(
                insert(ar), [{**_record_row(record, now), "qualys_scan_id": row.reference}]
            )
        if terminal:
            log.error("scan %s (batch %s) ended: %s", row.reference, row.id, status.error)
        else:
            log.info("scan %s (batch %s): %s", row.reference, row.id, status.backend_state)
        return 1

    async def _finished(
        self, row: Any, status: ScanStatus, hosts: dict[str, Any] | None, note: str
    ) -> int:
        sb, ar = t.scan_batches, t.audit_records
        now = utcnow()
        async with self.store.begin() as conn:
            changes = list(
                await conn.execute(
                    select(ar.c.record_uuid, ar.c.body).where(
                        (ar.c.scan_batch_id == row.id)
                        & (ar.c.record_type == "change")
                        & (ar.c.qualys_scan_id == row.reference)
                    )
                )
            )
            links = []
            for change in changes:
                body = json.loads(change.body)
                host = (hosts or {}).get(body.get("affected_ip_address", ""))
                links.append(link(body, host if hosts is not None else None))
            summary = {
                "hosts": hosts or {},
                "vulnerabilities": _totals(hosts or {}),
                "change_links": links,
                "note": note,
            }
            done = await conn.execute(
                update(sb)
                .where((sb.c.id == row.id) & (sb.c.state == row.state))
                .values(
                    state=FINISHED,
                    qualys_state=status.backend_state or None,
                    summary=json.dumps(summary, sort_keys=True),
                    error=note or None,
                    finished_at=now,
                    updated_at=now,
                )
            )
            if done.rowcount != 1:
                return 0
            for change, result in zip(changes, links, strict=True):
                learned = {k: v for k, v in result.items() if k != "change_record_id"}
                if note:
                    learned["qualys_scan_error"] = note
                await conn.execute(
                    update(ar)
                    .where(ar.c.record_uuid == change.record_uuid)
                    .values(scan_state=FINISHED, scan_result=json.dumps(learned, sort_keys=True))
                )
            batch = await self._load(conn, row)
            record = scan_record(
                batch,
                FINISHED,
                backend=self.backend.name,
                instance=self.instance,
                reference=row.reference,
                error=note,
                qualys_state=status.backend_state,
                results=hosts or {},
                vulnerabilities=summary["vulnerabilities"],
                change_links=links,
                **self._refused(row),
            )
            await conn.execute(
                insert(ar), [{**_record_row(record, now), "qualys_scan_id": row.reference}]
            )
        found = sum(len(x["found_open"]) for x in links)
        log.info(
            "scan %s (batch %s) finished: %d host(s) reported, %d opened port(s) found open",
            row.reference,
            row.id,
            len(hosts or {}),
            found,
        )
        return 1

    # --- errors, waiting, holding -------------------------------------------------

    def _block(self, reason: str) -> None:
        if self.blocked is None:
            log.error(
                "%s; no scan is launched or followed until the configuration is fixed and "
                "osel restarted",
                reason,
            )
        self.blocked = reason

    async def _note_blocked(self) -> None:
        """Give every waiting batch the blocking error, once (one record, one log line)."""
        reason = self.blocked
        if reason is None:
            return
        sb = t.scan_batches
        async with self.store.engine.connect() as conn:
            rows = list(
                await conn.execute(
                    select(sb).where(
                        sb.c.state.in_((QUEUED, LAUNCHING)) & sb.c.error.is_distinct_from(reason)
                    )
                )
            )
        for row in rows:
            await self._error(row, reason, f"waits for the configuration to be fixed: {reason}")

    async def _hold(
        self, batch: ScanBatch, reason: str, from_state: str, *, in_doubt: bool
    ) -> None:
        sb = t.scan_batches
        now = utcnow()
        async with self.store.begin() as conn:
            row = (await conn.execute(select(sb).where(sb.c.id == batch.id))).one()
            await conn.execute(
                update(sb)
                .where((sb.c.id == batch.id) & (sb.c.state == from_state))
                .values(state=HELD, in_doubt=in_doubt, owner=None, due_at=None, updated_at=now)
            )
        await self._error(row, reason, f"held until osel restarts: {reason}")

    async def _error(self, row: Any, reason: str, logged: str) -> None:
        """Record `reason` on a batch that is not lost, only waiting: once per distinct
        reason (a scan record with scan_state error, one log line)."""
        sb, ar = t.scan_batches, t.audit_records
        now = utcnow()
        async with self.store.begin() as conn:
            done = await conn.execute(
                update(sb)
                .where((sb.c.id == row.id) & sb.c.error.is_distinct_from(reason))
                .values(error=reason, updated_at=now)
            )
            if done.rowcount != 1:
                return
            batch = await self._load(conn, row)
            await self._learn(conn, batch.record_uuids, batch.id, None, error=reason)
            record = scan_record(
                batch, ERROR, backend=self.backend.name, instance=self.instance, error=reason
            )
            await conn.execute(insert(ar), [_record_row(record, now)])
        log.error("scan batch %s (%d address(es)) %s", row.id, len(batch.addresses), logged)

    async def _release_held(self) -> None:
        sb = t.scan_batches
        now = utcnow()
        async with self.store.begin() as conn:
            await conn.execute(
                update(sb)
                .where((sb.c.state == HELD) & sb.c.in_doubt.is_(False))
                .values(state=QUEUED, due_at=None, updated_at=now)
            )
            await conn.execute(
                update(sb)
                .where((sb.c.state == HELD) & sb.c.in_doubt.is_(True))
                .values(state=LAUNCHING, due_at=None, updated_at=now)
            )
            waiting = (
                await conn.execute(
                    select(func.count()).where(
                        sb.c.state.in_((QUEUED, LAUNCHING)) & sb.c.error.is_not(None)
                    )
                )
            ).scalar()
        if waiting:
            log.info("%d scan batch(es) that met an error before are tried again", waiting)

    async def _problem(self, exc: ScanProblem, doing: str) -> None:
        if isinstance(exc, Throttled):
            self._note_wait(exc.reason)
        elif isinstance(exc, Unavailable):
            self.outage.failed(exc)
        elif isinstance(exc, AuthFailed):
            self._block(exc.reason)
            await self._note_blocked()
        else:
            log.warning("%s: %s", doing, exc.reason)

    def _note_wait(self, reason: str) -> None:
        """Log each kind of wait once until something goes through again (the seconds in
        the reason change from tick to tick, its kind does not)."""
        key = re.sub(r"[\d.]+s\b", "Ns", reason)
        if key not in self._wait_notes:
            log.info("%s", reason)
            self._wait_notes.add(key)

    # --- small store steps -------------------------------------------------------

    async def _due(self, state: str) -> list[Any]:
        sb = t.scan_batches
        now = utcnow()
        async with self.store.engine.connect() as conn:
            return list(
                await conn.execute(
                    select(sb)
                    .where((sb.c.state == state) & (sb.c.due_at.is_(None) | (sb.c.due_at <= now)))
                    .order_by(sb.c.priority, sb.c.created_at)
                    .limit(100)
                )
            )

    async def _take(self, row: Any) -> ScanBatch | None:
        """Write the launch intent (or take over a launch in doubt whose lease ended):
        a compare-and-set, committed before anything is sent."""
        sb = t.scan_batches
        now = utcnow()
        lease = now + timedelta(seconds=self.backend.lease_seconds)
        values: dict[str, Any] = {
            "state": LAUNCHING,
            "in_doubt": True,
            "owner": self.instance,
            "due_at": lease,
            "updated_at": now,
        }
        if row.state == QUEUED:
            values.update(launch_attempts=sb.c.launch_attempts + 1, launched_at=now)
        async with self.store.begin() as conn:
            done = await conn.execute(
                update(sb)
                .where(
                    (sb.c.id == row.id)
                    & (sb.c.state == row.state)
                    & (sb.c.due_at.is_(None) | (sb.c.due_at <= now))
                )
                .values(**values)
            )
            if done.rowcount != 1:
                return None
            return await self._load(conn, row)

    async def _set(
        self,
        batch_id: str,
        from_state: str,
        to_state: str,
        *,
        in_doubt: bool | None = None,
        due: float | None = None,
        failed: bool = False,
    ) -> None:
        sb = t.scan_batches
        now = utcnow()
        values: dict[str, Any] = {
            "state": to_state,
            "due_at": now + timedelta(seconds=due) if due else None,
            "updated_at": now,
        }
        if in_doubt is not None:
            values["in_doubt"] = in_doubt
        if failed:
            values["attempts"] = sb.c.attempts + 1
        async with self.store.begin() as conn:
            await conn.execute(
                update(sb)
                .where((sb.c.id == batch_id) & (sb.c.state == from_state))
                .values(**values)
            )

    async def _attempts(self, batch_id: str) -> int:
        sb = t.scan_batches
        async with self.store.engine.connect() as conn:
            value = (await conn.execute(select(sb.c.attempts).where(sb.c.id == batch_id))).scalar()
        return int(value or 0)

    async def _learn(
        self,
        conn: AsyncConnection,
        record_uuids: Sequence[str],
        batch_id: str,
        state: str | None,
        *,
        error: str,
    ) -> None:
        """What change records learn after their commit (never their delivered body)."""
        ar = t.audit_records
        values: dict[str, Any] = {
            "scan_batch_id": batch_id,
            "scan_result": json.dumps({"qualys_scan_error": error}),
        }
        if state is not None:
            values["scan_state"] = state
        await conn.execute(
            update(ar).where(ar.c.record_uuid.in_(list(record_uuids))).values(**values)
        )

    async def _load(self, conn: AsyncConnection, row: Any) -> ScanBatch:
        members = list(
            await conn.execute(
                select(
                    t.scan_targets.c.record_uuid,
                    t.scan_targets.c.message_id,
                    t.scan_targets.c.address,
                ).where(t.scan_targets.c.batch_id == row.id)
            )
        )
        return ScanBatch(
            id=row.id,
            title=row.title,
            addresses=json.loads(row.addresses),
            priority=row.priority,
            record_uuids=sorted({m.record_uuid for m in members}),
            message_ids=sorted({m.message_id for m in members}),
            members=tuple(sorted({(m.record_uuid, m.address) for m in members})),
        )

    @staticmethod
    def _refused(row: Any) -> dict[str, Any]:
        refused = _loads(row.address_errors)
        return {"address_errors": refused} if refused else {}

    # --- reading -------------------------------------------------------------------

    async def batches(self, limit: int = 50) -> list[Any]:
        sb = t.scan_batches
        async with self.store.engine.connect() as conn:
            return list(
                await conn.execute(select(sb).order_by(sb.c.created_at.desc()).limit(limit))
            )

    async def find_batch(self, ref: str) -> tuple[Any, list[Any]] | None:
        """A batch by its id or its scan reference, with its change records."""
        sb, st, ar = t.scan_batches, t.scan_targets, t.audit_records
        async with self.store.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(sb)
                    .where((sb.c.id == ref) | (sb.c.reference == ref))
                    .order_by(sb.c.created_at.desc())
                    .limit(1)
                )
            ).first()
            if row is None:
                return None
            changes = list(
                await conn.execute(
                    select(
                        st.c.record_uuid,
                        st.c.address,
                        ar.c.change_type,
                        ar.c.scan_state,
                        ar.c.qualys_scan_id,
                        ar.c.scan_result,
                    )
                    .select_from(st.outerjoin(ar, ar.c.record_uuid == st.c.record_uuid))
                    .where(st.c.batch_id == row.id)
                    .order_by(st.c.address, st.c.id)
                )
            )
        return row, changes


def _totals(hosts: Mapping[str, Any]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for host in hosts.values():
        for severity, count in (host.get("vulnerabilities") or {}).items():
            totals[str(severity)] = totals.get(str(severity), 0) + int(count)
    return dict(sorted(totals.items()))


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
