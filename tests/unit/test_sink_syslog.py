"""The syslog sink without sockets: message formats, framing, resending on a broken connection."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from osel.config import SyslogSink as SyslogSettings
from osel.model import FloatingIP, Port, SecurityGroup
from osel.outbox import PermanentSinkError
from osel.sinks.syslog import (
    UDP_MAX_PAYLOAD,
    PartialDelivery,
    SyslogSink,
    SyslogUnavailable,
    frame,
    structured_data,
    tls_context,
)
from tests import messages as m
from tests.unit.conftest import Harness

# RFC 5424 section 6, strictly: HEADER SP STRUCTURED-DATA [SP MSG]
RFC5424 = re.compile(
    r"^<(?P<pri>\d{1,3})>1 "
    r"(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)) "
    r"(?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) "
    r"(?P<msgid>[!-~]{1,32}) "
    r'(?P<sd>-|(?:\[[^ =\]"]{1,32}(?: [^ =\]"]{1,32}="(?:[^"\\\]]|\\["\\\]])*")*\])+)'
    r"(?: (?P<msg>.*))?$",
    re.S,
)
SD_PARAM = re.compile(r'([^ =\]"]{1,32})="((?:[^"\\\]]|\\["\\\]])*)"')


def parse5424(message: bytes) -> dict[str, Any]:
    match = RFC5424.match(message.decode("utf-8"))
    assert match is not None, f"not RFC 5424: {message[:200]!r}"
    parts = match.groupdict()
    sd = parts["sd"]
    assert sd.startswith("[osel@32473")
    parts["params"] = {
        k: re.sub(r"\\([\"\\\]])", r"\1", v) for k, v in SD_PARAM.findall(sd[len("[osel@32473") :])
    }
    return parts


def sink(**kw: Any) -> SyslogSink:
    kw.setdefault("connector", FakeConnector())
    return SyslogSink(sink_id="syslog:test", protocol=kw.pop("protocol", "tcp"), hostname="osel-1",
                      now=lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), **kw)  # fmt: skip


def body(i: int, **extra: Any) -> str:
    record = {
        "record_id": f"rec-{i}",
        "record_type": "change",
        "change_type": "sg_rule_add",
        "timestamp": "2026-11-28T04:44:08.865386Z",
        "affected_ip_address": f"203.0.113.{i}",
        "internet_exposed": True,
        "project_id": "p1",
        **extra,
    }
    return json.dumps(record, sort_keys=True)


class FakeConnection:
    def __init__(self, owner: FakeConnector) -> None:
        self.owner = owner
        self.alive = True
        self.closed = False

    def usable(self) -> bool:
        return self.alive

    def deliver(self, payloads: list[bytes], deadline: float) -> int:
        if self.owner.break_after is not None:
            n, self.owner.break_after = self.owner.break_after, None
            self.owner.received += payloads[:n]
            raise PartialDelivery(n, ConnectionResetError("connection reset by peer"))
        self.owner.received += payloads
        return len(payloads)

    def close(self) -> None:
        self.closed = True


class FakeConnector:
    def __init__(self) -> None:
        self.opened: list[FakeConnection] = []
        self.received: list[bytes] = []
        self.refuse = False
        self.break_after: int | None = None

    def open(self, deadline: float) -> FakeConnection:
        if self.refuse:
            raise ConnectionRefusedError(111, "Connection refused")
        conn = FakeConnection(self)
        self.opened.append(conn)
        return conn


def unframe(data: bytes) -> bytes:
    length, _, rest = data.partition(b" ")
    assert int(length) == len(rest)
    return rest


# --- formats -------------------------------------------------------------------


def test_rfc5424_carries_the_record_unchanged_with_key_fields_as_structured_data():
    s = sink()
    text = body(7, security_group_id="sg-1", qualys_scan_id="", note='a "quoted" ] \\ value')
    parts = parse5424(s.message(text))
    assert json.loads(parts["msg"]) == json.loads(text)
    assert parts["msg"] == text
    assert parts["pri"] == str(20 * 8 + 5)  # local4, notice: internet-exposed
    assert parts["ts"] == "2026-11-28T04:44:08.865386Z"  # the change's time
    assert (parts["host"], parts["app"], parts["msgid"]) == ("osel-1", "osel", "sg_rule_add")
    assert parts["params"]["record_id"] == "rec-7"
    assert parts["params"]["security_group_id"] == "sg-1"
    assert parts["params"]["internet_exposed"] == "true"
    assert "qualys_scan_id" not in parts["params"]  # empty fields are left out


def test_structured_data_values_are_escaped():
    s = sink()
    parts = parse5424(s.message(body(1, project_id='x"y]z\\')))
    assert parts["params"]["project_id"] == 'x"y]z\\'


async def test_rfc5424_for_the_records_the_pipeline_makes(harness: Harness):
    n = harness.neutron
    n.groups = {"sg1": SecurityGroup("sg1", "p1")}
    n.ports = {"p1": Port.from_neutron(m.port("p1", ["10.0.0.1"], ["sg1"]))}
    n.fips = {"f1": FloatingIP("f1", "203.0.113.10", "p1", "10.0.0.1", "p1")}
    rule = m.rule("sg1", rid="r1")
    await harness.feed(
        m.envelope(m.notification("security_group_rule.create.end", {"security_group_rule": rule}))
    )
    rows = await harness.store.records_after(0, 100)
    assert len(rows) == 2
    s = sink()
    for _, text in rows:
        parts = parse5424(s.message(text))
        record = json.loads(text)
        assert json.loads(parts["msg"]) == record
        assert parts["msgid"] == record["change_type"] == "sg_rule_add"
        assert parts["params"]["affected_ip_address"] == record["affected_ip_address"]
        assert parts["params"]["security_group_id"] == "sg1"


def test_timestamps_are_normalised_to_utc_and_fall_back_to_now():
    s = sink()
    assert parse5424(s.message(body(1, timestamp="2026-11-28T05:44:08+01:00")))["ts"] == (
        "2026-11-28T04:44:08.000000Z"
    )
    assert parse5424(s.message(body(1, timestamp="garbage", observed_at="")))["ts"] == (
        "2026-01-02T03:04:05.000000Z"
    )
    not_json = parse5424(s.message("not json"))
    assert not_json["msg"] == "not json" and not_json["msgid"] == "-"


def test_header_fields_are_printable_ascii():
    s = sink(app_name="o sel")
    s.hostname = "host with spaces"
    parts = parse5424(s.message(body(1, change_type="weird type")))
    assert (parts["host"], parts["app"], parts["msgid"]) == (
        "host_with_spaces",
        "o_sel",
        "weird_type",
    )


def test_rfc3164_format():
    s = sink(format="rfc3164", facility="local0")
    text = body(3, timestamp="2026-03-05T07:08:09Z", internet_exposed=False)
    msg = s.message(text)
    assert msg.decode() == f"<134>Mar  5 07:08:09 osel-1 osel[{s.procid}]: {text}"


def test_framing():
    assert frame(b"<1>1 - - - - - - x", "octet_counting") == b"18 <1>1 - - - - - - x"
    assert frame(b"a\nb", "newline") == b"a b\n"


# --- delivery --------------------------------------------------------------------


async def test_records_go_out_in_order_on_one_connection():
    s = sink()
    c: FakeConnector = s.connector  # type: ignore[assignment]
    await s.send([(1, body(1)), (2, body(2))])
    await s.send([(3, body(3))])
    assert len(c.opened) == 1
    ids = [parse5424(unframe(p))["params"]["record_id"] for p in c.received]
    assert ids == ["rec-1", "rec-2", "rec-3"]


async def test_newline_framing_on_the_wire():
    s = sink(framing="newline")
    c: FakeConnector = s.connector  # type: ignore[assignment]
    await s.send([(1, body(1))])
    assert c.received[0].endswith(b"\n") and c.received[0].count(b"\n") == 1
    parse5424(c.received[0][:-1])


async def test_a_broken_connection_is_reopened_and_only_the_unconfirmed_records_resent():
    s = sink()
    c: FakeConnector = s.connector  # type: ignore[assignment]
    c.break_after = 2  # the receiver confirmed two of five, then the connection broke
    records = [(i, body(i)) for i in range(1, 6)]
    with pytest.raises(SyslogUnavailable, match="3 record\\(s\\) unconfirmed"):
        await s.send(records)
    assert c.opened[0].closed
    await s.send(records)  # the outbox retries the same records
    ids = [parse5424(unframe(p))["params"]["record_id"] for p in c.received]
    assert ids == [f"rec-{i}" for i in range(1, 6)]
    assert len(c.opened) == 2


async def test_a_connection_the_receiver_closed_is_not_written_to():
    s = sink()
    c: FakeConnector = s.connector  # type: ignore[assignment]
    await s.send([(1, body(1))])
    c.opened[0].alive = False
    await s.send([(2, body(2))])
    assert len(c.opened) == 2 and c.opened[0].closed
    assert len(c.received) == 2


async def test_refused_connection_is_retried_later():
    s = sink()
    c: FakeConnector = s.connector  # type: ignore[assignment]
    c.refuse = True
    with pytest.raises(SyslogUnavailable, match="Connection refused"):
        await s.send([(1, body(1))])
    c.refuse = False
    await s.send([(1, body(1))])
    assert len(c.received) == 1


async def test_a_record_too_large_for_udp_stops_the_sink_with_advice():
    s = sink(protocol="udp")
    with pytest.raises(PermanentSinkError, match=r"record 9 is .* set protocol: tcp or tls"):
        await s.send([(9, body(9, blob="x" * UDP_MAX_PAYLOAD))])


def test_an_unreadable_ca_file_is_a_permanent_error_naming_the_key(tmp_path):
    with pytest.raises(PermanentSinkError, match=r"syslog:x: cannot load ca_file .*missing\.pem"):
        tls_context("syslog:x", ca_file=str(tmp_path / "missing.pem"), cert_file=None,
                    key_file=None, verify=True)  # fmt: skip


def test_from_settings():
    cfg = SyslogSettings(host="127.0.0.1", port=1514, protocol="tcp", framing="newline",
                         format="rfc3164", facility="auth", app_name="audit")  # fmt: skip
    s = SyslogSink.from_settings(cfg, hostname="osel-9")
    assert (s.sink_id, s.framing, s.format, s.facility, s.app_name, s.hostname) == (
        "syslog:127.0.0.1:1514", "newline", "rfc3164", 4, "audit", "osel-9"
    )  # fmt: skip


def test_what_the_policy_decided_is_in_the_structured_data():
    sd = structured_data(
        {"record_id": "r1", "policy_rule": "web-tier", "policy_action": "record_only"}
    )
    assert 'policy_rule="web-tier"' in sd and 'policy_action="record_only"' in sd
    assert "policy_rule" not in structured_data({"record_id": "r1", "policy_rule": ""})
