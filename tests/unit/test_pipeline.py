"""The decision pipeline end to end on a store, with Neutron faked."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import insert

from osel.model import FloatingIP, Port, Rule, SecurityGroup
from osel.pipeline import Item
from osel.store import store as store_module
from osel.store import tables
from osel.store.store import Batch
from tests import messages as m
from tests.unit.conftest import Harness


def world(h: Harness) -> None:
    n = h.neutron
    n.groups = {"sg1": SecurityGroup("sg1", "p1"), "sg2": SecurityGroup("sg2", "p1")}
    n.ports = {
        "p1": Port.from_neutron(m.port("p1", ["10.0.0.1"], ["sg1"])),
        "p2": Port.from_neutron(m.port("p2", ["10.0.0.2"], ["sg1"])),
        "p9": Port.from_neutron(m.port("p9", ["10.0.0.9"], ["sg2"])),
    }
    n.fips = {"f1": FloatingIP("f1", "203.0.113.10", "p1", "10.0.0.1", "p1")}


def by(records: list[dict[str, Any]], **match: object) -> list[dict[str, Any]]:
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


async def test_rule_add_records_every_address_of_the_group_once(harness: Harness):
    world(harness)
    rule = m.rule("sg1", rid="r1")
    stats = await harness.feed(
        m.envelope(m.notification("security_group_rule.create.end", {"security_group_rule": rule}))
    )
    records = await harness.records()
    assert stats.outcomes["recorded"] == 1
    assert sorted(r["affected_ip_address"] for r in records) == [
        "10.0.0.1",
        "10.0.0.2",
        "203.0.113.10",
    ]
    assert {r["change_type"] for r in records} == {"sg_rule_add"}
    assert all(r["internet_exposed"] and r["scan_state"] == "queued" for r in records)
    assert records[0]["security_group_rule"]["port_range_min"] == 22
    assert "10.0.0.9" not in {r["affected_ip_address"] for r in records}


async def test_redelivered_message_changes_nothing(harness: Harness):
    world(harness)
    body = m.envelope(
        m.notification("security_group_rule.create.end", {"security_group_rule": m.rule("sg1")})
    )
    await harness.feed(body)
    stats = await harness.feed(body)
    assert stats.outcomes["duplicate"] == 1
    assert len(await harness.records()) == 3


async def test_egress_rule_is_recorded_not_scanned(harness: Harness):
    world(harness)
    await harness.feed(
        m.envelope(
            m.notification(
                "security_group_rule.create.end",
                {"security_group_rule": m.rule("sg1", direction="egress")},
            )
        )
    )
    records = await harness.records()
    assert len(records) == 3
    assert all(r["scan_state"] == "skipped" and not r["internet_exposed"] for r in records)
    assert "egress" in records[0]["qualys_scan_error"]


async def test_covered_rule_is_recorded_not_rescanned_and_delete_closes_window(harness: Harness):
    world(harness)
    first = m.rule("sg1", rid="r1")
    narrower = m.rule("sg1", rid="r2", remote="198.51.100.0/24")
    for payload in ({"security_group_rule": first}, {"security_group_rule": narrower}):
        await harness.feed(m.envelope(m.notification("security_group_rule.create.end", payload)))
    records = await harness.records()
    second = [r for r in records if r["security_group_rule"]["id"] == "r2"]
    assert len(second) == 3 and all(r["scan_state"] == "skipped" for r in second)
    await harness.feed(
        m.envelope(
            m.notification(
                "security_group_rule.delete.end",
                {"security_group_rule_id": "r1", "security_group_rule": first},
            )
        )
    )
    deleted = by(await harness.records(), change_type="sg_rule_del")
    assert sorted(r["affected_ip_address"] for r in deleted) == [
        "10.0.0.1",
        "10.0.0.2",
        "203.0.113.10",
    ]
    closed = deleted[0]["closed"][0]
    assert closed["remote"] == "0.0.0.0/0"
    assert closed["window_opened_at"] and closed["window_closed_at"]
    assert all(r["scan_state"] == "queued" for r in deleted)  # scan_on_rule_delete confirms
    assert [w.remote for w in await harness.store.open_windows("10.0.0.1")] == ["198.51.100.0/24"]


def _rule_event(event: str, rule: dict[str, Any]) -> bytes:
    payload: dict[str, Any] = {"security_group_rule": rule}
    if event.startswith("security_group_rule.delete"):
        payload["security_group_rule_id"] = rule["id"]
    return m.envelope(m.notification(event, payload))


async def test_a_window_opens_with_the_change_that_opened_its_permit(harness: Harness):
    world(harness)
    https = m.rule("sg1", rid="r0", low=443, high=443)  # in effect before osel saw it
    harness.neutron.rules = {"r0": Rule.from_neutron(https)}
    ssh = m.rule("sg1", rid="r1")
    await harness.feed(_rule_event("security_group_rule.create.end", ssh))
    # only what the change opened: HTTPS was open before, since when osel cannot know
    assert [w.port_min for w in await harness.store.open_windows("10.0.0.1")] == [22]
    await harness.feed(_rule_event("security_group_rule.delete.end", https))
    closed = by(await harness.records(), change_type="sg_rule_del", affected_ip_address="10.0.0.1")
    assert closed[0]["closed"][0]["port_range_min"] == 443
    assert closed[0]["closed"][0]["window_opened_at"] is None
    assert closed[0]["closed"][0]["window_closed_at"]
    await harness.feed(_rule_event("security_group_rule.delete.end", ssh))
    records = by(await harness.records(), change_type="sg_rule_del", affected_ip_address="10.0.0.1")
    ssh_closed = [r["closed"][0] for r in records if r["closed"][0]["port_range_min"] == 22]
    opened = by(await harness.records(), change_type="sg_rule_add", affected_ip_address="10.0.0.1")
    assert ssh_closed[0]["window_opened_at"] == opened[0]["timestamp"]
    assert await harness.store.open_windows("10.0.0.1") == []


async def test_two_open_windows_of_one_permit_close_together(harness: Harness):
    """Two instances that open one permit at one moment each insert its window; the
    permit's end closes both, and the record learns the earlier opening."""
    world(harness)
    ssh = m.rule("sg1", rid="r1")
    await harness.feed(_rule_event("security_group_rule.create.end", ssh))
    (window,) = await harness.store.open_windows("10.0.0.1")
    w = tables.exposure_windows
    async with harness.store.begin() as conn:
        await conn.execute(
            insert(w).values(
                address="10.0.0.1", protocol="tcp", port_min=22, port_max=22,
                remote="0.0.0.0/0", internet_exposed=True, rule_id="r1",
                security_group_id="sg1", opened_at="2999-01-01T00:00:00.000000Z",
                opened_record=window.opened_record,
            )
        )  # fmt: skip
    assert len(await harness.store.open_windows("10.0.0.1")) == 2
    await harness.feed(_rule_event("security_group_rule.delete.end", ssh))
    assert await harness.store.open_windows("10.0.0.1") == []
    (deleted,) = by(
        await harness.records(), change_type="sg_rule_del", affected_ip_address="10.0.0.1"
    )
    assert deleted["closed"][0]["window_opened_at"] == window.opened_at


