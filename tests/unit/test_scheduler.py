"""The scan scheduler: coalescing, risk order, the launch intent, reconciliation after a
crash, throttling, errors that wait for a fix, the cool-down, following scans to the end."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from osel.backoff import BackoffPolicy
from osel.decide import Decision, Target
from osel.scan_backend import (
    ERROR,
    FINISHED,
    HELD,
    LAUNCHED,
    LAUNCHING,
    QUEUED,
    RUNNING,
    SKIPPED,
    AuthFailed,
    DryRunBackend,
    LaunchResult,
    Rejected,
    ScanBackend,
    ScanBatch,
    ScanStatus,
    Throttled,
    Unavailable,
)
from osel.scheduler import Scheduler, link, plan
from osel.store import tables as t
from osel.store.store import Batch, Store, utcnow
from tests.pg import postgres_database

FAST = BackoffPolicy(initial=0.01, cap=0.05)
SSH = {"protocol": "tcp", "port_range_min": 22, "port_range_max": 22, "remote": "0.0.0.0/0"}


class Crash(BaseException):
    """Stands for a SIGKILL: nothing after it runs."""


@dataclass
class Remote:
    """The scanner's side, shared by the backends of successive 'processes'."""

    titles: dict[str, str] = field(default_factory=dict)  # title -> reference
    launches: list[str] = field(default_factory=list)  # titles, in order
    status: dict[str, ScanStatus] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def start(self, batch: ScanBatch) -> str:
        ref = f"scan/{len(self.launches) + 1}.1"
        self.titles[batch.title] = ref
        self.launches.append(batch.title)
        self.status[ref] = ScanStatus(ref, LAUNCHED, "Queued")
        return ref

    def set(self, ref: str, state: str, backend_state: str, error: str = "") -> None:
        self.status[ref] = ScanStatus(ref, state, backend_state, error)


class FakeBackend:
    name = "fake"
    follows = True
    lease_seconds = 0.0

    def __init__(self, remote: Remote | None = None, *, store: Store | None = None) -> None:
        self.remote = remote or Remote()
        self.outcomes: list[BaseException | str] = []  # next launches: raise, or "crash-after"
        self.refuse: dict[str, str] = {}
        self.wait = 0.0
        self.calls: list[tuple[str, str]] = []
        self.store = store
        self.rows_at_launch: list[Any] = []
        self.result_outcomes: list[Exception] = []  # next result fetches raise these

    async def launch_wait(self) -> float:
        return self.wait

    async def launch(self, batch: ScanBatch) -> LaunchResult:
        self.calls.append(("launch", batch.id))
        if self.store is not None:
            sb = t.scan_batches
            async with self.store.engine.connect() as conn:
                row = (await conn.execute(select(sb).where(sb.c.id == batch.id))).one()
            self.rows_at_launch.append(row)
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if isinstance(outcome, BaseException):
            raise outcome
        ref = self.remote.start(batch)
        if outcome == "crash-after":
            raise Crash()
        refused = {a: self.refuse[a] for a in batch.addresses if a in self.refuse}
        return LaunchResult(LAUNCHED, ref, scan_id="1", address_errors=refused)

    async def find(self, batch: ScanBatch, since: datetime) -> ScanStatus | None:
        self.calls.append(("find", batch.id))
        ref = self.remote.titles.get(batch.title)
        return self.remote.status[ref] if ref else None

    async def status(self, scans: Sequence[tuple[str, datetime | None]]) -> dict[str, ScanStatus]:
        self.calls.append(("status", ",".join(r for r, _ in scans)))
        return {r: self.remote.status[r] for r, _ in scans if r in self.remote.status}

    async def results(self, reference: str) -> dict[str, Any]:
        self.calls.append(("results", reference))
        if self.result_outcomes:
            raise self.result_outcomes.pop(0)
        return self.remote.results.get(reference, {})

    async def close(self) -> None:
        return None


def scheduler(store: Store, backend: ScanBackend, **over: Any) -> Scheduler:
    values: dict[str, Any] = {
        "window_seconds": 0,
        "max_targets": 500,
        "instance": "osel-test",
        "backoff": FAST,
        **over,
    }
    return Scheduler(store, backend, **values)


