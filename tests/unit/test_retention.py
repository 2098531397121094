"""store.retention_days: what goes once it is old, and what stays whatever its age."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
from sqlalchemy import func, select, update

from osel.scan_backend import FINISHED, DryRunBackend
from osel.scheduler import Scheduler
from osel.store import tables as t
from osel.store.retention import PRUNE_LOCK, Pruned, count, delivered_up_to, old, prune
from osel.store.store import Store, utcnow
from tests import messages as m
from tests.unit.conftest import Harness
from tests.unit.test_pipeline import world

SINK = "file"


async def prune_old(store: Store, *, chunk: int = 1000, **horizon: Any) -> Pruned:
    """Count what is old, delete it, and check that the count said what went."""
    found = await old(store, **horizon)
    counted = await count(store, found)
    pruned = await prune(store, found, chunk=chunk)
    assert pruned.rows == counted.rows or pruned.busy
    return pruned


async def counts(store: Store) -> dict[str, int]:
    tables = (
        t.audit_records,
        t.exposure_windows,
        t.scan_batches,
        t.scan_targets,
        t.seen_messages,
        t.quarantine,
    )
    async with store.engine.connect() as conn:
        return {
            table.name: (await conn.execute(select(func.count()).select_from(table))).scalar_one()
            for table in tables
        }


async def rule_change(h: Harness, event: str, rule: dict[str, Any]) -> None:
    payload = {"security_group_rule": rule, "security_group_rule_id": rule["id"]}
    await h.feed(m.envelope(m.notification(event, payload)))


async def top_record(store: Store) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(func.max(t.audit_records.c.id)))).scalar() or 0)


async def deliver_up_to(store: Store, position: int) -> None:
    assert await store.claim_sink(SINK, "test-osel", 30) is not None
    assert await store.advance_cursor(SINK, "test-osel", position, 30)


async def test_what_is_old_goes_and_what_is_still_needed_stays(harness: Harness) -> None:
    world(harness)
    store = harness.store
    ssh = m.rule("sg1", rid="r1")
    await rule_change(
        harness, "security_group_rule.create.end", m.rule("sg1", rid="r0", direction="egress")
    )
    await rule_change(harness, "security_group_rule.create.end", ssh)
    scheduler = Scheduler(
        store, DryRunBackend(), window_seconds=0, max_targets=500, instance="test-osel"
    )
    assert len(await scheduler.tick()) == 1  # the three addresses of r1, launched
    delivered = await top_record(store)  # a sink has delivered everything up to here
    await rule_change(harness, "security_group_rule.delete.end", ssh)  # closes 3 windows
    await harness.feed(b"not json")
    await store.mark_retried((await store.quarantine_list())[0].id)
    await harness.feed(b"not json either")
    await deliver_up_to(store, delivered)
    before = await counts(store)
    assert before == {
        "audit_records": 3
        + 3
        + 2
        + 3,  # egress, r1 added, its batch (queued, launched), r1 removed
        "exposure_windows": 3,
        "scan_batches": 1,
        "scan_targets": 3 + 3,
        "seen_messages": 3,
        "quarantine": 2,
    }

    now = utcnow()
    young = await prune_old(store, before=now - timedelta(days=1), batches_before=now, sinks=[SINK])
    assert young.total == 0 and await counts(store) == before

    future = now + timedelta(days=1)
    first = await prune_old(store, before=future, batches_before=future, sinks=[SINK], chunk=2)
    # gone: the egress records (skipped) and the batch's scan records, delivered; the
    # ids of the messages seen; the quarantined message that was retried. Kept: the
    # records of r1 (their scan is under way), its batch and targets, the records of its
    # removal (not delivered yet, and their scan is queued), the windows they closed,
    # the quarantined message nobody retried.
    assert first.rows == {"audit_records": 5, "seen_messages": 3, "quarantine": 1}
    assert await counts(store) == {
        "audit_records": 6,
        "exposure_windows": 3,
        "scan_batches": 1,
        "scan_targets": 6,
        "seen_messages": 0,
        "quarantine": 1,
    }
    left = [r["change_type"] for r in await store.tail(100)]
    assert sorted(left) == ["sg_rule_add"] * 3 + ["sg_rule_del"] * 3

    # the scan ends, a scan of the removal is launched and ends, the sink delivers all
    assert len(await scheduler.tick()) == 1
    async with store.begin() as conn:
        await conn.execute(update(t.scan_batches).values(state=FINISHED))
        await conn.execute(update(t.audit_records).values(scan_state=FINISHED))
    await deliver_up_to(store, await top_record(store))
    top = await top_record(store)
    second = await prune_old(store, before=future, batches_before=future, sinks=[SINK], chunk=2)
    assert second.rows == {
        "audit_records": 3 + 2 + 3 - 1,  # the newest stays
        "exposure_windows": 3,
        "scan_batches": 2,
        "scan_targets": 6,
    }
    assert await top_record(store) == top
    assert await counts(store) == {
        "audit_records": 1,
        "exposure_windows": 0,
        "scan_batches": 0,
        "scan_targets": 0,
        "seen_messages": 0,
        "quarantine": 1,
    }


async def test_open_exposure_windows_stay(harness: Harness) -> None:
    world(harness)
    await rule_change(harness, "security_group_rule.create.end", m.rule("sg1", rid="r1"))
    future = utcnow() + timedelta(days=1)
    pruned = await prune_old(harness.store, before=future, batches_before=future, sinks=[])
    # with no sink, delivered means committed; queued records wait for their scan
    assert pruned.rows == {"seen_messages": 1}
    assert len(await harness.store.open_windows()) == 3
    async with harness.store.begin() as conn:
        await conn.execute(update(t.audit_records).values(scan_state=FINISHED))
    pruned = await prune_old(harness.store, before=future, batches_before=future, sinks=[])
    assert pruned.rows == {"audit_records": 2}  # the newest stays
    assert len(await harness.store.open_windows()) == 3


async def test_launched_scans_that_nobody_follows_end_at_launch(harness: Harness) -> None:
    world(harness)
    await rule_change(harness, "security_group_rule.create.end", m.rule("sg1", rid="r1"))
    scheduler = Scheduler(
        harness.store, DryRunBackend(), window_seconds=0, max_targets=500, instance="t"
    )
    assert len(await scheduler.tick()) == 1
    future = utcnow() + timedelta(days=1)
    followed = await prune_old(harness.store, before=future, batches_before=future, sinks=[])
    # the batch's scan record "queued"; "launched" is the newest record, which stays
    assert followed.rows == {"audit_records": 1, "seen_messages": 1}
    dry_run = await prune_old(
        harness.store, before=future, batches_before=future, sinks=[], followed=False
    )
    assert dry_run.rows == {"audit_records": 3, "scan_batches": 1, "scan_targets": 3}


async def test_scan_batches_young_enough_for_the_cooldown_stay(harness: Harness) -> None:
    world(harness)
    await rule_change(harness, "security_group_rule.create.end", m.rule("sg1", rid="r1"))
    scheduler = Scheduler(
        harness.store, DryRunBackend(), window_seconds=0, max_targets=500, instance="t"
    )
    await scheduler.tick()
    now = utcnow()
    pruned = await prune_old(
        harness.store,
        before=now + timedelta(days=1),
        batches_before=now - timedelta(minutes=1),
        sinks=[],
        followed=False,
    )
    assert "scan_batches" not in pruned.rows


async def test_which_sinks_hold_records_back(store: Store) -> None:
    now = utcnow()
    assert await delivered_up_to(store, [], now) is None  # no sink: every record
    assert await delivered_up_to(store, ["a"], now) == 0  # a new sink delivers all
    for sink, position in (("a", 40), ("b", 25), ("gone", 10)):
        assert await store.claim_sink(sink, "x", 30) is not None
        assert await store.advance_cursor(sink, "x", position, 30)
    # "b" is delivered to by another instance: it moved since the horizon
    assert await delivered_up_to(store, ["a"], now - timedelta(days=1)) == 10
    # "gone" and "b" have not moved since the horizon, and are not configured here
    assert await delivered_up_to(store, ["a"], now + timedelta(days=1)) == 40
    assert await delivered_up_to(store, ["a", "b"], now + timedelta(days=1)) == 25


async def test_one_instance_prunes_at_a_time(harness: Harness) -> None:
    if harness.store.dialect != "postgresql":
        return  # SQLite: one writer at a time anyway
    world(harness)
    await rule_change(harness, "security_group_rule.create.end", m.rule("sg1", rid="r1"))
    future = utcnow() + timedelta(days=1)
    url = harness.store.url
    with psycopg.connect(url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (PRUNE_LOCK,))
        held = await prune_old(harness.store, before=future, batches_before=future, sinks=[])
        other.execute("SELECT pg_advisory_unlock(%s)", (PRUNE_LOCK,))
    assert held.total == 0
    free = await prune_old(harness.store, before=future, batches_before=future, sinks=[])
    assert free.rows == {"seen_messages": 1}


async def test_record_ids_go_on_rising_after_everything_went(harness: Harness) -> None:
    """SQLite gives a new row the table's highest id plus one: were the newest record
    deleted too, the next ids would fall below the sinks' cursors and never be
    delivered."""
    world(harness)
    store = harness.store
    await rule_change(
        harness, "security_group_rule.create.end", m.rule("sg1", rid="r0", proto="udp")
    )
    async with store.begin() as conn:
        await conn.execute(update(t.audit_records).values(scan_state=FINISHED))
    top = await top_record(store)
    await deliver_up_to(store, top)
    future = utcnow() + timedelta(days=1)
    await prune_old(store, before=future, batches_before=future, sinks=[SINK])
    await rule_change(harness, "security_group_rule.create.end", m.rule("sg1", rid="r1"))
    async with store.engine.connect() as conn:
        ids = list((await conn.execute(select(t.audit_records.c.id))).scalars())
    assert min(ids) == top and len(ids) == 1 + 3
    assert all(i > top for i in ids if i != top)
