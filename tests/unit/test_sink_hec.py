"""The Splunk HEC sink against the HEC simulator in process (ASGI, no sockets)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from datetime import datetime
from typing import Any

import httpx
import pytest

from osel.config import SplunkHecSink as HecSettings
from osel.outbox import PermanentSinkError
from osel.sinks.hec import HecSink, HecUnavailable
from simulators.hec import HecSimulator, Token, create_app

TOKEN = "11111111-2222-3333-4444-555555555555"


class Meta:
    """The store's meta table, in memory."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    async def get_meta(self, key: str) -> str | None:
        return self.data.get(key)

    async def set_meta(self, key: str, value: str) -> None:
        self.data[key] = value


def simulator(**token: Any) -> HecSimulator:
    return HecSimulator({TOKEN: Token(**token)})


def hec(sim: HecSimulator, **kw: Any) -> HecSink:
    kw.setdefault("token", TOKEN)
    kw.setdefault("instance", "osel-1")
    kw.setdefault("poll_initial", 0.01)
    kw.setdefault("poll_max", 0.05)
    return HecSink(sink_id="splunk_hec:test", url="http://hec.test:8088",
                   transport=httpx.ASGITransport(app=create_app(sim)), **kw)  # fmt: skip


def record(i: int) -> tuple[int, str]:
    body = {
        "record_id": f"rec-{i}",
        "record_type": "change",
        "change_type": "sg_rule_add",
        "timestamp": "2026-11-28T04:44:08.865386Z",
        "affected_ip_address": f"203.0.113.{i % 250}",
        "internet_exposed": True,
    }
    return i, json.dumps(body, sort_keys=True)


def records(n: int, start: int = 1) -> list[tuple[int, str]]:
    return [record(i) for i in range(start, start + n)]


def indexed_ids(sim: HecSimulator) -> list[str]:
    return [e["event"]["record_id"] for e in sim.events()]


def event_requests(sim: HecSimulator, status: int | None = None) -> int:
    return sum(1 for kind, st, _ in sim.requests if kind == "event" and status in (None, st))


async def test_events_carry_the_record_and_its_metadata():
    sim = simulator()
    sink = hec(sim, index="security", host=None, source="osel")
    await sink.send(records(2))
    events = sim.events()
    assert [e["event"] for e in events] == [json.loads(b) for _, b in records(2)]
    first = events[0]
    change = datetime.fromisoformat("2026-11-28T04:44:08.865386Z").timestamp()
    assert first["time"] == pytest.approx(change, abs=0.001)
    assert (first["host"], first["source"], first["sourcetype"], first["index"]) == (
        "osel-1", "osel", "osel:audit", "security"
    )  # fmt: skip
    await sink.close()


async def test_several_events_per_request_up_to_the_size_limit():
    sim = simulator()
    one = len(hec(sim).event(record(1)[1]).encode())
    sink = hec(sim, max_batch_bytes=3 * one + 10)
    await sink.send(records(10))
    assert indexed_ids(sim) == [f"rec-{i}" for i in range(1, 11)]
    assert event_requests(sim) == 4  # 3 + 3 + 3 + 1
    await sink.close()


async def test_with_ack_a_record_counts_only_once_acknowledged_late_and_out_of_order():
    sim = simulator(ack=True)
    sim.ack_delays([0.3, 0.05, 0.15])
    one = len(hec(sim).event(record(1)[1]).encode())
    sink = hec(sim, ack=True, max_batch_bytes=2 * one + 10)
    task = asyncio.create_task(sink.send(records(6)))
    await asyncio.sleep(0.1)
    assert not task.done()  # ackId 0 is not ready yet: nothing may count as delivered
    await asyncio.wait_for(task, 5)
    assert sorted(indexed_ids(sim)) == sorted(f"rec-{i}" for i in range(1, 7))
    assert sim.acks_reported != sorted(sim.acks_reported)  # they came out of order
    assert sorted(sim.acks_reported) == [0, 1, 2]
    assert event_requests(sim) == 3
    await sink.close()


async def test_busy_hec_is_retried_without_sending_acknowledged_records_again():
    sim = simulator(ack=True)
    one = len(hec(sim).event(record(1)[1]).encode())
    sink = hec(sim, ack=True, max_batch_bytes=2 * one + 10)
    sim.busy(requests=2, after=1)  # the first request goes through, then 503 twice
    batch = records(6)
    with pytest.raises(HecUnavailable, match=r"503.*Server is busy"):
        await sink.send(batch)
    with pytest.raises(HecUnavailable):
        await sink.send(batch)
    await sink.send(batch)
    assert Counter(indexed_ids(sim)) == Counter(f"rec-{i}" for i in range(1, 7))
    assert event_requests(sim, 200) == 3  # nothing was posted twice
    await sink.close()