async def changes(
    store: Store, *targets: tuple[str, int], opened: list[dict[str, Any]] | None = None
) -> list[str]:
    """Commit one change record (and its scan target) per (address, priority)."""
    batch = Batch()
    ids = []
    for address, priority in targets:
        rid, mid = str(uuid.uuid4()), str(uuid.uuid4())
        body = {
            "source_type": "osel2.0",
            "record_type": "change",
            "record_id": rid,
            "change_type": "sg_rule_add",
            "message_id": mid,
            "affected_ip_address": address,
            "project_id": "p1",
            "internet_exposed": priority < 2,
            "opened": opened if opened is not None else [SSH],
            "closed": [],
            "scan_state": "queued",
            "qualys_scan_id": "",
            "qualys_scan_error": "",
            "scan_batch_id": "",
        }
        target = Target(address, rid, mid, priority, priority < 2)
        batch.decisions.append(Decision(records=[body], targets=[target]))
        ids.append(rid)
    await store.commit(batch)
    return ids


async def scan_records(store: Store) -> list[dict[str, Any]]:
    return [r for r in await store.tail(10_000) if r["record_type"] == "scan"]


async def change_records(store: Store) -> dict[str, dict[str, Any]]:
    return {r["record_id"]: r for r in await store.tail(10_000) if r["record_type"] == "change"}


async def batch_rows(store: Store) -> list[Any]:
    sb = t.scan_batches
    async with store.engine.connect() as conn:
        return list(await conn.execute(select(sb).order_by(sb.c.created_at)))


# --------------------------------------------------------------------------- pure parts


@dataclass
class T:
    id: int
    address: str
    priority: int


def test_plan_dedupes_keeps_the_most_urgent_orders_by_risk_and_splits():
    targets = [T(1, "a", 3), T(2, "b", 0), T(3, "c", 1), T(4, "a", 0), T(5, "d", 2)]
    groups = plan(targets, 2)
    assert [[x.address for x in g] for g in groups] == [["b", "a"], ["c", "d"]]


def test_link_says_which_opened_ports_were_found_open_and_vulnerable():
    change = {
        "record_id": "r1",
        "affected_ip_address": "198.51.100.7",
        "opened": [{"protocol": "tcp", "port_range_min": 20, "port_range_max": 25}],
        "closed": [{"protocol": "any", "port_range_min": 0, "port_range_max": 65535}],
    }
    host = {
        "ip_status": "host scanned, found vuln",
        "open": ["tcp/22", "tcp/80", "udp/161"],
        "ports": {
            "tcp/22": {"max_severity": 3, "vulnerabilities": 1, "qids": ["1"]},
            "tcp/80": {"max_severity": 2, "vulnerabilities": 1, "qids": ["2"]},
        },
    }
    result = link(change, host)
    assert result["found_open"] == ["tcp/22"]
    assert result["found_vulnerable"] == [
        {"port": "tcp/22", "max_severity": 3, "vulnerabilities": 1, "qids": ["1"]}
    ]
    assert result["still_open"] == ["tcp/22", "tcp/80", "udp/161"]
    assert result["reported"] is True
    assert link(change, None)["reported"] is False
    six = {**change, "opened": [{"protocol": "6", "port_range_min": 22, "port_range_max": 22}]}
    assert link(six, host)["found_open"] == ["tcp/22"]


# --------------------------------------------------------------------------- launching


async def test_dry_run_batches_are_queued_then_launched(store: Store):
    ids = await changes(store, ("203.0.113.5", 0), ("10.0.0.5", 2))
    sched = scheduler(store, DryRunBackend())
    (batch,) = await sched.tick()
    assert sorted(batch.addresses) == ["10.0.0.5", "203.0.113.5"]
    assert [r["scan_state"] for r in await scan_records(store)] == [QUEUED, LAUNCHED]
    learned = await change_records(store)
    assert {learned[i]["scan_state"] for i in ids} == {LAUNCHED}
    assert {learned[i]["scan_batch_id"] for i in ids} == {batch.id}
    assert await sched.follow() == 0  # nothing to follow with the dry run
    assert await sched.tick() == []


async def test_the_most_exposed_batches_launch_first(store: Store):
    await changes(store, ("10.0.0.9", 3), ("203.0.113.1", 1), ("203.0.113.2", 0), ("10.0.0.8", 2))
    backend = FakeBackend()
    sched = scheduler(store, backend, max_targets=1)
    formed = await sched.tick()
    assert [b.addresses for b in formed] == [
        ["203.0.113.2"],
        ["203.0.113.1"],
        ["10.0.0.8"],
        ["10.0.0.9"],
    ]
    assert [b.id for _, b in zip(backend.calls, formed, strict=True)] == [
        bid for kind, bid in backend.calls
    ]


