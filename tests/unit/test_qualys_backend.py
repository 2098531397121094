"""The Qualys backend with the scheduler, against the simulator (through an httpx
transport, no socket): refused addresses, adding them, following scans, bad
credentials, bursts of 409s."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from osel.qualys.backend import QualysBackend
from osel.qualys.client import SCAN_API
from osel.scan_backend import ERROR, FINISHED, LAUNCHED, QUEUED
from osel.scheduler import Scheduler
from osel.store.store import Store
from simulators.qualys import QualysSimulator, expand
from tests.unit.test_qualys_client import FAST, PASSWORD, db, qualys_settings
from tests.unit.test_scheduler import batch_rows, change_records, changes, scan_records

__all__ = ["db"]


def simulator(**over: Any) -> QualysSimulator:
    values: dict[str, Any] = {"password": PASSWORD, "queued_seconds": 0.1, "running_seconds": 0.1}
    return QualysSimulator(**{**values, **over})


def backend(sim: QualysSimulator, store: Store, **over: Any) -> QualysBackend:
    return QualysBackend(qualys_settings(**over), store, backoff=FAST, transport=sim.transport())


def scheduler(store: Store, back: QualysBackend, **over: Any) -> Scheduler:
    values: dict[str, Any] = {"window_seconds": 0, "max_targets": 500, "instance": "t"}
    return Scheduler(store, back, backoff=FAST, **{**values, **over})


async def until(check: Any, step: Any, *, rounds: int = 200) -> None:
    for _ in range(rounds):
        if await check():
            return
        await step()
        await asyncio.sleep(0.02)
    raise AssertionError("the condition never held")


async def test_a_batch_is_launched_followed_and_linked(db: Store):
    sim = simulator(services={"203.0.113.1": [("tcp", 22), ("tcp", 80)]})
    ids = await changes(db, ("203.0.113.1", 0), ("203.0.113.2", 0), ("203.0.113.3", 1))
    back = backend(sim, db)
    sched = scheduler(db, back)
    await sched.tick()
    (call,) = sim.launches()
    assert call.params["ip"] == "203.0.113.1-203.0.113.3"
    assert call.params["scan_title"].startswith("osel ")

    async def finished() -> bool:
        return bool((await batch_rows(db))[0].state == FINISHED)

    await until(finished, sched.follow)
    states = [r["scan_state"] for r in await scan_records(db)]
    assert states[:2] == [QUEUED, LAUNCHED] and states[-1] == FINISHED
    learned = await change_records(db)
    first = learned[ids[0]]
    assert first["qualys_scan_id"].startswith("scan/") and first["scan_state"] == FINISHED
    assert first["scan_result"]["found_open"] == ["tcp/22"]  # tcp/80 was not opened by it
    (row,) = await batch_rows(db)
    assert json.loads(row.summary)["hosts"]["203.0.113.1"]["open"] == ["tcp/22", "tcp/80"]
    await back.close()


async def test_addresses_outside_the_subscription_are_recorded_with_qualys_words(db: Store):
    sim = simulator(subscription=["203.0.113.0/28"])
    ids = await changes(db, ("203.0.113.1", 0), ("198.51.100.7", 0))
    back = backend(sim, db)
    await scheduler(db, back).tick()
    (call,) = sim.launches()
    assert expand(call.params["ip"]) == ["203.0.113.1"]
    learned = await change_records(db)
    assert learned[ids[0]]["scan_state"] == LAUNCHED
    refused = learned[ids[1]]
    assert refused["scan_state"] == ERROR
    assert "not in the subscription" in refused["qualys_scan_error"]
    assert "qualys.add_unknown_ips" in refused["qualys_scan_error"]
    assert sim.added == []
    await back.close()


async def test_with_add_unknown_ips_they_are_added_first_ipv6_only_if_qualys_can(db: Store):
    sim = simulator(subscription=["203.0.113.0/28"], ipv6=False)
    ids = await changes(db, ("203.0.113.1", 0), ("198.51.100.7", 0), ("2001:db8::7", 0))
    back = backend(sim, db, add_unknown_ips=True)
    await scheduler(db, back).tick()
    assert sim.added == ["198.51.100.7"]
    (call,) = sim.launches()
    assert sorted(expand(call.params["ip"])) == ["198.51.100.7", "203.0.113.1"]
    v6 = (await change_records(db))[ids[2]]
    assert v6["scan_state"] == ERROR
    assert "would not add it" in v6["qualys_scan_error"] and "IPv6" in v6["qualys_scan_error"]
    await back.close()


async def test_a_batch_of_refused_addresses_only_ends_in_error(db: Store):
    sim = simulator(subscription=["203.0.113.0/28"])
    await changes(db, ("198.51.100.7", 0), ("198.51.100.8", 0))
    back = backend(sim, db)
    await scheduler(db, back).tick()
    (row,) = await batch_rows(db)
    assert row.state == ERROR and sorted(json.loads(row.address_errors)) == [
        "198.51.100.7",
        "198.51.100.8",
    ]
    assert sim.launches() == []
    await back.close()


async def test_bad_credentials_cost_one_call_and_the_batches_wait_for_a_fix(
    db: Store, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    sim = simulator()
    sim.password = "changed-in-qualys"
    await changes(db, *[(f"203.0.113.{i}", 0) for i in range(1, 4)])
    back = backend(sim, db)
    sched = scheduler(db, back, max_targets=1)
    for _ in range(3):
        await sched.tick()
        await sched.follow()
    assert [c.status for c in sim.calls] == [401]
    rows = await batch_rows(db)
    assert {r.state for r in rows} == {QUEUED}
    assert all("qualys.username 'osel'" in r.error and "qualys.password" in r.error for r in rows)
    for row in rows:
        assert sum(row.id in m for m in caplog.messages) == 1
    assert not any(PASSWORD in m for m in caplog.messages)
    await back.close()

    sim.password = PASSWORD  # the operator fixes osel's configuration and restarts it
    fixed = backend(sim, db)
    launched = await scheduler(db, fixed, max_targets=1).resume()
    assert len(launched) == 3 and len(sim.launches()) == 3
    await fixed.close()


async def test_a_burst_of_409s_delays_scans_and_loses_none(db: Store):
    sim = simulator()
    sim.switches.throttle = ["1960", "1965", "1960", "1965"]
    sim.switches.throttle_wait = 1
    await changes(db, *[(f"203.0.113.{i}", 0) for i in range(1, 4)])
    # a 1965 says no call is left; with min_remaining 0 one may go once Qualys said so
    back = backend(sim, db, min_remaining=0)
    sched = scheduler(db, back, max_targets=1)

    async def all_launched() -> bool:
        return len(sim.launches()) == 3

    await until(all_launched, sched.tick, rounds=400)
    assert len(sim.refused("1960")) == 2 and len(sim.refused("1965")) == 2
    titles = [c.params["scan_title"] for c in sim.launches()]
    assert len(set(titles)) == 3
    assert {r.state for r in await batch_rows(db)} == {LAUNCHED}
    await back.close()


async def test_several_active_scans_are_polled_with_one_call(db: Store):
    sim = simulator(queued_seconds=60)
    await changes(db, *[(f"203.0.113.{i}", 0) for i in range(1, 4)])
    back = backend(sim, db)
    sched = scheduler(db, back, max_targets=1)
    await sched.tick()
    before = len(sim.calls)
    assert await sched.follow() == 3  # each now Queued in Qualys
    (poll,) = sim.calls[before:]
    assert poll.action == "list" and "launched_after_datetime" in poll.params
    assert "scan_ref" not in poll.params
    (seen,) = [b for b in await back.budget.snapshot() if b["api"] == SCAN_API]
    assert seen["remaining"] == 300 - 4
    await back.close()