async def test_an_ack_that_never_comes_is_resent_after_the_timeout(caplog):
    sim = simulator(ack=True)
    sim.lose_acks(1)
    sink = hec(sim, ack=True, ack_timeout=0.2)
    with caplog.at_level(logging.WARNING, logger="osel.sinks.hec"):
        await asyncio.wait_for(sink.send(records(3)), 5)
    assert Counter(indexed_ids(sim)) == Counter(f"rec-{i}" for i in range(1, 4))
    assert sink.resent_requests == 1
    assert "no acknowledgement for ackId 0 (records 1..3)" in caplog.text
    assert "de-duplicate on record_id" in caplog.text
    await sink.close()


async def test_a_restarted_sink_polls_the_acks_it_was_waiting_for_instead_of_resending():
    sim = simulator(ack=True)
    sim.ack_delays([0.4])
    meta = Meta()
    first = hec(sim, ack=True)
    await first.attach(meta)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(first.send(records(3)), 0.1)  # osel stops while acks wait
    await first.close()
    again = hec(sim, ack=True)
    await again.attach(meta)
    assert again.channel == first.channel
    await asyncio.wait_for(again.send(records(3)), 5)
    assert indexed_ids(sim) == ["rec-1", "rec-2", "rec-3"]
    assert event_requests(sim) == 1  # polled, not posted again
    await again.close()


async def test_the_channel_is_one_per_instance_and_kept():
    meta = Meta()
    sim = simulator(ack=True)
    a, b = hec(sim, ack=True), hec(sim, ack=True, instance="osel-2")
    await a.attach(meta)
    await b.attach(meta)
    a2 = hec(sim, ack=True)
    await a2.attach(meta)
    assert a.channel == a2.channel != b.channel
    assert meta.data["hec_channel:osel-1"] == a.channel


@pytest.mark.parametrize("disabled", [False, True])
async def test_a_bad_or_disabled_token_stops_the_sink_with_a_clear_message(disabled):
    sim = simulator(disabled=disabled)
    sink = hec(sim, token=TOKEN if disabled else "not-the-token")
    with pytest.raises(PermanentSinkError) as caught:
        await sink.send(records(2))
    message = str(caught.value)
    assert message.startswith("audit sink splunk_hec:test: HEC refused the token")
    assert "token_file" in message and "restart osel" in message
    assert ("Token disabled" if disabled else "Invalid token") in message
    assert TOKEN not in message and "not-the-token" not in message
    before = len(sim.requests)
    with pytest.raises(PermanentSinkError):
        await sink.send(records(2))
    assert len(sim.requests) == before  # stopped: no more requests with that token
    assert sim.events() == []
    await sink.close()


async def test_an_index_the_token_may_not_write_to_is_permanent():
    sim = simulator(indexes={"main"})
    sink = hec(sim, index="security")
    with pytest.raises(PermanentSinkError, match=r"refused the index 'security'.*Incorrect index"):
        await sink.send(records(1))


async def test_ack_on_but_not_on_the_token_is_permanent():
    sim = simulator(ack=False)
    sink = hec(sim, ack=True)
    with pytest.raises(PermanentSinkError, match="no ackId: enable indexer acknowledgement"):
        await sink.send(records(1))


async def test_server_errors_are_retried_without_ack():
    sim = simulator()
    sim.busy(requests=1, code=8)
    sink = hec(sim)
    with pytest.raises(HecUnavailable, match="500"):
        await sink.send(records(2))
    await sink.send(records(2))
    assert indexed_ids(sim) == ["rec-1", "rec-2"]


async def test_unreachable_hec_is_retried():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    sink = HecSink(sink_id="splunk_hec:x", url="http://hec.test:8088", token=TOKEN,
                   instance="osel-1", transport=httpx.MockTransport(refuse))  # fmt: skip
    with pytest.raises(HecUnavailable, match="connection refused") as caught:
        await sink.send(records(1))
    assert TOKEN not in str(caught.value)


async def test_wrong_url_is_permanent():
    not_found = httpx.MockTransport(lambda r: httpx.Response(404, text="nope"))
    sink = HecSink(sink_id="splunk_hec:x", url="http://hec.test:8088", token=TOKEN,
                   instance="osel-1", transport=not_found)  # fmt: skip
    with pytest.raises(PermanentSinkError, match="no HTTP Event Collector at"):
        await sink.send(records(1))


def test_from_settings_and_no_token_in_repr(tmp_path):
    path = tmp_path / "hec.token"
    path.write_text(TOKEN + "\n")
    cfg = HecSettings(url="https://splunk:8088", token_file=str(path), index="security", ack=True)
    sink = HecSink.from_settings(cfg, instance="osel-7")
    assert (sink.sink_id, sink.host, sink.index, sink.ack, sink.sourcetype) == (
        "splunk_hec:https://splunk:8088", "osel-7", "security", True, "osel:audit"
    )  # fmt: skip
    assert TOKEN not in repr(sink) and TOKEN not in repr(vars(sink).get("requests"))