async def test_the_launch_intent_is_committed_before_the_call(store: Store):
    await changes(store, ("203.0.113.5", 0))
    backend = FakeBackend(store=store)
    await scheduler(store, backend).tick()
    (row,) = backend.rows_at_launch
    assert (row.state, row.in_doubt, row.launch_attempts, row.owner) == (
        LAUNCHING,
        True,
        1,
        "osel-test",
    )
    (after,) = await batch_rows(store)
    assert (after.state, after.in_doubt, after.reference) == (LAUNCHED, False, "scan/1.1")


async def test_a_crash_before_the_launch_reached_the_backend_relaunches_once(store: Store):
    await changes(store, ("203.0.113.5", 0))
    remote = Remote()
    first = FakeBackend(remote)
    first.outcomes = [Crash()]
    with pytest.raises(Crash):
        await scheduler(store, first).tick()
    (row,) = await batch_rows(store)
    assert row.state == LAUNCHING and remote.launches == []

    second = FakeBackend(remote)  # the restarted process
    launched = await scheduler(store, second).resume()
    assert len(launched) == 1 and len(remote.launches) == 1
    assert [kind for kind, _ in second.calls] == ["find", "launch"]
    assert await scheduler(store, second).resume() == []
    assert len(remote.launches) == 1


async def test_a_crash_after_the_launch_reached_the_backend_never_launches_again(store: Store):
    ids = await changes(store, ("203.0.113.5", 0), ("203.0.113.6", 1))
    remote = Remote()
    first = FakeBackend(remote)
    first.outcomes = ["crash-after"]
    with pytest.raises(Crash):
        await scheduler(store, first).tick()
    assert len(remote.launches) == 1

    second = FakeBackend(remote)
    sched = scheduler(store, second)
    await sched.resume()
    await sched.tick()
    assert len(remote.launches) == 1
    assert [kind for kind, _ in second.calls] == ["find"]
    (row,) = await batch_rows(store)
    assert (row.state, row.reference, row.in_doubt) == (LAUNCHED, "scan/1.1", False)
    launched = [r for r in await scan_records(store) if r["scan_state"] == LAUNCHED]
    assert len(launched) == 1 and launched[0]["reconciled"] is True
    learned = await change_records(store)
    assert {learned[i]["qualys_scan_id"] for i in ids} == {"scan/1.1"}


async def test_two_instances_never_launch_one_batch_twice():
    with postgres_database() as url:
        stores = [Store(url), Store(url)]
        await stores[0].migrate()
        try:
            await changes(stores[0], *[(f"203.0.113.{i}", i % 3) for i in range(1, 9)])
            remote = Remote()
            scheds = [scheduler(s, FakeBackend(remote), max_targets=1) for s in stores]
            for _ in range(3):
                await asyncio.gather(*(s.tick() for s in scheds))
            assert len(remote.launches) == 8 == len(set(remote.launches))
            rows = await batch_rows(stores[0])
            assert len(rows) == 8 and {r.state for r in rows} == {LAUNCHED}
        finally:
            for s in stores:
                await s.close()


async def test_throttled_launches_wait_and_none_is_lost(store: Store):
    await changes(store, *[(f"203.0.113.{i}", 0) for i in range(1, 4)])
    backend = FakeBackend()
    backend.outcomes = [Throttled("rate limit", 0.05), Throttled("concurrency", 0.05)]
    sched = scheduler(store, backend, max_targets=1)
    await sched.tick()
    assert [r.state for r in await batch_rows(store)].count(QUEUED) == 3
    for _ in range(50):
        if len(backend.remote.launches) == 3:
            break
        await asyncio.sleep(0.02)
        await sched.tick()
    assert len(backend.remote.launches) == 3 == len(set(backend.remote.launches))
    assert {r["scan_state"] for r in await scan_records(store)} == {QUEUED, LAUNCHED}


async def test_while_the_budget_is_spent_nothing_is_launched(store: Store):
    await changes(store, ("203.0.113.5", 0))
    backend = FakeBackend()
    backend.wait = 30.0
    sched = scheduler(store, backend)
    await sched.tick()
    assert backend.calls == [] and (await batch_rows(store))[0].state == QUEUED
    backend.wait = 0.0
    await sched.tick()
    assert len(backend.remote.launches) == 1


