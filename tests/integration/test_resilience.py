"""Faults with real traffic: SIGTERM, cut and refused broker connections, 20 SIGKILLs.

Each test publishes a realistic mix (nine ignored notifications for every
relevant one) into osel's queue and checks, from the store, that every
relevant notification has its records exactly once. Figures go to
var/reports/, which docs/reliability.md quotes.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pika
import pytest

from tests import messages as m
from tests.integration.osel_process import AMQP_URL, OselProcess, Record
from tests.integration.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration
REPORTS = Path(__file__).parents[2] / "var" / "reports"


def report(name: str, figures: dict[str, Any], store_url: str) -> None:
    """Figures for docs/reliability.md, one file per test and store (name[-postgresql])."""
    REPORTS.mkdir(parents=True, exist_ok=True)
    suffix = "-postgresql" if store_url.startswith("postgresql") else ""
    path = REPORTS / f"{name}{suffix}.json"
    path.write_text(
        json.dumps({**figures, "store": store_url.split(":")[0]}, indent=2, sort_keys=True)
    )


def traffic(group_id: str, relevant: int, *, noise_per_relevant: int = 9) -> list[bytes]:
    """`relevant` SSH-like rule creations on `group_id`, each on its own port, in noise."""
    bodies = []
    for i in range(relevant):
        rule = m.rule(group_id, rid=f"rule-{uuid.uuid4()}", low=10000 + i, high=10000 + i)
        bodies.append(
            m.envelope(
                m.notification("security_group_rule.create.end", {"security_group_rule": rule})
            )
        )
        for _ in range(noise_per_relevant):
            bodies.append(
                m.envelope(
                    m.notification(
                        random.choice(
                            [
                                "network.update.end",
                                "port.update.start",
                                "subnet.create.end",
                                "compute.instance.update",
                            ]
                        ),
                        {"x": {}},
                    )
                )
            )
    return bodies


def publish(queue: str, bodies: list[bytes]) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = conn.channel()
    channel.confirm_delivery()
    for body in bodies:
        channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    conn.close()


def relevant_ids(bodies: list[bytes]) -> set[str]:
    out = set()
    for body in bodies:
        msg = json.loads(json.loads(body)["oslo.message"])
        if msg["event_type"] == "security_group_rule.create.end":
            out.add(msg["message_id"])
    return out


def exactly_once(records: list[Record], expected: set[str], addresses: int) -> None:
    changes = [r for r in records if r["record_type"] == "change"]
    per_message = Counter(r["message_id"] for r in changes)
    assert set(per_message) == expected, (
        f"missing {len(expected - set(per_message))}, unexpected {len(set(per_message) - expected)}"
    )
    assert set(per_message.values()) == {addresses}
    pairs = Counter((r["message_id"], r["affected_ip_address"]) for r in changes)
    assert max(pairs.values()) == 1


def wait_drained(osel: OselProcess, expected: set[str], timeout: float = 120) -> list[Record]:
    deadline = time.monotonic() + timeout
    done: set[str] = set()
    while time.monotonic() < deadline:
        records = osel.store_records()
        done = {r["message_id"] for r in records if r["record_type"] == "change"}
        if expected <= done and osel.queue_depth() == 0:
            time.sleep(1.0)
            return osel.store_records()
        time.sleep(0.3)
    raise AssertionError(
        f"not drained after {timeout}s: {len(expected - done)} of "
        f"{len(expected)} without records, {osel.queue_depth()} ready in "
        f"the queue:\n{osel.tail()}"
    )


def test_sigterm_finishes_in_flight_work_and_exits_0_within_10s(
    group, tmp_path: Path, store_url: str
):
    sg_id, ips = group
    osel = OselProcess(tmp_path, store_url=store_url, http=True)  # as deployed
    try:
        osel.start()
        bodies = traffic(sg_id, 300)
        publish(osel.queue, bodies)
        time.sleep(0.5)
        assert osel.proc is not None
        log_chars = len(osel.log.read_text(errors="replace"))
        started = time.monotonic()
        osel.proc.send_signal(signal.SIGTERM)
        assert osel.wait_exit(15) == 0
        took = time.monotonic() - started
        # the loops and the HTTP server stop on their event; had one missed it, the
        # stop would wait out shutdown's 5 s for it
        assert took < 5, took
        stopping = osel.log.read_text(errors="replace")[log_chars:]
        assert "[error" not in stopping and "Traceback" not in stopping, stopping
        osel.start()
        records = wait_drained(osel, relevant_ids(bodies))
        exactly_once(records, relevant_ids(bodies), len(ips))
        report("sigterm", {"stop_seconds": round(took, 2), "messages": len(bodies)}, osel.store_url)
    finally:
        osel.close()


@pytest.mark.timeout(300)
def test_cut_and_refused_broker_connections_lose_and_repeat_nothing(
    group, tmp_path: Path, store_url: str
):
    sg_id, ips = group
    proxy = TcpProxy()
    cap = 2.0
    osel = OselProcess(
        tmp_path,
        store_url=store_url,
        extra={
            "amqp": {
                "transport_url": f"rabbit://guest:guest@127.0.0.1:{proxy.port}/",
                "heartbeat": 5,
            },
            "service": {"backoff_initial_seconds": 0.2, "backoff_cap_seconds": cap},
        },
    )
    try:
        osel.start()
        sent: list[bytes] = []
        for _ in range(5):  # connections cut while notifications keep coming
            batch = traffic(sg_id, 40)
            publish(osel.queue, batch)
            sent += batch
            time.sleep(0.3)
            assert proxy.wait_connected(cap * 4), osel.tail()
            assert proxy.cut() > 0
        log_before = len(osel.log.read_text().splitlines())
        proxy.refuse(True)  # the broker is unreachable for a while
        outage = 20.0
        during = traffic(sg_id, 40)
        publish(osel.queue, during)
        sent += during
        time.sleep(outage)
        outage_lines = [
            line for line in osel.log.read_text().splitlines()[log_before:] if "amqp" in line
        ]
        log_chars = len(osel.log.read_text(errors="replace"))
        proxy.refuse(False)
        back = time.monotonic()
        osel.wait_for_log("amqp back", after=log_chars, timeout=cap * 3)
        resumed = time.monotonic() - back
        records = wait_drained(osel, relevant_ids(sent))
        exactly_once(records, relevant_ids(sent), len(ips))
        # at most one line when it goes down and one summary per cap interval
        assert len(outage_lines) <= outage / cap + 2, outage_lines
        assert resumed <= cap + 1.0
        report(
            "broker_faults",
            {
                "connection_cuts": 5,
                "outage_seconds": outage,
                "backoff_cap_seconds": cap,
                "outage_log_lines": len(outage_lines),
                "log_lines_per_hour_bound": round(3600 / cap + 2),
                "reconnected_after_seconds": round(resumed, 2),
                "notifications": len(sent),
                "relevant": len(relevant_ids(sent)),
                "records_lost": 0,
                "records_duplicated": 0,
            },
            osel.store_url,
        )
    finally:
        osel.close()
        proxy.close()


@pytest.mark.timeout(600)
def test_twenty_sigkills_at_random_points(group, tmp_path: Path, store_url: str):
    sg_id, ips = group
    rng = random.Random(20)
    osel = OselProcess(tmp_path, window_seconds=0.3, store_url=store_url)
    kills = busy = 0
    bodies: list[bytes] = []
    try:
        osel.start()
        while kills < 20:  # traffic keeps coming; each kill lands at a random moment
            chunk = traffic(sg_id, 100)
            # osel drains a chunk about as fast as it is published: killed after the
            # publisher has finished, it would mostly die idle
            publisher = threading.Thread(target=publish, args=(osel.queue, chunk))
            publisher.start()
            time.sleep(rng.uniform(0.0, 1.5))
            osel.kill()
            publisher.join()
            bodies += chunk
            kills += 1
            busy += osel.queue_depth(wait_released=10) > 0  # its unacked work went back
            osel.start()
        assert busy >= 5, f"only {busy} of {kills} kills found work queued: too easy a test"
        records = wait_drained(osel, relevant_ids(bodies), timeout=180)
        exactly_once(records, relevant_ids(bodies), len(ips))
        launched = Counter(
            r["scan_batch_id"]
            for r in records
            if r["record_type"] == "scan" and r["scan_state"] == "launched"
        )
        assert launched and max(launched.values()) == 1  # no batch launched twice
        queued = {
            r["record_id"]
            for r in records
            if r.get("scan_state") == "queued" and r["record_type"] == "change"
        }
        covered = {
            u
            for r in records
            if r["record_type"] == "scan" and r["scan_state"] == "launched"
            for u in r["change_record_ids"]
        }
        assert queued <= covered  # every queued address went into a launched batch
        osel.wait_records(lambda r: True, len(records), timeout=30)
        in_file = {r["record_id"] for r in osel.records()}
        assert {r["record_id"] for r in records} <= in_file  # nothing lost on the way out
        report(
            "kills",
            {
                "sigkills": kills,
                "killed_with_work_queued": busy,
                "notifications": len(bodies),
                "relevant": len(relevant_ids(bodies)),
                "records": len(records),
                "scan_batches": len(launched),
                "records_lost": 0,
                "duplicate_lines_in_file": len(osel.records()) - len(in_file),
                "cut_short_lines_removed": osel.log.read_text(errors="replace").count(
                    "a record cut short by a writer that stopped mid-write"
                ),
            },
            osel.store_url,
        )
    finally:
        osel.close()
