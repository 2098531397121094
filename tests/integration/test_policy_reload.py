"""SIGHUP reloads the policy of a running `osel run`, with messages flowing."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import pika
import pytest
import yaml

from tests import messages as m
from tests.integration.osel_process import AMQP_URL, OselProcess, Record

pytestmark = pytest.mark.integration

EXCEPTION = {
    "name": "web-https",
    "match": {"project_id": "p1", "protocol": "tcp", "ports": 443, "remote": "0.0.0.0/0"},
    "owner": "team-web",
    "reason": "public web tier",
    "ticket": "SEC-77",
    "expires": "2099-01-01",
}


def publish(queue: str, *bodies: bytes) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = conn.channel()
        for body in bodies:
            channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    finally:
        conn.close()


def port_create(sg: str, address: str) -> tuple[str, bytes]:
    pid = f"port-{uuid.uuid4()}"
    body = m.envelope(m.notification("port.create.end", {"port": m.port(pid, [address], [sg])}))
    return pid, body


def of_port(pid: str) -> Callable[[Record], bool]:
    def match(r: Record) -> bool:
        return r["record_type"] == "change" and r.get("port_id") == pid

    return match


def test_sighup_swaps_a_valid_policy_and_keeps_the_old_one_when_invalid(tmp_path: Path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    osel = OselProcess(tmp_path, window_seconds=0.2, extra={"policy": {"file": str(policy)}})
    try:
        osel.start()
        sg = f"sg-{uuid.uuid4()}"
        group = {
            "id": sg,
            "project_id": "p1",
            "security_group_rules": [m.rule(sg, low=443, high=443)],
        }
        first, body = port_create(sg, "203.0.113.201")
        publish(
            osel.queue,
            m.envelope(m.notification("security_group.create.end", {"security_group": group})),
            body,
        )
        (before,) = osel.wait_records(of_port(first), 1)
        assert before["scan_state"] == "queued" and before["policy_action"] == "scan"

        policy.write_text(yaml.safe_dump({"version": 1, "exceptions": [EXCEPTION]}))
        offset = len(osel.log.read_text(errors="replace"))
        assert osel.proc is not None
        osel.proc.send_signal(signal.SIGHUP)
        osel.wait_for_log("reloaded: 1 exception(s), 0 rule(s)", after=offset)
        second, body = port_create(sg, "203.0.113.202")
        publish(osel.queue, body)
        (after,) = osel.wait_records(of_port(second), 1)
        assert after["scan_state"] == "record_only"
        assert after["policy_rule"] == "web-https" and "SEC-77" in after["qualys_scan_error"]

        # an invalid file: reported, the policy in force stays, nothing is lost meanwhile
        policy.write_text(
            yaml.safe_dump({"version": 1, "exceptions": [{**EXCEPTION, "ticket": ""}]})
        )
        offset = len(osel.log.read_text(errors="replace"))
        pids = []
        for n in range(6):
            pid, body = port_create(sg, f"203.0.113.{210 + n}")
            pids.append(pid)
            publish(osel.queue, body)
            if n == 2:
                osel.proc.send_signal(signal.SIGHUP)
        osel.wait_for_log("not reloaded; the policy in force stays", after=offset)
        assert "exceptions[0].ticket" in osel.log.read_text(errors="replace")[offset:]
        for pid in pids:
            (record,) = osel.wait_records(of_port(pid), 1, timeout=30)
            assert record["scan_state"] == "record_only"
        assert osel.proc.poll() is None
        assert osel.queue_depth() == 0
    finally:
        osel.close()