@pytest.mark.parametrize("maybe_done", [True, False])
async def test_a_launch_without_an_answer_is_reconciled_before_any_relaunch(
    store: Store, maybe_done: bool
):
    await changes(store, ("203.0.113.5", 0))
    backend = FakeBackend()
    backend.outcomes = [Unavailable("no answer", maybe_done=maybe_done)]
    sched = scheduler(store, backend)
    await sched.tick()
    (row,) = await batch_rows(store)
    assert row.state == (LAUNCHING if maybe_done else QUEUED) and row.attempts == 1
    for _ in range(100):
        if backend.remote.launches:
            break
        await asyncio.sleep(0.01)
        await sched.advance()
    kinds = [kind for kind, _ in backend.calls]
    assert kinds == (["launch", "find", "launch"] if maybe_done else ["launch", "launch"])
    assert len(backend.remote.launches) == 1


async def test_bad_credentials_one_error_per_batch_and_the_batches_wait_for_a_fix(
    store: Store, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="osel.scheduler")
    ids = await changes(store, *[(f"203.0.113.{i}", 0) for i in range(1, 4)])
    backend = FakeBackend()
    reason = "Qualys refuses the login of qualys.username 'osel' (HTTP 401, code 2000)"
    backend.outcomes = [AuthFailed(reason)]
    sched = scheduler(store, backend, max_targets=1)
    await sched.tick()
    for _ in range(3):
        await sched.tick()
        assert await sched.follow() == 0
    assert backend.calls[:1] == [("launch", backend.calls[0][1])] and len(backend.calls) == 1
    rows = await batch_rows(store)
    assert {(r.state, r.error) for r in rows} == {(QUEUED, reason)}
    errors = [r for r in await scan_records(store) if r["scan_state"] == ERROR]
    assert sorted(r["scan_batch_id"] for r in errors) == sorted(r.id for r in rows)
    assert all(r["qualys_scan_error"] == reason for r in errors)
    for row in rows:
        lines = [m for m in caplog.messages if row.id in m]
        assert len(lines) == 1 and "configuration" in lines[0]
    assert sum("no scan is launched" in m for m in caplog.messages) == 1
    learned = await change_records(store)
    assert {learned[i]["qualys_scan_error"] for i in ids} == {reason}

    fixed = FakeBackend(backend.remote)  # restarted with a fixed configuration
    launched = await scheduler(store, fixed, max_targets=1).resume()
    assert len(launched) == 3 and len(fixed.remote.launches) == 3
    learned = await change_records(store)
    assert {learned[i]["scan_state"] for i in ids} == {LAUNCHED}
    assert all(learned[i]["qualys_scan_error"] == "" for i in ids)


async def test_a_batch_refused_for_its_own_reason_is_held_until_the_next_start(store: Store):
    await changes(store, ("203.0.113.1", 0), ("203.0.113.2", 1))
    backend = FakeBackend()
    backend.outcomes = [Rejected("Qualys refused launching a scan (HTTP 400, code 1905)")]
    sched = scheduler(store, backend, max_targets=1)
    await sched.tick()
    await sched.tick()
    states = {r.addresses: (r.state, r.error) for r in await batch_rows(store)}
    assert states['["203.0.113.1"]'][0] == HELD and "1905" in states['["203.0.113.1"]'][1]
    assert states['["203.0.113.2"]'][0] == LAUNCHED  # the others go on
    assert len(backend.remote.launches) == 1
    assert await scheduler(store, FakeBackend(backend.remote), max_targets=1).resume()
    assert {r.state for r in await batch_rows(store)} == {LAUNCHED}


async def test_addresses_refused_by_the_backend_are_recorded_per_address(store: Store):
    ids = await changes(store, ("203.0.113.1", 0), ("2001:db8::7", 0))
    backend = FakeBackend()
    backend.refuse = {"2001:db8::7": "IPv6 scanning is not enabled for this subscription"}
    await scheduler(store, backend).tick()
    (launched,) = [r for r in await scan_records(store) if r["scan_state"] == LAUNCHED]
    assert launched["address_errors"] == backend.refuse
    learned = await change_records(store)
    assert learned[ids[0]]["scan_state"] == LAUNCHED
    assert learned[ids[1]]["scan_state"] == ERROR
    assert "IPv6" in learned[ids[1]]["qualys_scan_error"]


