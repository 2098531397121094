"""Qualys scanning across real sockets: a real `osel run` (real Neutron, real RabbitMQ)
against the Qualys simulator, a SIGKILL right after a launch reached it, and the
scheduler within a small rate limit, through bursts of 409s and with bad credentials."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from osel.backoff import BackoffPolicy
from osel.config import QualysSettings
from osel.qualys.backend import QualysBackend
from osel.scan_backend import ERROR, FINISHED, LAUNCHED, QUEUED
from osel.scheduler import Scheduler
from osel.store.store import Store
from simulators.qualys import QualysSimulator, expand, serve_in_thread, start
from tests.integration import neutron_fixtures as nf
from tests.integration.osel_process import OselProcess, Record
from tests.unit.test_scheduler import batch_rows, changes

pytestmark = pytest.mark.integration

FAST = BackoffPolicy(initial=0.05, cap=0.5)


@pytest.fixture
def qualys() -> Iterator[tuple[QualysSimulator, str]]:
    sim = QualysSimulator(queued_seconds=1, running_seconds=2)
    with serve_in_thread(sim) as url:
        yield sim, url


def qualys_osel(workdir: Path, url: str, store_url: str, *, window: float = 5.0) -> OselProcess:
    return OselProcess(
        workdir,
        store_url=store_url,
        window_seconds=window,
        http=True,
        extra={
            "scan": {"backend": "qualys"},
            "scope": {"exclude_cidrs": ["10.0.0.0/8"]},
            "qualys": {
                "api_url": url,
                "username": "osel",
                "password": "osel-secret",
                "poll_seconds": 0.5,
                "timeout_seconds": 2,
            },
        },
    )


def scan_of(change_ids: set[str], state: str) -> Callable[[Record], bool]:
    def match(r: Record) -> bool:
        return (
            r["record_type"] == "scan"
            and r["scan_state"] == state
            and bool(change_ids & set(r["change_record_ids"]))
        )

    return match


def osel_cli(osel: OselProcess, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "osel", *args, "-c", str(osel.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_changes_become_one_qualys_scan_followed_to_the_end(
    admin, cleanup, tmp_path, qualys, store_url
):
    sim, url = qualys
    osel = qualys_osel(tmp_path, url, store_url)
    try:
        osel.start()
        ext, _ = nf.create_external_network(admin, cleanup)
        net, subnet = nf.create_private_network(admin, cleanup)
        nf.create_router(admin, cleanup, external_network=ext, subnet=subnet)
        group = nf.create_security_group(admin, cleanup)
        ports = [
            nf.create_port(admin, cleanup, network=net, security_groups=[group.id])
            for _ in range(3)
        ]
        fips = [
            nf.create_floating_ip(admin, cleanup, external_network=ext, port=p) for p in ports[:2]
        ]
        # SSH opened to the world, then a third floating IP, within one window
        rule = nf.add_rule(admin, cleanup, group)
        fips.append(nf.create_floating_ip(admin, cleanup, external_network=ext, port=ports[2]))
        in_scope = sorted(f.floating_ip_address for f in fips)

        added = osel.wait_records(
            lambda r: (
                r["change_type"] == "sg_rule_add"
                and (r["security_group_rule"] or {}).get("id") == rule.id
            ),
            5,
        )
        fixed = [r for r in added if r["address_kind"] != "floating"]
        assert {r["scan_state"] for r in fixed} == {"out_of_scope"}
        (assoc,) = osel.wait_records(
            lambda r: r["change_type"] == "fip_associate" and r["floating_ip_id"] == fips[2].id, 1
        )
        queued = {r["record_id"] for r in added if r["scan_state"] == "queued"}
        queued.add(assoc["record_id"])
        assert len(queued) == 3

        (finished,) = osel.wait_records(scan_of(queued, FINISHED), 1, timeout=60)
        assert set(finished["change_record_ids"]) == queued
        assert sorted(finished["target_addresses"]) == in_scope
        # one scan for the window, with exactly the affected in-scope addresses
        (launch,) = sim.launches(finished["scan_title"])
        assert sorted(expand(launch.params["ip"])) == in_scope
        assert len(sim.launches()) == 1
        assert launch.params["option_title"] == "Initial Options"
        assert "iscanner_name" not in launch.params  # Qualys's external scanners
        states = [
            r["scan_state"]
            for r in osel.records()
            if r.get("scan_batch_id") == finished["scan_batch_id"] and r["record_type"] == "scan"
        ]
        assert states[0] == QUEUED and states[1] == LAUNCHED and states[-1] == FINISHED
        assert "running" in states
        # the results, linked back to the changes: SSH, which they opened, is found open
        links = {x["change_record_id"]: x for x in finished["change_links"]}
        assert set(links) == queued
        assert all("tcp/22" in x["found_open"] for x in links.values())
        reference = finished["qualys_scan_id"]
        assert reference == launch_reference(sim, finished["scan_title"])

        # what the change records learned, in the store, the CLI and `osel scans`
        learned = {
            r["record_id"]: r
            for r in (
                json.loads(x) for x in osel_cli(osel, "audit", "tail", "-n", "200").split("\n") if x
            )
            if r["record_type"] == "change"
        }
        for rid in queued:
            assert learned[rid]["qualys_scan_id"] == reference
            assert learned[rid]["scan_state"] == FINISHED
            assert "tcp/22" in learned[rid]["scan_result"]["found_open"]
        listing = osel_cli(osel, "scans", "list")
        assert reference in listing and "finished" in listing and "results:" in listing
        shown = json.loads(osel_cli(osel, "scans", "show", reference))
        assert shown["state"] == FINISHED and sorted(shown["addresses"]) == in_scope
        assert "osel-secret" not in osel.log.read_text()

        # the metrics count the scan and the Qualys calls behind it
        text = httpx.get(f"{osel.http_url}/metrics", timeout=10).text
        samples = {
            (m.name, tuple(sorted(m.labels.items()))): m.value
            for f in text_string_to_metric_families(text)
            for m in f.samples
        }
        assert samples[("osel_scan_batches", (("state", "finished"),))] >= 1
        assert samples[("osel_qualys_calls_total", (("action", "launch"), ("status", "200")))] == 1
        assert samples[("osel_qualys_calls_total", (("action", "fetch"), ("status", "200")))] >= 1
        assert any(k[0] == "osel_qualys_budget_remaining" for k in samples)
    finally:
        osel.close()


def test_a_scan_a_replay_launched_is_followed_to_the_end_by_osel_run(tmp_path, qualys, store_url):
    sim, url = qualys
    osel = qualys_osel(tmp_path, url, store_url, window=0)
    samples = Path(__file__).parents[1] / "data" / "neutron-29" / "notifications.jsonl"
    try:
        command = ["replay", str(samples), "--offline", "-c", str(osel.config)]
        done = subprocess.run(
            [sys.executable, "-m", "osel", *command],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["scan_batches"] == 1 and summary["scan_batches_unfinished"] == 1
        assert "1 scan batch(es) not finished yet" in done.stderr
        assert "`osel run` on this store launches and follows them" in done.stderr
        (launch,) = sim.launches()
        assert expand(launch.params["ip"]) == ["203.0.113.113"]  # 10.0.0.0/8 is out of scope
        osel.start()  # the daemon takes the launched scan over from the store
        (finished,) = osel.wait_records(
            lambda r: r["record_type"] == "scan" and r["scan_state"] == FINISHED, 1, timeout=60
        )
        assert finished["qualys_scan_id"] == launch_reference(sim, finished["scan_title"])
        assert len(sim.launches()) == 1  # followed, not launched again
        listing = osel_cli(osel, "scans", "list")
        assert finished["qualys_scan_id"] in listing and "finished" in listing
    finally:
        osel.close()


def launch_reference(sim: QualysSimulator, title: str) -> str:
    (scan,) = [s for s in sim.scans.values() if s.title == title]
    return scan.ref


def test_sigkill_right_after_a_launch_reached_qualys_never_launches_it_again(
    admin, cleanup, tmp_path, qualys, store_url
):
    sim, url = qualys
    osel = qualys_osel(tmp_path, url, store_url, window=1.0)
    try:
        osel.start()
        ext, _ = nf.create_external_network(admin, cleanup)
        net, subnet = nf.create_private_network(admin, cleanup)
        nf.create_router(admin, cleanup, external_network=ext, subnet=subnet)
        group = nf.create_security_group(admin, cleanup)
        port = nf.create_port(admin, cleanup, network=net, security_groups=[group.id])
        fip = nf.create_floating_ip(admin, cleanup, external_network=ext, port=port)
        assert osel.stop() == 0
        nf.add_rule(admin, cleanup, group)  # waits in osel's queue meanwhile

        osel.start(env={"OSEL_CRASH_AT": "after_launch_request"})
        assert osel.wait_exit() == -9
        (launch,) = sim.launches()
        assert expand(launch.params["ip"]) == [fip.floating_ip_address]
        title = launch.params["scan_title"]

        osel.start()
        (adopted,) = osel.wait_records(
            lambda r: (
                r["record_type"] == "scan"
                and r["scan_state"] == LAUNCHED
                and r["scan_title"] == title
            ),
            1,
            timeout=60,
        )
        assert adopted["reconciled"] is True
        assert adopted["qualys_scan_id"] == launch_reference(sim, title)
        osel.wait_records(
            lambda r: (
                r["record_type"] == "scan"
                and r["scan_state"] == FINISHED
                and r["scan_title"] == title
            ),
            1,
            timeout=60,
        )
        assert len(sim.launches()) == 1
        assert [c.action for c in sim.calls].count("launch") == 1
    finally:
        osel.close()


# --------------------------------------------------------------------------- in process


@pytest.fixture
async def db(store_url: str) -> AsyncIterator[Store]:
    store = Store(store_url)
    await store.migrate()
    yield store
    await store.close()


async def served(sim: QualysSimulator) -> tuple[Any, str]:
    return await start(sim)


def settings(url: str, **over: Any) -> QualysSettings:
    values: dict[str, Any] = {
        "api_url": url,
        "username": "osel",
        "password": "osel-secret",
        "timeout_seconds": 5,
        "poll_seconds": 0.2,
        **over,
    }
    return QualysSettings(**values)


async def drive(sched: Scheduler, db: Store, count: int, state: str, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        await sched.tick()
        await sched.follow()
        rows = await batch_rows(db)
        if len(rows) == count and {r.state for r in rows} == {state}:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not all {count} batches {state}: {[r.state for r in rows]}")


async def test_within_n_calls_per_window_the_limit_holds_and_no_batch_is_lost(db: Store):
    window = 3.0
    sim = QualysSimulator(rate_limit=4, rate_window=window, queued_seconds=0.2, running_seconds=0.3)
    runner, url = await served(sim)
    back = QualysBackend(settings(url, min_remaining=1), db, backoff=FAST)
    try:
        await changes(db, *[(f"203.0.113.{i}", i % 4) for i in range(1, 7)])
        sched = Scheduler(db, back, window_seconds=0, max_targets=1, instance="t", backoff=FAST)
        await drive(sched, db, 6, FINISHED, 120)
    finally:
        await back.close()
        await runner.cleanup()
    assert sim.refused("1965") == []  # osel itself kept within the limit
    accepted = [c.at for c in sim.calls if c.status == 200 and c.api.endswith("/scan/")]
    for at in accepted:
        assert sum(at - window < other <= at for other in accepted) <= 4
    titles = [c.params["scan_title"] for c in sim.launches()]
    assert len(titles) == 6 == len(set(titles))


async def test_a_burst_of_409s_over_the_wire_delays_and_loses_nothing(db: Store):
    sim = QualysSimulator(queued_seconds=0.1, running_seconds=0.1)
    sim.switches.throttle = ["1960", "1960", "1965", "1960"]
    sim.switches.throttle_wait = 1
    runner, url = await served(sim)
    back = QualysBackend(settings(url, min_remaining=0), db, backoff=FAST)
    try:
        await changes(db, *[(f"203.0.113.{i}", 0) for i in range(1, 4)])
        sched = Scheduler(db, back, window_seconds=0, max_targets=1, instance="t", backoff=FAST)
        await drive(sched, db, 3, FINISHED, 60)
    finally:
        await back.close()
        await runner.cleanup()
    assert len(sim.refused("1960")) == 3 and len(sim.refused("1965")) == 1
    assert len(sim.launches()) == 3


async def test_a_scan_qualys_stops_listing_ends_in_error_and_is_not_polled_again(db: Store):
    """A launched scan that disappears from Qualys's scan list (deleted there, or purged
    by its retention) ends its batch in error once missing_scan_hours have passed, and
    osel stops asking Qualys about it."""
    sim = QualysSimulator(queued_seconds=30, running_seconds=30)
    runner, url = await served(sim)
    back = QualysBackend(settings(url, min_remaining=0), db, backoff=FAST)
    try:
        await changes(db, ("203.0.113.1", 0))
        sched = Scheduler(
            db, back, window_seconds=0, max_targets=1, instance="t", backoff=FAST,
            missing_scan_hours=1e-9,
        )  # fmt: skip
        await sched.tick()
        (row,) = await batch_rows(db)
        assert row.state == LAUNCHED
        assert await sched.follow() == 1  # listed: Queued
        del sim.scans[row.reference]  # gone from Qualys
        assert await sched.follow() == 0  # the first miss starts the clock
        await asyncio.sleep(0.01)
        assert await sched.follow() == 1
        polls = len(sim.calls)
        assert await sched.follow() == 0
    finally:
        await back.close()
        await runner.cleanup()
    (row,) = await batch_rows(db)
    assert (row.state, row.qualys_state) == (ERROR, "Not listed")
    assert "no longer lists the scan" in row.error
    assert len(sim.calls) == polls  # nothing left to ask Qualys about


async def test_bad_credentials_show_once_per_batch_in_osel_scans(db: Store, tmp_path: Path):
    sim = QualysSimulator(password="rotated-in-qualys")
    runner, url = await served(sim)
    back = QualysBackend(settings(url), db, backoff=FAST)
    try:
        await changes(db, ("203.0.113.1", 0), ("203.0.113.2", 1))
        sched = Scheduler(db, back, window_seconds=0, max_targets=1, instance="t", backoff=FAST)
        for _ in range(3):
            await sched.tick()
            await sched.follow()
    finally:
        await back.close()
        await runner.cleanup()
    assert [c.status for c in sim.calls] == [401]
    config = tmp_path / "cli.yaml"
    config.write_text(yaml.safe_dump({"scan": {"backend": "dry-run"}, "store": {"url": db.url}}))
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "osel", "scans", "list", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    listing = done.stdout
    errors = [line for line in listing.splitlines() if line.strip().startswith("error:")]
    assert len(errors) == 2
    assert all("qualys.username 'osel'" in e and "qualys.password" in e for e in errors)
    assert "osel-secret" not in listing
    assert listing.count(" queued ") == 2
