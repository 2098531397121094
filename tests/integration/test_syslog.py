"""The syslog sink against a real rsyslog on loopback (scripts/rsyslog.sh): UDP, TCP, TLS."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from osel.config import SyslogSink as SyslogSettings
from osel.outbox import Outbox
from osel.sinks.syslog import SyslogSink, SyslogUnavailable
from osel.store.store import Batch, Store

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
RSYSLOG_DIR = Path(os.environ.get("OSEL_RSYSLOG_DIR", Path.home() / ".cache" / "osel-rsyslog"))
PORTS = {
    "udp": int(os.environ.get("OSEL_RSYSLOG_UDP_PORT", "15514")),
    "tcp": int(os.environ.get("OSEL_RSYSLOG_TCP_PORT", "15601")),
    "tls": int(os.environ.get("OSEL_RSYSLOG_TLS_PORT", "16514")),
    "mtls": int(os.environ.get("OSEL_RSYSLOG_MTLS_PORT", "16515")),
}
CA = RSYSLOG_DIR / "ca"

RFC5424 = re.compile(
    r"^<(?P<pri>\d{1,3})>1 "
    r"(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)) "
    r"(?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) "
    r"(?P<msgid>[!-~]{1,32}) "
    r'(?P<sd>-|(?:\[[^ =\]"]{1,32}(?: [^ =\]"]{1,32}="(?:[^"\\\]]|\\["\\\]])*")*\])+)'
    r"(?: (?P<msg>.*))?$",
    re.S,
)


def rsyslog(command: str) -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "rsyslog.sh"), command],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.fail(f"scripts/rsyslog.sh {command} failed:\n{done.stdout}{done.stderr}")


@pytest.fixture(scope="module", autouse=True)
def rsyslog_up() -> None:
    rsyslog("up")


def received(listener: str, mark: str) -> list[dict[str, Any]]:
    path = RSYSLOG_DIR / "out" / f"{listener}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if mark in line]


def wait_received(
    listener: str, mark: str, count: int, timeout: float = 30
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = received(listener, mark)
        if len(got) >= count:
            return got
        time.sleep(0.05)
    raise AssertionError(f"rsyslog {listener} has {len(received(listener, mark))} of {count}")


def change_record(mark: str, i: int) -> dict[str, Any]:
    """An audit record shaped like the pipeline's (docs/audit-records.md)."""
    return {
        "source_type": "osel2.0",
        "record_type": "change",
        "record_id": str(uuid.uuid4()),
        "test_mark": mark,
        "sequence": i,
        "change_type": "sg_rule_add" if i % 2 else "fip_associate",
        "event_type": "security_group_rule.create.end",
        "message_id": str(uuid.uuid4()),
        "timestamp": "2026-11-28T04:44:08.865386Z",
        "observed_at": "2026-11-28T04:44:08.901233Z",
        "project_id": "5a89e4c1f2b84a2d9d1c0b6e7f3a2d11",
        "security_group_id": "f32f7093-6f5e-4c55-9d0b-1d2e3f4a5b6c",
        "port_id": "1b8d41e2-0000-4000-8000-000000000001",
        "floating_ip_id": "",
        "security_group_rule": {
            "id": "5eca963e-0000-4000-8000-000000000002",
            "direction": "ingress",
            "ethertype": "IPv4",
            "protocol": "tcp",
            "port_range_min": 22,
            "port_range_max": 22,
            "remote_ip_prefix": "0.0.0.0/0",
            "remote_group_id": None,
        },
        "affected_ip_address": f"203.0.113.{i % 250}",
        "internet_exposed": True,
        "opened": [{"protocol": "tcp", "port_range_min": 22, "port_range_max": 22,
                    "remote": "0.0.0.0/0", "note": 'quote " and ] and \\ and é'}],
        "closed": [],
        "scan_state": "queued",
        "qualys_scan_id": "",
        "qualys_scan_error": "",
        "source_message_bus": "127.0.0.1",
        "osel_instance": "osel-test",
    }  # fmt: skip


async def commit(store: Store, mark: str, numbers: range) -> None:
    await store.commit(Batch(records=[change_record(mark, i) for i in numbers]))


@pytest.fixture
async def store(store_url: str):
    s = Store(store_url)
    await s.migrate()
    yield s
    await s.close()