async def test_the_cooldown_skips_recently_scanned_addresses_and_says_why(store: Store):
    await changes(store, ("203.0.113.1", 0))
    backend = FakeBackend()
    sched = scheduler(store, backend, cooldown_minutes=30)
    await sched.tick()
    again, fresh = await changes(store, ("203.0.113.1", 0), ("203.0.113.2", 0))
    await sched.tick()
    rows = {
        r.state: r
        for r in await batch_rows(store)
        if r.state != LAUNCHED or r.reference != "scan/1.1"
    }
    assert json.loads(rows[SKIPPED].addresses) == ["203.0.113.1"]
    assert json.loads(rows[LAUNCHED].addresses) == ["203.0.113.2"]
    reasons = json.loads(rows[SKIPPED].address_errors)
    assert "scan/1.1" in reasons["203.0.113.1"] and "cooldown_minutes" in reasons["203.0.113.1"]
    learned = await change_records(store)
    assert learned[again]["scan_state"] == SKIPPED
    assert "cooldown" in learned[again]["qualys_scan_error"]
    assert learned[fresh]["scan_state"] == LAUNCHED
    assert len(backend.remote.launches) == 2
    skipped = [r for r in await scan_records(store) if r["scan_state"] == SKIPPED]
    assert len(skipped) == 1 and skipped[0]["change_record_ids"] == [again]


async def test_without_a_cooldown_every_change_is_scanned(store: Store):
    await changes(store, ("203.0.113.1", 0))
    backend = FakeBackend()
    sched = scheduler(store, backend)
    await sched.tick()
    await changes(store, ("203.0.113.1", 0))
    await sched.tick()
    assert len(backend.remote.launches) == 2


# --------------------------------------------------------------------------- following


async def test_scans_are_followed_to_the_end_and_results_linked_to_the_changes(store: Store):
    ids = await changes(store, ("203.0.113.1", 0), ("203.0.113.2", 0))
    backend = FakeBackend()
    sched = scheduler(store, backend)
    await sched.tick()
    assert await sched.follow() == 1  # Qualys says Queued
    assert await sched.follow() == 0  # nothing new
    backend.remote.set("scan/1.1", RUNNING, "Running")
    assert await sched.follow() == 1
    backend.remote.set("scan/1.1", FINISHED, "Finished")
    backend.remote.results["scan/1.1"] = {
        "203.0.113.1": {
            "ip_status": "host scanned, found vuln",
            "open": ["tcp/22", "tcp/80"],
            "vulnerabilities": {"3": 1},
            "ports": {"tcp/22": {"max_severity": 3, "vulnerabilities": 1, "qids": ["9"]}},
        },
        "203.0.113.2": {"ip_status": "host scanned, no vulns", "open": [], "ports": {}},
    }
    assert await sched.follow() == 1
    assert await sched.follow() == 0
    states = [(r["scan_state"], r.get("qualys_state")) for r in await scan_records(store)]
    assert states == [
        (QUEUED, None),
        (LAUNCHED, None),
        (LAUNCHED, "Queued"),
        (RUNNING, "Running"),
        (FINISHED, "Finished"),
    ]
    finished = (await scan_records(store))[-1]
    assert finished["qualys_scan_id"] == "scan/1.1"
    assert finished["vulnerabilities"] == {"3": 1}
    links = {x["address"]: x for x in finished["change_links"]}
    assert links["203.0.113.1"]["found_open"] == ["tcp/22"]
    assert links["203.0.113.1"]["found_vulnerable"][0]["max_severity"] == 3
    assert links["203.0.113.2"]["found_open"] == []
    learned = await change_records(store)
    first = learned[ids[0]]
    assert (first["qualys_scan_id"], first["scan_state"]) == ("scan/1.1", FINISHED)
    assert first["scan_result"]["found_open"] == ["tcp/22"]
    (row,) = await batch_rows(store)
    assert row.state == FINISHED and json.loads(row.summary)["hosts"]["203.0.113.1"]["open"]


@pytest.mark.parametrize(
    ("backend_state", "words"), [("Error", "in Error"), ("Canceled", "canceled")]
)
async def test_scans_ending_in_error_or_canceled_end_the_batch(
    store: Store, backend_state: str, words: str
):
    ids = await changes(store, ("203.0.113.1", 0))
    backend = FakeBackend()
    sched = scheduler(store, backend)
    await sched.tick()
    backend.remote.set("scan/1.1", ERROR, backend_state, f"the scan ended {words}")
    assert await sched.follow() == 1
    last = (await scan_records(store))[-1]
    assert last["scan_state"] == ERROR and words in last["qualys_scan_error"]
    assert (await change_records(store))[ids[0]]["scan_state"] == ERROR
    assert (await batch_rows(store))[0].finished_at is not None


