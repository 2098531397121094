"""Three `osel run` on one queue and one PostgreSQL store, one of them SIGKILLed midway.

20,000 notifications, 2,000 of them relevant (rule creations on a real group
with two ports), published in two halves; the instance delivering the audit
trail is killed while the second half is being handled. Every change must be
recorded once, every scan batch launched once, every record delivered.
Then an intake and a worker (`service.role`) sharing one SQLite file.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.neutron_fixtures import unique
from tests.integration.osel_process import OselProcess, Record
from tests.integration.test_resilience import (
    exactly_once,
    publish,
    relevant_ids,
    report,
    traffic,
    wait_drained,
)
from tests.pg import postgres_database

pytestmark = pytest.mark.integration


def sink_holder(osel: OselProcess) -> str | None:
    rows = osel.query("SELECT owner FROM sink_cursors")
    return str(rows[0][0]) if rows and rows[0][0] else None


def changes_by_instance(records: list[Record]) -> Counter[str]:
    return Counter(r["osel_instance"] for r in records if r["record_type"] == "change")


@pytest.mark.timeout(900)
def test_three_instances_one_killed_every_change_once_every_batch_once_every_record_out(
    group, tmp_path: Path
):
    sg_id, ips = group
    queue = unique("queue")
    audit = tmp_path / "audit.jsonl"  # one sink, shared: one instance at a time writes it
    with postgres_database() as url:
        instances = [
            OselProcess(
                tmp_path / f"osel-{n}",
                store_url=url,
                queue=queue,
                instance=f"osel-{n}",
                audit=audit,
                window_seconds=0.5,
                extra={"service": {"lease_seconds": 3}},
            )
            for n in range(3)
        ]
        try:
            for osel in instances:
                osel.start()
            first, second = traffic(sg_id, 1000), traffic(sg_id, 1000)
            bodies = first + second
            started = time.monotonic()
            publish(queue, first)
            wait_for_changes(instances[0], 300)
            # the second half flows while the instance delivering the trail is killed
            publisher = threading.Thread(target=publish, args=(queue, second))
            publisher.start()
            holder = wait_for_holder(instances[0])
            victim = instances[int(holder.rsplit("-", 1)[1])]
            time.sleep(1.0)
            victim.kill()
            killed_at_depth = instances[0].queue_depth()
            publisher.join(120)
            survivors = [o for o in instances if o is not victim]
            names = [f"osel-{n}" for n, o in enumerate(instances) if o is not victim]
            expected = relevant_ids(bodies)
            everything = wait_drained(survivors[0], expected, timeout=400)
            drained = time.monotonic() - started
            # the shared Neutron may carry other changes meanwhile: judge those of our group
            records = [
                r
                for r in everything
                if r["record_type"] == "scan" or r["affected_ip_address"] in ips
            ]
            exactly_once(records, expected, len(ips))
            launched = Counter(
                r["scan_batch_id"]
                for r in records
                if r["record_type"] == "scan" and r["scan_state"] == "launched"
            )
            assert launched and max(launched.values()) == 1  # no batch launched twice
            attempts = survivors[0].query(
                "SELECT id, launch_attempts FROM scan_batches WHERE state <> 'queued'"
            )
            assert attempts
            # killed between writing its launch intent and committing the launch, the victim
            # leaves one batch in doubt: a survivor takes it over, finds (by title) that the
            # launch never reached the backend, and launches it; nothing else launches twice
            again = [batch_id for batch_id, n in attempts if n > 1]
            assert len(again) <= 1 and max(n for _id, n in attempts) <= 2
            logs = "".join(o.log.read_text(errors="replace") for o in survivors)
            for batch_id in again:
                assert f"scan batch {batch_id}: its launch never reached" in logs
            queued = {
                r["record_id"]
                for r in records
                if r["record_type"] == "change" and r.get("scan_state") == "queued"
            }
            covered = {
                u
                for r in records
                if r["record_type"] == "scan" and r["scan_state"] == "launched"
                for u in r["change_record_ids"]
            }
            assert queued <= covered  # every queued address went into a launched batch
            by_instance = changes_by_instance(records)
            assert all(by_instance[name] > 0 for name in names)

            # every committed record reaches the shared file, handed over after the kill
            survivors[0].wait_records(lambda r: True, len(everything), timeout=120)
            in_file = {r["record_id"] for r in survivors[0].records()}
            assert {r["record_id"] for r in everything} <= in_file
            new_holder = sink_holder(survivors[0])
            assert new_holder is not None and new_holder != holder
            said = f"delivery taken over from {holder} (its lease ran out)"
            assert any(said in o.log.read_text(errors="replace") for o in survivors)
            report(
                "several_instances",
                {
                    "instances": len(instances),
                    "notifications": len(bodies),
                    "relevant": len(expected),
                    "killed": holder,
                    "queued_when_killed": killed_at_depth,
                    "changes_by_instance": dict(sorted(by_instance.items())),
                    "records": len(records),
                    "seconds_to_drain": round(drained, 1),
                    "scan_batches_launched": len(launched),
                    "records_lost": 0,
                    "duplicate_lines_in_file": len(survivors[0].records()) - len(in_file),
                    "sink_taken_over_by": new_holder,
                },
                url,
            )
        finally:
            for osel in instances:
                osel.close()


def wait_for_changes(osel: OselProcess, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = osel.query("SELECT COUNT(*) FROM audit_records WHERE record_type = 'change'")
        if done[0][0] >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} change records after {timeout}s:\n{osel.tail()}")


def wait_for_holder(osel: OselProcess, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = sink_holder(osel)
        if holder:
            return holder
        time.sleep(0.1)
    raise AssertionError(f"no instance took the audit sink's lease:\n{osel.tail()}")


@pytest.mark.timeout(600)
def test_an_intake_and_a_worker_on_one_sqlite_file(group, tmp_path: Path):
    """`service.role`: an intake that consumes and commits, a worker that scans and
    delivers, started together on a new SQLite store (one of them migrates it)."""
    sg_id, ips = group
    queue = unique("queue")
    audit = tmp_path / "audit.jsonl"
    url = f"sqlite:///{tmp_path}/osel.db"
    intake, worker = (
        OselProcess(
            tmp_path / role,
            store_url=url,
            queue=queue,
            instance=f"osel-{role}",
            audit=audit,
            window_seconds=0,
            extra={"service": {"role": role}},
        )
        for role in ("intake", "worker")
    )
    try:
        starting = threading.Thread(target=worker.start)
        starting.start()
        intake.start()
        starting.join(60)
        bodies = traffic(sg_id, 300)
        expected = relevant_ids(bodies)
        publish(queue, bodies)
        everything = wait_drained(intake, expected, timeout=300)
        records = [
            r for r in everything if r["record_type"] == "scan" or r["affected_ip_address"] in ips
        ]
        exactly_once(records, expected, len(ips))
        assert changes_by_instance(records) == Counter({"osel-intake": 2 * len(expected)})
        # every record reaches the file, delivered by the worker; every batch launched once
        worker.wait_records(lambda r: True, len(everything), timeout=120)
        assert sink_holder(worker) == "osel-worker"
        delivered = worker.records()
        assert sorted(r["record_id"] for r in delivered) == sorted(
            r["record_id"] for r in worker.store_records()
        )
        scans = [r for r in delivered if r["record_type"] == "scan"]
        assert scans and {r["osel_instance"] for r in scans} == {"osel-worker"}
        launched = Counter(r["scan_batch_id"] for r in scans if r["scan_state"] == "launched")
        assert launched and max(launched.values()) == 1
        queued = {
            r["record_id"]
            for r in records
            if r["record_type"] == "change" and r.get("scan_state") == "queued"
        }
        covered = {
            u for r in scans if r["scan_state"] == "launched" for u in r["change_record_ids"]
        }
        assert queued and queued <= covered
        assert "amqp connected" not in worker.log.read_text(errors="replace")
    finally:
        for osel in (intake, worker):
            osel.stop()
