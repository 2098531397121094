"""PostgreSQL out of reach, at start and under traffic: osel waits, logs the outage in
a few lines, keeps answering /metrics, and loses and repeats nothing.

The store's connections go through a TCP proxy that refuses them for a while, as a
stopped or failed-over PostgreSQL does. (A SQLite store has no such outage: it is a
file of the machine osel runs on.)
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from osel.store.store import INVENTORY_LOCK
from tests.integration.neutron_fixtures import unique
from tests.integration.osel_process import OselProcess
from tests.integration.tcp_proxy import TcpProxy
from tests.integration.test_resilience import (
    exactly_once,
    publish,
    relevant_ids,
    report,
    traffic,
    wait_drained,
)
from tests.pg import ADMIN_URL, postgres_database

pytestmark = pytest.mark.integration


def log_lines(osel: OselProcess, after: int) -> list[str]:
    """The log's lines from character `after` on."""
    return osel.log.read_text(errors="replace")[after:].splitlines()


def metric(osel: OselProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{osel.http_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"{name}{labels} is missing from /metrics")


def checked(sent: list[bytes]) -> dict[str, int]:
    """The figures of notifications whose records exactly_once found once each."""
    return {
        "notifications": len(sent),
        "relevant": len(relevant_ids(sent)),
        "records_lost": 0,
        "records_duplicated": 0,
    }


def store_up(osel: OselProcess) -> float:
    return metric(osel, "osel_dependency_up", dependency="store")


@pytest.mark.timeout(300)
def test_a_postgresql_outage_at_start_and_under_traffic(group, tmp_path: Path):
    sg_id, ips = group
    proxy = TcpProxy(("127.0.0.1", 5432))
    cap = 2.0
    with postgres_database() as url:
        osel = OselProcess(
            tmp_path,
            store_url=url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"),
            window_seconds=0,  # the scheduler's loop runs after every commit
            http=True,
            extra={"service": {"backoff_initial_seconds": 0.2, "backoff_cap_seconds": cap}},
        )
        starting = threading.Thread(target=osel.start)
        try:
            # 1. PostgreSQL away when osel starts: it waits instead of exiting
            proxy.refuse(True)
            starting.start()
            deadline = time.monotonic() + 30
            while osel.proc is None and time.monotonic() < deadline:
                time.sleep(0.05)
            osel.wait_for_log("store down", timeout=30)
            time.sleep(3 * cap)
            assert osel.proc is not None and osel.proc.poll() is None, osel.tail()
            # its HTTP endpoint is up meanwhile: alive, not ready, the API not yet
            assert httpx.get(f"{osel.http_url}/healthz", timeout=10).status_code == 200
            ready = httpx.get(f"{osel.http_url}/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["checks"]["started"] is False
            assert store_up(osel) == 0.0
            api = httpx.get(f"{osel.http_url}/v1/changes", timeout=10)
            assert api.status_code == 503 and "starting" in api.json()["error"]
            waiting = log_lines(osel, 0)
            proxy.refuse(False)
            starting.join(60)
            assert not starting.is_alive(), osel.tail()

            # 2. PostgreSQL away for 20 s while notifications keep coming
            sent = traffic(sg_id, 40)
            publish(osel.queue, sent)
            wait_drained(osel, relevant_ids(sent))
            misses = metric(osel, "osel_inventory_misses")
            log_chars = len(osel.log.read_text(errors="replace"))
            proxy.refuse(True)
            during = traffic(sg_id, 40)
            publish(osel.queue, during)
            sent += during
            outage = 20.0
            began = time.monotonic()
            answers: dict[str, set[int]] = {"/v1/changes": set(), "/readyz": set()}
            up: set[float] = set()
            while time.monotonic() - began < outage:
                time.sleep(2)
                for path, codes in answers.items():
                    codes.add(httpx.get(f"{osel.http_url}{path}", timeout=10).status_code)
                up.add(store_up(osel))
            assert osel.proc.poll() is None, osel.tail()
            outage_lines = log_lines(osel, log_chars)
            log_chars = len(osel.log.read_text(errors="replace"))
            proxy.refuse(False)
            back = time.monotonic()
            osel.wait_for_log("store back", after=log_chars, timeout=cap * 5)
            resumed = time.monotonic() - back
            records = wait_drained(osel, relevant_ids(sent))
            exactly_once(records, relevant_ids(sent), len(ips))

            # waiting at start: the line that says so, at most one summary per cap
            assert len(waiting) <= 3 * cap / cap + 3, waiting
            # under traffic: the consumer, the scan scheduler and the audit sink each say
            # it once, then at most once per cap; no traceback
            assert len(outage_lines) <= 3 * (outage / cap + 2), outage_lines
            assert not any("Traceback" in line for line in outage_lines), outage_lines
            assert answers == {"/v1/changes": {503}, "/readyz": {503}}
            assert up == {0.0}  # /metrics answered each time, and said so
            assert store_up(osel) == 1.0
            # the inventory survived the outage: the group's changes after it asked
            # nothing of Neutron (here the outage began between two batches; one that
            # fails mid-batch is test_store_away.py's inventory test)
            assert metric(osel, "osel_inventory_misses") == misses
            report(
                "store_outage",
                {
                    "outage_seconds": outage,
                    "backoff_cap_seconds": cap,
                    "outage_log_lines": len(outage_lines),
                    "start_wait_log_lines": len(waiting),
                    "processing_again_after_seconds": round(resumed, 2),
                    **checked(sent),
                },
                url,
            )
        finally:
            osel.close()
            proxy.close()
            if starting.is_alive():
                starting.join(60)


@pytest.mark.timeout(300)
def test_two_instances_through_a_postgresql_outage(group, tmp_path: Path):
    """Two instances on one queue and one store; PostgreSQL refused for longer than the
    sink's lease while notifications keep coming."""
    sg_id, ips = group
    proxy = TcpProxy(("127.0.0.1", 5432))
    cap, outage = 2.0, 12.0
    with postgres_database() as url:
        proxied = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        audit = tmp_path / "audit.jsonl"  # one sink id, one cursor: the instances take turns
        service = {"backoff_initial_seconds": 0.2, "backoff_cap_seconds": cap, "lease_seconds": 5}
        queue = unique("queue")
        fleet = [
            OselProcess(
                tmp_path / name,
                store_url=proxied,
                window_seconds=0,
                instance=f"osel-{name}",
                audit=audit,
                queue=queue,  # one queue: RabbitMQ spreads the messages over both
                extra={"service": service},
            )
            for name in ("a", "b")
        ]
        try:
            for osel in fleet:
                osel.start()
            sent = traffic(sg_id, 100)
            publish(fleet[0].queue, sent)
            time.sleep(0.3)  # some of it committed, some not yet
            chars = [len(o.log.read_text(errors="replace")) for o in fleet]
            proxy.refuse(True)
            during = traffic(sg_id, 100)
            publish(fleet[0].queue, during)
            sent += during
            time.sleep(outage)
            assert all(o.proc is not None and o.proc.poll() is None for o in fleet)
            outage_lines = [len(log_lines(o, c)) for o, c in zip(fleet, chars, strict=True)]
            proxy.refuse(False)
            records = wait_drained(fleet[0], relevant_ids(sent))
            exactly_once(records, relevant_ids(sent), len(ips))
            delivered: list[str] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                lines = audit.read_text().splitlines() if audit.exists() else []
                delivered = [json.loads(line)["record_id"] for line in lines]
                if len(set(delivered)) == len(records):
                    break
                time.sleep(0.3)
            assert sorted(delivered) == sorted(r["record_id"] for r in records)  # once each
            for count in outage_lines:  # the consumer, the scheduler, the sink: 3 loops
                assert count <= 3 * (outage / cap + 2), outage_lines
            report(
                "store_outage_two_instances",
                {
                    "outage_seconds": outage,
                    "lease_seconds": service["lease_seconds"],
                    "outage_log_lines_per_instance": outage_lines,
                    "relevant": len(relevant_ids(sent)),
                    "notifications": len(sent),
                    "records": len(records),
                    "records_delivered_twice": len(delivered) - len(set(delivered)),
                },
                url,
            )
        finally:
            for osel in fleet:
                osel.close()
            proxy.close()


def terminate_connections(url: str) -> int:
    """What a PostgreSQL restart or fail-over does to osel's pooled connections: the
    server ends them, and osel finds out when it next uses one."""
    database = url.rsplit("/", 1)[1]
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        ended = [
            pid
            for pid, done in conn.execute(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
            if done
        ]
        # the backends end a moment after the signal; osel may open new ones meanwhile
        deadline = time.monotonic() + 10
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (ended,)
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "the backends did not end"
            time.sleep(0.05)
    return len(ended)


@pytest.mark.timeout(300)
def test_connections_ended_by_a_postgresql_restart(group, tmp_path: Path):
    """Every pooled connection ended at once, as a restart does, while osel is idle:
    the next batch, scan round and sink round find them dead."""
    sg_id, ips = group
    with postgres_database() as url:
        # the scan scheduler looks for due targets every 5 s, not every 0.2 s: a real
        # restart fails the statements in flight, and this test is about idle ones
        osel = OselProcess(tmp_path, store_url=url, window_seconds=20, http=True)
        try:
            osel.start()
            sent = traffic(sg_id, 40)
            publish(osel.queue, sent)
            wait_drained(osel, relevant_ids(sent))
            time.sleep(1)  # the sinks done: every connection idle
            log_chars = len(osel.log.read_text(errors="replace"))
            ended = terminate_connections(url)
            assert ended >= 1
            after = traffic(sg_id, 40)
            publish(osel.queue, after)
            sent += after
            records = wait_drained(osel, relevant_ids(sent))
            exactly_once(records, relevant_ids(sent), len(ips))
            lines = log_lines(osel, log_chars)
            assert not any("Traceback" in line for line in lines), lines
            # the idle connections are replaced when taken (pinged), without a failure;
            # a statement in flight at that moment (the sinks look every 0.5 s) fails
            # once, and the loop that sent it is back at its first retry
            down = [line for line in lines if " down: " in line]
            back = [line for line in lines if " back after " in line]
            assert len(down) <= 1, lines
            assert all("terminating connection" in line for line in down), lines
            assert len(back) == len(down) and all("1 attempt" in line for line in back), lines
            report(
                "store_restart",
                {
                    "connections_ended": ended,
                    "statements_cut_short": len(down),
                    "log_lines_after": len(lines),
                    **checked(after),
                },
                url,
            )
        finally:
            osel.close()


@pytest.mark.timeout(300)
def test_a_postgresql_that_hangs(group, tmp_path: Path):
    """PostgreSQL stops answering without closing anything (a stuck disk, a frozen
    machine behind a live proxy): no error ever comes. osel says what its batch waits
    for, keeps /metrics and /readyz answering, and loses nothing when it answers."""
    sg_id, ips = group
    proxy = TcpProxy(("127.0.0.1", 5432))
    with postgres_database() as url:
        osel = OselProcess(
            tmp_path,
            store_url=url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"),
            window_seconds=0,
            http=True,
        )
        try:
            osel.start()
            sent = traffic(sg_id, 40)
            publish(osel.queue, sent)
            wait_drained(osel, relevant_ids(sent))
            log_chars = len(osel.log.read_text(errors="replace"))
            proxy.stall(True)
            during = traffic(sg_id, 40)
            publish(osel.queue, during)
            sent += during
            began = time.monotonic()
            answers: dict[str, set[int]] = {"/metrics": set(), "/readyz": set()}
            slowest = 0.0
            while time.monotonic() - began < 40:  # longer than the 30 s osel waits quietly
                for path, codes in answers.items():
                    asked = time.monotonic()
                    codes.add(httpx.get(f"{osel.http_url}{path}", timeout=9).status_code)
                    slowest = max(slowest, time.monotonic() - asked)
                time.sleep(2)
            stalled_up = store_up(osel)
            lines = log_lines(osel, log_chars)
            log_chars = len(osel.log.read_text(errors="replace"))
            proxy.stall(False)
            records = wait_drained(osel, relevant_ids(sent))
            exactly_once(records, relevant_ids(sent), len(ips))
            osel.wait_for_log("and goes on", after=log_chars, timeout=10)

            # the endpoint answered throughout, within its bounds (3 s and 5 s)
            assert answers == {"/metrics": {200}, "/readyz": {503}}, answers
            assert slowest < 6.5, slowest
            assert stalled_up == 0.0
            # said once what the batch waits for, without a traceback
            assert len([x for x in lines if "has waited" in x]) == 1, lines
            assert len(lines) <= 3 and not any("Traceback" in x for x in lines), lines
            report(
                "store_hang",
                {
                    "hang_seconds": 40,
                    "log_lines": len(lines),
                    "slowest_answer_seconds": round(slowest, 2),
                    **checked(sent),
                },
                url,
            )
        finally:
            osel.close()
            proxy.close()


@pytest.mark.timeout(300)
def test_the_inventory_lock_held_by_a_frozen_instance(group, tmp_path: Path):
    """Another instance holds the inventory lock and is frozen, not dead (a paused
    machine): its connection stays up, so the lock is never released by PostgreSQL.
    osel says what it waits for, and goes on when the lock is free."""
    sg_id, ips = group
    with postgres_database() as url:
        osel = OselProcess(tmp_path, store_url=url, window_seconds=0, http=True)
        try:
            osel.start()
            with psycopg.connect(url, autocommit=True) as frozen:
                frozen.execute("SELECT pg_advisory_lock(%s)", (INVENTORY_LOCK,))
                log_chars = len(osel.log.read_text(errors="replace"))
                sent = traffic(sg_id, 20)
                publish(osel.queue, sent)
                osel.wait_for_log("has waited", after=log_chars, timeout=45)
                assert osel.records() == []  # nothing handled while the lock is held
            # the frozen instance's connection ended: the lock is free
            records = wait_drained(osel, relevant_ids(sent))
            exactly_once(records, relevant_ids(sent), len(ips))
            osel.wait_for_log("and goes on", after=log_chars, timeout=10)
            lines = log_lines(osel, log_chars)
            (waited,) = [x for x in lines if "has waited" in x]
            assert "for the inventory lock (another instance holds it" in waited, waited
            assert not any("Traceback" in x for x in lines), lines
        finally:
            osel.close()