async def test_results_due_are_fetched_before_spending_a_call_on_another_poll(store: Store):
    await changes(store, ("203.0.113.1", 0))
    backend = FakeBackend()
    sched = scheduler(store, backend)
    await sched.tick()
    backend.remote.set("scan/1.1", FINISHED, "Finished")
    backend.result_outcomes = [Throttled("the budget is spent", 1.0)]
    assert await sched.follow() == 0
    before = len(backend.calls)
    assert await sched.follow() == 1
    assert [kind for kind, _ in backend.calls[before:]] == ["results"]
    assert (await batch_rows(store))[0].state == FINISHED


async def test_results_that_cannot_be_fetched_finish_the_batch_with_the_reason(store: Store):
    await changes(store, ("203.0.113.1", 0))
    backend = FakeBackend()
    sched = scheduler(store, backend)
    await sched.tick()
    backend.remote.set("scan/1.1", FINISHED, "Finished")
    backend.result_outcomes = [Rejected("Qualys refused fetching the results (HTTP 400)")]
    assert await sched.follow() == 1
    (row,) = await batch_rows(store)
    assert row.state == FINISHED and "could not be fetched" in row.error
    assert "could not be fetched" in (await scan_records(store))[-1]["qualys_scan_error"]


async def test_a_scan_the_backend_stops_listing_ends_in_error_after_the_grace(store: Store):
    """A launched scan deleted in the scanner is not polled forever: missing once it is
    only warned about; a scan listed again is followed as before; missing for longer
    than missing_scan_hours, its batch ends in error and is not asked about again."""
    ids = await changes(store, ("203.0.113.1", 0))
    backend = FakeBackend()
    patient = scheduler(store, backend)  # the default: a day
    await patient.tick()
    del backend.remote.status["scan/1.1"]
    assert await patient.follow() == 0
    (row,) = await batch_rows(store)
    assert row.state == LAUNCHED and row.missing_since is not None
    backend.remote.set("scan/1.1", RUNNING, "Running")  # back in the list
    assert await patient.follow() == 1
    assert (await batch_rows(store))[0].missing_since is None  # the clock stopped

    del backend.remote.status["scan/1.1"]
    hasty = scheduler(store, backend, missing_scan_hours=1e-9)
    assert await hasty.follow() == 0  # first miss: the clock starts
    await asyncio.sleep(0.01)
    assert await hasty.follow() == 1
    (row,) = await batch_rows(store)
    assert (row.state, row.qualys_state) == (ERROR, "Not listed")
    assert row.finished_at is not None
    last = (await scan_records(store))[-1]
    assert last["scan_state"] == ERROR and "no longer lists the scan" in last["qualys_scan_error"]
    assert (await change_records(store))[ids[0]]["scan_state"] == ERROR
    polls = len(backend.calls)
    assert await hasty.follow() == 0
    assert backend.calls[polls:] == []  # nothing active is left to ask about


async def test_the_missing_scan_clock_survives_a_restart(store: Store, caplog: Any):
    """Since when a scan is missing from the backend's list is in the store: an osel
    restarted (or another instance) goes on from there, it does not start again, and
    the warning is given once."""
    await changes(store, ("203.0.113.1", 0))
    backend = FakeBackend()
    await scheduler(store, backend).tick()
    del backend.remote.status["scan/1.1"]
    caplog.set_level(logging.WARNING, logger="osel.scheduler")
    before = scheduler(store, backend, missing_scan_hours=1.0)
    assert await before.follow() == 0  # the clock starts
    assert await before.follow() == 0  # an hour has not passed
    (row,) = await batch_rows(store)
    started = row.missing_since
    assert started is not None
    assert sum("is not listed by" in r.getMessage() for r in caplog.records) == 1
    sb = t.scan_batches
    async with store.begin() as conn:  # the scan went missing two hours ago
        await conn.execute(update(sb).values(missing_since=utcnow() - timedelta(hours=2)))
    after = scheduler(store, backend, missing_scan_hours=1.0)  # a new process
    assert await after.follow() == 1
    (row,) = await batch_rows(store)
    assert (row.state, row.qualys_state) == (ERROR, "Not listed")
    assert sum("is not listed by" in r.getMessage() for r in caplog.records) == 1
