"""The daemon's loops with an in-memory source and a fake Neutron."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from osel import memory
from osel.backoff import BackoffPolicy
from osel.config import Settings
from osel.daemon import Daemon
from osel.model import FloatingIP, Port, SecurityGroup
from osel.store import queries
from tests import messages as m
from tests.fakes import FakeNeutron, FakeSource


def settings(tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "scan": {"backend": "dry-run", "window_seconds": 0},
            "store": {"url": f"sqlite:///{tmp_path}/osel.db"},
            "audit": {"sinks": [{"type": "file", "path": str(tmp_path / "audit.jsonl")}]},
            "openstack": {"resync_minutes": 0},
            "http": {"enabled": False},
        }
    )


# tcp/22 from anywhere added to sg1: two addresses exposed
SSH_RULE_ADDED = m.envelope(
    m.notification(
        "security_group_rule.create.end", {"security_group_rule": m.rule("sg1", rid="r1")}
    )
)


def neutron_world() -> FakeNeutron:
    n = FakeNeutron()
    n.groups = {"sg1": SecurityGroup("sg1", "p1")}
    n.ports = {"p1": Port.from_neutron(m.port("p1", ["10.0.0.1"], ["sg1"]))}
    n.fips = {"f1": FloatingIP("f1", "203.0.113.10", "p1", "10.0.0.1", "p1")}
    return n


async def wait_for(predicate) -> None:
    """Poll a condition on state another task changes (10 s at most)."""
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 - the state has no event to wait on
            await asyncio.sleep(0.05)


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


async def test_changes_wait_for_neutron_in_order_and_are_acked_at_once(tmp_path: Path):
    neutron = neutron_world()
    neutron.down = True
    source = FakeSource()
    daemon = Daemon(
        settings(tmp_path),
        neutron=neutron,
        source=source,
        backoff=BackoffPolicy(initial=0.05, cap=0.2),
    )
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    source.publish(SSH_RULE_ADDED)
    source.publish(
        m.envelope(
            m.notification(
                "floatingip.update.end", {"floatingip": m.fip("f1", "203.0.113.10", None)}
            )
        )
    )
    await wait_for(lambda: source.acked == 2)  # kept in the store, so the broker can let go
    assert await daemon.store.deferred_count() == 2 and audit(tmp_path) == []
    neutron.down = False
    await wait_for(lambda: len([r for r in audit(tmp_path) if r["record_type"] == "change"]) == 3)
    changes = [r["change_type"] for r in audit(tmp_path) if r["record_type"] == "change"]
    assert changes == ["sg_rule_add", "sg_rule_add", "fip_disassociate"]
    # the retry loop ends deferral on its next round, once it finds the table empty: the
    # records may reach the sink before that
    await wait_for(lambda: not daemon.pipeline.deferring)
    assert await daemon.store.deferred_count() == 0
    stop.set()
    assert await runner == 0


async def test_a_failed_commit_acks_nothing_and_rebuilds_the_inventory(tmp_path: Path):
    source = FakeSource()
    daemon = Daemon(
        settings(tmp_path),
        neutron=neutron_world(),
        source=source,
        backoff=BackoffPolicy(initial=0.05, cap=0.1),
    )
    await daemon.prepare()
    real_commit = daemon.store.commit
    calls = 0

    async def flaky(batch):  # the first commit fails, as a full disk would
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk full")
        await real_commit(batch)

    daemon.store.commit = flaky  # type: ignore[method-assign]
    reloads = 0
    real_reload = daemon._reload_inventory

    async def spy() -> None:
        nonlocal reloads
        reloads += 1
        await real_reload()
        assert "r1" not in daemon.inventory.rules  # the failed batch's effects are gone

    daemon._reload_inventory = spy  # type: ignore[method-assign]
    stop = asyncio.Event()
    consumer = asyncio.create_task(daemon.consume(stop))
    source.publish(SSH_RULE_ADDED)
    await wait_for(lambda: source.acked == 2)  # returned (tag 1), redelivered (tag 2), done
    assert source.nacked == [1] and reloads == 1
    records = await daemon.store.tail(100)
    assert len([r for r in records if r["record_type"] == "change"]) == 2  # once, not twice
    stop.set()
    await consumer
    await daemon.store.close()


async def test_a_poison_message_is_quarantined_after_bounded_attempts(tmp_path: Path, monkeypatch):
    from osel import handlers

    async def explode(n, inv, res):
        raise RuntimeError("a handler bug")

    monkeypatch.setitem(handlers.HANDLERS, "port.delete.end", explode)
    source = FakeSource()
    daemon = Daemon(
        settings(tmp_path),
        neutron=neutron_world(),
        source=source,
        backoff=BackoffPolicy(initial=0.01, cap=0.02),
    )
    await daemon.prepare()
    stop = asyncio.Event()
    consumer = asyncio.create_task(daemon.consume(stop))
    source.publish(m.envelope(m.notification("port.delete.end", {"port_id": "p1"})))
    source.publish(SSH_RULE_ADDED)
    rows: list[Any] = []
    async with asyncio.timeout(10):
        while not rows or "r1" not in daemon.inventory.rules:
            rows = await daemon.store.quarantine_list()
            await asyncio.sleep(0.05)
    (row,) = rows
    assert row.event_type == "port.delete.end"
    assert "handling failed 3 times: RuntimeError: a handler bug" in row.reason
    # three tries, each returning the whole batch (one or both messages) to the broker
    assert 3 <= len(source.nacked) <= 6
    stop.set()
    await consumer
    await daemon.store.close()


async def test_the_inventory_is_frozen_once_loaded_and_again_after_each_reload(
    tmp_path: Path, monkeypatch
):
    daemon = Daemon(settings(tmp_path), neutron=neutron_world(), source=FakeSource())
    frozen: list[int] = []  # how many ports the inventory held at each freeze

    def freeze() -> int:
        frozen.append(len(daemon.inventory.ports))
        return 0

    monkeypatch.setattr(memory, "freeze_long_lived", freeze)
    await daemon.prepare()
    assert frozen == [1]  # after the first start loaded the inventory from Neutron
    await daemon._reload_inventory()
    assert frozen == [1, 1]
    await daemon.store.close()


async def test_what_is_past_the_retention_is_deleted_once_delivered(tmp_path: Path, caplog):
    config = settings(tmp_path).model_copy(deep=True)
    half_a_second = config.store.model_copy(update={"retention_days": 0.5 / 86400})
    config = config.model_copy(update={"store": half_a_second})
    source = FakeSource()
    daemon = Daemon(config, neutron=neutron_world(), source=source)
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    source.publish(SSH_RULE_ADDED)
    # two addresses; the dry-run batch queued and launched (nothing follows it)
    await wait_for(lambda: len(audit(tmp_path)) == 4)
    sink = daemon.outbox.sinks[0].sink_id
    async with asyncio.timeout(10):
        while (await queries.sink_lag(daemon.store, [sink]))[sink]["behind"]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.6)
    caplog.set_level("INFO", logger="osel.daemon")
    await daemon.forget_old()
    rows = {
        s.labels["table"]: s.value
        for metric in daemon.metrics.pruned.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    }
    assert rows == {"audit_records": 3, "scan_batches": 1, "scan_targets": 2, "seen_messages": 1}
    assert len(await daemon.store.tail(10)) == 1  # the newest record stays
    assert len(await daemon.store.open_windows()) == 2  # still in effect
    assert "deleted what is older than store.retention_days" in caplog.text
    stop.set()
    assert await runner == 0


def role_settings(tmp_path: Path, role: str) -> Settings:
    s = settings(tmp_path)
    service = s.service.model_copy(update={"role": role, "instance_name": f"the-{role}"})
    return s.model_copy(update={"service": service})


def test_each_role_runs_its_own_loops(tmp_path: Path):
    names = {
        role: {loop.__name__ for loop in Daemon(role_settings(tmp_path, role)).loops()}
        for role in ("all", "intake", "worker")
    }
    shared = {"probe_neutron", "policy_expiry", "housekeeping"}
    assert names["intake"] == {"consume", "retry_deferred", "resync", *shared}
    assert names["worker"] == {"schedule", "follow_scans", *shared}
    assert names["all"] == names["intake"] | names["worker"]


async def test_an_intake_commits_and_a_worker_scans_and_delivers(tmp_path: Path, caplog):
    """Two daemons on one SQLite file: the intake consumes and commits, and forms no
    scan batch and delivers nothing, not even when it stops; the worker, which consumes
    nothing and loads no inventory, launches the scan and delivers the records."""
    caplog.set_level("INFO", logger="osel.daemon")
    source = FakeSource()
    intake = Daemon(role_settings(tmp_path, "intake"), neutron=neutron_world(), source=source)
    stop_intake = asyncio.Event()
    running = asyncio.create_task(intake.run(stop_intake))
    source.publish(SSH_RULE_ADDED)
    await wait_for(lambda: source.acked == 1)
    await asyncio.sleep(0.5)  # long enough for an intake that scheduled to have done it
    assert [r["scan_state"] for r in await intake.store.tail(10)] == ["queued", "queued"]
    assert await intake.scheduler.batches() == []
    stop_intake.set()  # nor does it deliver what it holds when it stops
    assert await running == 0 and audit(tmp_path) == []

    idle_source = FakeSource()  # a worker must not read it, even with amqp.enabled
    worker = Daemon(role_settings(tmp_path, "worker"), neutron=neutron_world(), source=idle_source)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await wait_for(lambda: len(audit(tmp_path)) == 4)  # 2 changes, the batch queued, launched
    assert len(worker.inventory.rules) == 0
    (batch,) = await worker.scheduler.batches()
    assert batch.state == "launched"
    delivered = audit(tmp_path)
    assert [(r["record_type"], r["osel_instance"]) for r in delivered] == [
        ("change", "the-intake"),
        ("change", "the-intake"),
        ("scan", "the-worker"),
        ("scan", "the-worker"),
    ]
    idle_source.publish(SSH_RULE_ADDED)
    await asyncio.sleep(0.3)
    assert idle_source.acked == 0 and not idle_source.queue.empty()
    stop.set()
    assert await running == 0
    said = [r.getMessage() for r in caplog.records if "running (service.role" in r.getMessage()]
    assert said == [
        "osel the-intake running (service.role intake): queue osel, store sqlite, "
        "audit sinks left to a worker",
        "osel the-worker running (service.role worker): queue not consumed, store sqlite, "
        "1 audit sink(s)",
    ]
