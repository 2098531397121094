"""Crash safety of the commit/ack order, and no stealing from other consumers."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

import pika
import pytest

from tests.integration import neutron_fixtures as nf
from tests.integration.osel_process import OselProcess, Record

pytestmark = pytest.mark.integration


def build(admin: nf.Connection, cleanup: nf.Cleanup) -> tuple[list[str], str]:
    """A group with two ports (one with a floating IP), then SSH opened to the world."""
    ext, _ = nf.create_external_network(admin, cleanup)
    net, subnet = nf.create_private_network(admin, cleanup)
    nf.create_router(admin, cleanup, external_network=ext, subnet=subnet)
    group = nf.create_security_group(admin, cleanup)
    ports = [
        nf.create_port(admin, cleanup, network=net, security_groups=[group.id]) for _ in range(2)
    ]
    fip = nf.create_floating_ip(admin, cleanup, external_network=ext, port=ports[0])
    rule = nf.add_rule(admin, cleanup, group)
    ips = [ip["ip_address"] for p in ports for ip in p.fixed_ips] + [fip.floating_ip_address]
    return sorted(ips), rule.id


def change_counts(records: list[Record]) -> Counter[tuple[str, str, str]]:
    return Counter(
        (r["message_id"], r["change_type"], r["affected_ip_address"])
        for r in records
        if r["record_type"] == "change"
    )


@pytest.mark.parametrize("point", ["before_commit", "before_ack"])
def test_sigkill_around_the_commit_loses_and_repeats_nothing(
    admin, cleanup, tmp_path: Path, point: str, store_url: str
):
    osel = OselProcess(tmp_path, store_url=store_url)
    try:
        osel.start()  # declares the queue, loads the inventory
        assert osel.stop() == 0
        ips, rule_id = build(admin, cleanup)  # waits in osel's queue meanwhile
        osel.start(env={"OSEL_CRASH_AT": f"{point}:1"})
        assert osel.wait_exit() == -9
        if point == "before_commit":
            assert osel.records() == []
        osel.start()
        added = osel.wait_records(
            lambda r: (
                r["change_type"] == "sg_rule_add" and r["security_group_rule"]["id"] == rule_id
            ),
            len(ips),
        )
        assert sorted(r["affected_ip_address"] for r in added) == ips
        counts = change_counts(osel.records())
        assert counts and set(counts.values()) == {1}, counts
    finally:
        osel.close()


def test_a_ceilometer_style_consumer_keeps_receiving_everything(admin, cleanup, osel):
    """A consumer bound the way Ceilometer binds (exchange neutron, key
    notifications.info) gets every notification while osel consumes its own queue.

    (The test stack's real Ceilometer, when it runs, consumes the shared
    notifications.info queue itself, so the test binds a queue of its own with
    the same binding rather than competing with it.)
    """
    params = pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F")
    conn = pika.BlockingConnection(params)
    channel = conn.channel()
    theirs_queue = f"ceilometer-like-{uuid.uuid4().hex[:8]}"
    channel.queue_declare(theirs_queue, exclusive=True)
    channel.queue_bind(theirs_queue, "neutron", "notifications.info")
    osel.start()
    ips, rule_id = build(admin, cleanup)
    osel.wait_records(
        lambda r: r["change_type"] == "sg_rule_add" and r["security_group_rule"]["id"] == rule_id,
        len(ips),
    )
    theirs: set[str] = set()
    while True:
        method, _props, body = channel.basic_get(theirs_queue, auto_ack=True)
        if method is None:
            break
        envelope = json.loads(body)
        theirs.add(json.loads(envelope["oslo.message"])["message_id"])
    conn.close()
    ours = {r["message_id"] for r in osel.records() if r["record_type"] == "change"}
    assert ours, "osel recorded nothing"
    assert ours <= theirs  # every message osel acted on also reached the other consumer
    assert len(theirs) >= 10  # nets, subnets, router, group, ports, fip, rule: all of them