def settings(listener: str, **extra: Any) -> SyslogSettings:
    protocol = "tls" if listener in ("tls", "mtls") else listener
    values: dict[str, Any] = {"host": "127.0.0.1", "port": PORTS[listener], "protocol": protocol}
    if protocol == "tls":
        values["ca_file"] = str(CA / "ca.pem")
    if listener == "mtls":
        values |= {"cert_file": str(CA / "client.pem"), "key_file": str(CA / "client.key")}
    return SyslogSettings(**(values | extra))


def check_rfc5424(line: dict[str, Any], stored: dict[str, Any]) -> None:
    """rsyslog parsed it as RFC 5424, and so does a strict parser; the JSON is intact."""
    assert line["version"] == "1", line
    assert (line["app_name"], line["hostname"]) == ("osel", "osel-test")
    assert line["msgid"] == stored["change_type"]
    assert f'record_id="{stored["record_id"]}"' in line["structured_data"]
    assert json.loads(line["msg"]) == stored
    match = RFC5424.match(line["raw"])
    assert match is not None, line["raw"][:300]
    assert match["msgid"] == stored["change_type"]
    assert json.loads(match["msg"]) == stored
    assert match["ts"] == "2026-11-28T04:44:08.865386Z"


@pytest.mark.parametrize(
    ("listener", "framing"),
    [
        ("udp", "octet_counting"),
        ("tcp", "octet_counting"),
        ("tcp", "newline"),
        ("tls", "octet_counting"),
        ("mtls", "octet_counting"),
    ],
)
async def test_rsyslog_receives_every_record_as_rfc5424(store: Store, listener: str, framing: str):
    mark = uuid.uuid4().hex
    await commit(store, mark, range(1, 61))
    sink = SyslogSink.from_settings(settings(listener, framing=framing), hostname="osel-test")
    outbox = Outbox(store, [sink], chunk=25)
    try:
        assert await outbox.drain_once(sink) == 60
    finally:
        await sink.close()
    lines = wait_received(listener, mark, 60)
    stored = [json.loads(body) for _, body in await store.records_after(0, 100)]
    assert len(lines) == 60
    assert [json.loads(x["msg"])["record_id"] for x in lines] == [r["record_id"] for r in stored]
    for line, record in zip(lines, stored, strict=True):
        check_rfc5424(line, record)
    assert await store.cursor(sink.sink_id) == 60


async def test_tls_verifies_the_receiver_by_default(store: Store):
    mark = uuid.uuid4().hex
    await commit(store, mark, range(1, 3))
    cfg = settings("tls").model_copy(update={"ca_file": None})  # the system CAs only
    sink = SyslogSink.from_settings(cfg, hostname="osel-test")
    with pytest.raises(SyslogUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        await Outbox(store, [sink]).drain_once(sink)
    await sink.close()
    assert await store.cursor(sink.sink_id) == 0  # the records wait
    unverified = SyslogSink.from_settings(
        cfg.model_copy(update={"verify": False}), hostname="osel-test"
    )
    assert await Outbox(store, [unverified]).drain_once(unverified) == 2
    await unverified.close()
    assert len(wait_received("tls", mark, 2)) == 2


async def test_a_receiver_that_requires_a_client_certificate_refuses_osel_without_one(
    store: Store,
):
    mark = uuid.uuid4().hex
    await commit(store, mark, range(1, 3))
    cfg = settings("mtls").model_copy(update={"cert_file": None, "key_file": None})
    sink = SyslogSink.from_settings(cfg, hostname="osel-test")
    with pytest.raises(SyslogUnavailable):
        await Outbox(store, [sink]).drain_once(sink)
    await sink.close()
    assert await store.cursor(sink.sink_id) == 0
    await asyncio.sleep(0.3)
    assert received("mtls", mark) == []


async def test_udp_to_a_port_nobody_listens_on_is_noticed_and_the_records_wait(store: Store):
    mark = uuid.uuid4().hex
    await commit(store, mark, range(1, 3))
    cfg = SyslogSettings(host="127.0.0.1", port=PORTS["udp"] + 7, protocol="udp")
    sink = SyslogSink.from_settings(cfg, hostname="osel-test")
    with pytest.raises(SyslogUnavailable, match="Connection refused"):
        await Outbox(store, [sink]).drain_once(sink)
    await sink.close()
    assert await store.cursor(sink.sink_id) == 0
