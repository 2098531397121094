"""Several instances on one store: inventory changes travel through the store, one
instance at a time delivers to a sink, audit record ids follow commit order."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from osel import memory
from osel.config import Settings
from osel.daemon import Daemon, might_change_inventory
from osel.inventory import Inventory
from osel.model import FloatingIP, Port, Rule, SecurityGroup
from osel.outbox import Outbox
from osel.pipeline import Item
from osel.store import tables as t
from osel.store.store import Batch, Store, _record_row, utcnow
from tests import messages as m
from tests.fakes import FakeNeutron
from tests.pg import postgres_database
from tests.unit.test_sink_outbox import ListSink


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/osel.db"
        return
    with postgres_database() as pg:
        yield pg


def world() -> FakeNeutron:
    n = FakeNeutron()
    n.groups = {"sg1": SecurityGroup("sg1", "p1")}
    n.ports = {"p1": Port.from_neutron(m.port("p1", ["10.0.0.1"], ["sg1"]))}
    n.fips = {"f1": FloatingIP("f1", "203.0.113.10", "p1", "10.0.0.1", "p1")}
    return n


def daemon(url: str, tmp_path: Path, name: str, neutron: FakeNeutron) -> Daemon:
    settings = Settings.model_validate(
        {
            "service": {"instance_name": name},
            "scan": {"backend": "dry-run", "window_seconds": 0},
            "store": {"url": url},
            "audit": {"sinks": [{"type": "file", "path": str(tmp_path / f"{name}.jsonl")}]},
            "openstack": {"resync_minutes": 0},
            "http": {"enabled": False},
        }
    )
    return Daemon(settings, neutron=neutron)


def item(event_type: str, payload: dict[str, Any]) -> Item:
    return Item(m.envelope(m.notification(event_type, payload)), "amqp", "broker-1")


async def changes(store: Store, change_type: str) -> list[dict[str, Any]]:
    return [r for r in await store.tail(1000) if r.get("change_type") == change_type]


async def test_what_one_instance_changes_the_other_sees_before_its_next_change(url, tmp_path):
    neutron = world()
    a = daemon(url, tmp_path, "osel-a", neutron)
    b = daemon(url, tmp_path, "osel-b", neutron)
    await a.prepare()  # the first start fills the inventory from Neutron
    await b.prepare()  # the second loads it from the store: sg1 known, without rules
    assert "sg1" in b.inventory.loaded_groups and b.inventory.rules_of("sg1") == []
    neutron.down, neutron.calls = True, 0  # what b learns now comes from the store
    rule = m.rule("sg1", rid="r1")
    await a.process([item("security_group_rule.create.end", {"security_group_rule": rule})])
    p2 = m.port("p2", ["10.0.0.2"], ["sg1"])
    await b.process([item("port.create.end", {"port": p2})])
    [created] = await changes(b.store, "port_create")
    assert created["affected_ip_address"] == "10.0.0.2"
    assert created["internet_exposed"] is True  # the rule a added, seen by b
    assert [o["port_range_min"] for o in created["opened"]] == [22]
    # and back: a deletes the rule with the id only (as old releases send it); a knows p2
    await a.process([item("security_group_rule.delete.end", {"security_group_rule_id": "r1"})])
    deleted = await changes(a.store, "sg_rule_del")
    assert sorted(r["affected_ip_address"] for r in deleted) == [
        "10.0.0.1",
        "10.0.0.2",
        "203.0.113.10",
    ]
    await b.process([item("port.update.end", {"port": {**p2, "revision_number": 2}})])
    assert b.inventory.rules_of("sg1") == []  # the deletion reached b too
    assert neutron.calls == 0
    for d in (a, b):
        await d.store.close()


async def test_a_whole_inventory_replacement_or_a_trimmed_log_reloads_everything(url):
    a, b = Store(url), Store(url)
    await a.migrate()
    mine, theirs = Inventory(), Inventory()
    mine.put_group(SecurityGroup("sg1", "p1"))
    mine.put_rule(Rule.from_neutron(m.rule("sg1", rid="r1")))
    await a.commit(Batch(dirty=mine.take_dirty()))
    assert await b.refresh_inventory(theirs) == 2
    assert set(theirs.rules) == {"r1"} and "sg1" in theirs.groups
    # a re-sync replaces the inventory as a whole
    mine.clear()
    mine.put_group(SecurityGroup("sg2", "p1"))
    await a.replace_inventory(mine)
    await b.refresh_inventory(theirs)
    assert set(theirs.groups) == {"sg2"} and theirs.rules == {}
    # b falls behind further than the log keeps
    for n in range(5):
        mine.put_rule(Rule.from_neutron(m.rule("sg2", rid=f"x{n}")))
        await a.commit(Batch(dirty=mine.take_dirty()))
    assert await a.prune_inventory_log(keep=2) > 0
    await b.refresh_inventory(theirs)
    assert set(theirs.rules) == {f"x{n}" for n in range(5)}
    assert b.inventory_rev == a.inventory_rev
    await a.close()
    await b.close()


async def test_an_instance_that_reloads_the_whole_inventory_freezes_it_again(
    url, tmp_path, monkeypatch
):
    neutron = world()
    a = daemon(url, tmp_path, "osel-a", neutron)
    b = daemon(url, tmp_path, "osel-b", neutron)
    await a.prepare()
    await b.prepare()
    frozen: list[set[str]] = []  # the groups b held at each freeze

    def freeze() -> int:
        frozen.append(set(b.inventory.groups))
        return 0

    monkeypatch.setattr(memory, "freeze_long_lived", freeze)
    p2 = m.port("p2", ["10.0.0.2"], ["sg1"])
    await a.process([item("port.create.end", {"port": p2})])
    await b.process([item("port.update.end", {"port": {**p2, "revision_number": 2}})])
    assert frozen == []  # an ordinary catch-up: nothing new that lives long
    a.inventory.clear()  # a re-sync replaces the inventory as a whole
    a.inventory.put_group(SecurityGroup("sg2", "p1"))
    await a.store.replace_inventory(a.inventory)
    await b.process([item("port.update.end", {"port": {**p2, "revision_number": 3}})])
    assert frozen == [{"sg2"}]  # frozen once, after the reload and before the next change
    for d in (a, b):
        await d.store.close()


def test_only_batches_that_may_hold_a_handled_event_take_the_inventory_lock():
    ignored = item("network.create.end", {"network": {"id": "n"}})
    handled = item("port.update.end", {"port": m.port("p", ["10.0.0.1"], [])})
    escaped = Item(b'{"event_type": "\\u0070ort.update.end"}')
    assert not might_change_inventory([ignored, ignored])
    assert might_change_inventory([ignored, handled])
    assert might_change_inventory([escaped])
    # recognised on arrival, kept without its body
    arrived = Item(b"", "amqp", "rabbit-1", ignored="network.create.end")
    assert not might_change_inventory([arrived, ignored, arrived])
    assert might_change_inventory([arrived, handled])


async def test_one_instance_at_a_time_delivers_to_a_sink_and_a_dead_ones_lease_runs_out(url):
    store = Store(url)
    await store.migrate()
    records = [{"record_id": f"00000000-0000-0000-0000-{i:012d}", "record_type": "change"}
               for i in range(1, 7)]  # fmt: skip
    await store.commit(Batch(records=records[:3]))
    first, second = ListSink("hec:shared"), ListSink("hec:shared")
    a = Outbox(store, [first], instance="osel-a", lease_seconds=60)
    b = Outbox(store, [second], instance="osel-b", lease_seconds=60)
    assert await a.drain_once(first) == 3
    assert await b.drain_once(second) == 0  # a holds the lease
    assert "hec:shared" in a.holding and "hec:shared" not in b.holding
    await store.commit(Batch(records=records[3:5]))
    assert await b.drain_once(second) == 0 and await a.drain_once(first) == 2
    # a dies holding the lease: b takes over once it has run out, from a's cursor
    c = t.sink_cursors
    async with store.engine.begin() as conn:  # what 60 s of silence from a would do
        await conn.execute(update(c).values(lease_until=utcnow() - timedelta(seconds=1)))
    await store.commit(Batch(records=records[5:]))
    assert await b.drain_once(second) == 1
    assert first.got == [r["record_id"] for r in records[:5]]
    assert second.got == [records[5]["record_id"]]
    # a comes back (its clock moved on too): it stands by, and cannot move the cursor
    a._renew_at.clear()
    assert await a.drain_once(first) == 0 and "hec:shared" not in a.holding
    assert not await store.advance_cursor("hec:shared", "osel-a", 99, 60)
    assert await store.cursor("hec:shared") == 6
    # b stops cleanly: it gives the lease back and a goes on at once
    await b.release()
    assert (await store.sink_owner("hec:shared"))[0] is None
    assert await a.drain_once(first) == 0 and "hec:shared" in a.holding
    await store.close()


async def test_a_record_committed_later_never_gets_a_lower_id():
    """PostgreSQL: two instances commit records at the same time. The second waits for
    the first to commit, so a sink cursor can never pass a record still in flight."""
    with postgres_database() as url:
        store = Store(url)
        await store.migrate()
        now = utcnow()

        def row(n: int) -> dict[str, Any]:
            return _record_row(
                {"record_id": f"00000000-0000-0000-0000-{n:012d}", "record_type": "change"}, now
            )

        async with store.engine.connect() as first:
            await first.execute(insert(t.audit_records), [row(1)])  # in flight, uncommitted
            later = {"record_id": "00000000-0000-0000-0000-000000000002", "record_type": "change"}
            second = asyncio.create_task(store.commit(Batch(records=[later])))
            await asyncio.sleep(0.5)
            assert not second.done()  # waits for the first to commit
            await first.commit()
        await asyncio.wait_for(second, 10)
        async with store.engine.connect() as conn:
            ids = list(
                await conn.execute(
                    select(t.audit_records.c.record_uuid).order_by(t.audit_records.c.id)
                )
            )
        assert [r[0][-1] for r in ids] == ["1", "2"]
        await store.close()