async def test_a_commit_naming_many_lowest_ports_reads_every_window_of_its_addresses(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(store_module, "_WINDOW_PORTS_READ", 2)  # a backlog's commit
    world(harness)
    rules = [m.rule("sg1", rid=f"r{i}", low=1000 + i, high=1000 + i) for i in range(5)]
    await harness.feed(*(_rule_event("security_group_rule.create.end", r) for r in rules))
    await harness.feed(*(_rule_event("security_group_rule.create.end", r) for r in rules[:3]))
    windows = await harness.store.open_windows("10.0.0.1")
    assert sorted(w.port_min for w in windows) == [1000, 1001, 1002, 1003, 1004]  # once each
    await harness.feed(*(_rule_event("security_group_rule.delete.end", r) for r in rules))
    assert await harness.store.open_windows("10.0.0.1") == []
    deleted = by(await harness.records(), change_type="sg_rule_del", affected_ip_address="10.0.0.1")
    assert sorted(r["closed"][0]["window_opened_at"] for r in deleted) == sorted(
        w.opened_at for w in windows
    )


async def test_icehouse_delete_with_only_the_id_uses_the_inventory(harness: Harness):
    world(harness)
    rule = m.rule("sg1", rid="r1")
    await harness.feed(
        m.bare(
            m.notification(
                "security_group_rule.create.end", {"security_group_rule": rule}, icehouse=True
            )
        )
    )
    harness.neutron.rules.clear()  # gone from Neutron: only osel's inventory knows it
    await harness.feed(
        m.bare(
            m.notification(
                "security_group_rule.delete.end",
                {"security_group_rule_id": "r1"},
                icehouse=True,
                project="tenant-x",
            )
        )
    )
    deleted = by(await harness.records(), change_type="sg_rule_del")
    assert len(deleted) == 3
    assert deleted[0]["security_group_rule"]["port_range_min"] == 22
    assert deleted[0]["project_id"] == "p1"


async def test_bulk_rule_create_gives_a_change_per_rule(harness: Harness):
    world(harness)
    rules = [m.rule("sg1", low=80, high=80), m.rule("sg1", low=443, high=443)]
    stats = await harness.feed(
        m.envelope(
            m.notification("security_group_rule.create.end", {"security_group_rules": rules})
        )
    )
    assert stats.changes["sg_rule_add"] == 2
    assert len(await harness.records()) == 6


async def test_fip_associate_and_port_joining_group(harness: Harness):
    world(harness)
    await harness.feed(
        m.envelope(
            m.notification("security_group_rule.create.end", {"security_group_rule": m.rule("sg1")})
        )
    )
    harness.neutron.ports["p3"] = Port.from_neutron(m.port("p3", ["10.0.0.3"], ["sg1"]))
    await harness.feed(
        m.envelope(
            m.notification(
                "floatingip.update.end",
                {"floatingip": m.fip("f3", "203.0.113.30", "p3", "10.0.0.3")},
            )
        )
    )
    fip_records = by(await harness.records(), change_type="fip_associate")
    assert [r["affected_ip_address"] for r in fip_records] == ["203.0.113.30"]
    assert fip_records[0]["scan_state"] == "queued" and fip_records[0]["opened"]
    # a fourth port, created elsewhere, joins the group
    await harness.feed(
        m.envelope(m.notification("port.create.end", {"port": m.port("p4", ["10.0.0.4"], ["sg2"])}))
    )
    await harness.feed(
        m.envelope(
            m.notification("port.update.end", {"port": m.port("p4", ["10.0.0.4"], ["sg1", "sg2"])})
        )
    )
    updates = by(await harness.records(), change_type="port_update")
    assert [r["affected_ip_address"] for r in updates] == ["10.0.0.4"]
    assert updates[0]["opened"][0]["port_range_min"] == 22


async def test_port_update_that_changes_nothing_relevant_is_not_recorded(harness: Harness):
    world(harness)
    await harness.feed(
        m.envelope(
            m.notification("security_group_rule.create.end", {"security_group_rule": m.rule("sg1")})
        )
    )
    before = len(await harness.records())
    data = m.port("p1", ["10.0.0.1"], ["sg1"], status="ACTIVE", revision_number=2)
    stats = await harness.feed(m.envelope(m.notification("port.update.end", {"port": data})))
    assert stats.outcomes["no_change"] == 1
    assert len(await harness.records()) == before


async def test_port_security_disabled_is_fully_exposed(harness: Harness):
    world(harness)
    await harness.feed(
        m.envelope(
            m.notification(
                "port.create.end",
                {"port": m.port("p5", ["10.0.0.5"], [], port_security_enabled=False)},
            )
        )
    )
    (record,) = await harness.records()
    assert record["change_type"] == "port_create"
    assert record["opened"][0]["protocol"] == "any" and record["internet_exposed"]


async def test_remote_group_rule_is_not_internet_exposed(harness: Harness):
    world(harness)
    await harness.feed(
        m.envelope(
            m.notification(
                "security_group_rule.create.end",
                {"security_group_rule": m.rule("sg1", remote=None, remote_group="sg1")},
            )
        )
    )
    records = await harness.records()
    assert records and not any(r["internet_exposed"] for r in records)


async def test_allowed_address_pairs_are_affected_addresses(harness: Harness):
    world(harness)
    harness.neutron.ports["p1"] = Port.from_neutron(
        m.port("p1", ["10.0.0.1"], ["sg1"], allowed_address_pairs=[{"ip_address": "10.0.0.100"}])
    )
    await harness.feed(
        m.envelope(
            m.notification("security_group_rule.create.end", {"security_group_rule": m.rule("sg1")})
        )
    )
    assert "10.0.0.100" in {r["affected_ip_address"] for r in await harness.records()}


async def test_bad_input_is_quarantined_and_other_events_ignored(harness: Harness):
    stats = await harness.feed(
        b"not json",
        b"\xff\xfe",
        m.envelope(m.notification("network.create.end", {"network": {}})),
        m.envelope(
            m.notification("security_group_rule.create.end", {"security_group_rule": "oops"})
        ),
    )
    assert stats.outcomes == {"quarantined": 3, "ignored": 1}
    rows = await harness.store.quarantine_list()
    assert len(rows) == 3 and any("not JSON" in r.reason for r in rows)


async def test_what_the_source_recognised_is_counted_without_its_body(harness: Harness):
    """A delivery the AMQP source recognised on arrival (`Pipeline.recognise`) comes
    without its body: it is counted as ignored under the event type it was given."""
    world(harness)
    network = m.envelope(m.notification("network.create.end", {"network": {}}))
    rule = m.envelope(
        m.notification(
            "security_group_rule.create.end", {"security_group_rule": m.rule("sg1", rid="r1")}
        )
    )
    p = harness.pipeline
    assert p.recognise(network) == "network.create.end"
    assert p.recognise(rule) is None  # a handled type: decoded
    assert p.recognise(b"not json") is None  # decode says what is wrong with it
    kept = Item(b"", "amqp", "broker-1", ignored=p.recognise(network))
    batch = Batch()
    stats = await p.process([kept, Item(rule, "amqp", "broker-1")], batch)
    assert stats.outcomes == {"ignored": 1, "recorded": 1}
    assert stats.by_event[("network.create.end", "ignored")] == 1
    assert not batch.quarantined  # an empty body was not decoded


async def test_recognised_deliveries_are_counted_apart_and_the_rest_keep_their_order(
    harness: Harness,
):
    """Deliveries recognised as ignored are counted in bulk by event type; the messages
    between them are handled in the order they came."""
    world(harness)
    p = harness.pipeline

    def ignored(event_type: str) -> Item:
        return Item(b"", "amqp", "broker-1", ignored=event_type)

    def rule(rid: str) -> Item:
        return Item(
            m.envelope(
                m.notification(
                    "security_group_rule.create.end",
                    {"security_group_rule": m.rule("sg1", rid=rid, low=20 + len(rid))},
                )
            )
        )

    items = [ignored("port.create.start"), rule("r1"), ignored("network.create.end"),
             ignored("port.create.start"), rule("r22"), Item(b"not json")]  # fmt: skip
    batch = Batch()
    stats = await p.process(items, batch)
    assert stats.outcomes == {"ignored": 3, "recorded": 2, "quarantined": 1}
    assert stats.by_event[("port.create.start", "ignored")] == 2
    assert stats.by_event[("network.create.end", "ignored")] == 1
    changes = [r for d in batch.decisions for r in d.records if r["record_type"] == "change"]
    # one change record per address of the group, the rules' in the order they came
    assert list(dict.fromkeys(r["security_group_rule"]["id"] for r in changes)) == ["r1", "r22"]
    assert len(batch.quarantined) == 1


async def test_neutron_down_defers_and_keeps_order(harness: Harness):
    world(harness)
    harness.neutron.down = True
    first = m.envelope(
        m.notification("security_group_rule.create.end", {"security_group_rule": m.rule("sg1")})
    )
    second = m.envelope(
        m.notification("floatingip.update.end", {"floatingip": m.fip("f1", "203.0.113.10", None)})
    )
    stats = await harness.feed(first, second)
    assert stats.outcomes["deferred"] == 2
    assert await harness.store.deferred_count() == 2
    assert await harness.records() == []


def test_rule_from_neutron_keeps_fields():
    r = Rule.from_neutron(m.rule("sg", proto="TCP", low=None, high=None))
    assert r.protocol == "tcp" and r.port_range_min is None


async def test_resync_records_what_no_notification_reported(harness: Harness):
    from osel.decide import decide
    from osel.resync import RESYNC_EVENT, load_snapshot, reconcile

    world(harness)
    load_snapshot(await harness.neutron.snapshot(), harness.inventory)
    # behind osel's back: a rule opens SSH, and a port leaves the group
    harness.neutron.rules["rx"] = Rule("rx", "sg1", "ingress", "IPv4", "tcp", 22, 22, "0.0.0.0/0")
    changes = await reconcile(
        await harness.neutron.snapshot(),
        harness.inventory,
        harness.pipeline.resolver,
        now="2026-11-28 05:00:00",
    )
    assert [c.change_type for c in changes] == ["sg_rule_add"]
    records = decide(changes[0], harness.pipeline.rules, instance="i", broker="").records
    assert {r["event_type"] for r in records} == {RESYNC_EVENT}
    assert sorted(r["affected_ip_address"] for r in records) == [
        "10.0.0.1",
        "10.0.0.2",
        "203.0.113.10",
    ]
    del harness.neutron.rules["rx"]
    again = await reconcile(
        await harness.neutron.snapshot(),
        harness.inventory,
        harness.pipeline.resolver,
        now="2026-11-28 05:10:00",
    )
    assert [c.change_type for c in again] == ["sg_rule_del"]
    assert (
        await reconcile(
            await harness.neutron.snapshot(),
            harness.inventory,
            harness.pipeline.resolver,
            now="2026-11-28 05:20:00",
        )
        == []
    )
