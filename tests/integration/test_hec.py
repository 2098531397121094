"""The Splunk HEC sink against the HEC simulator over real HTTP on 127.0.0.1.

The simulator (simulators/hec.py) is not Splunk: it answers as Splunk's
documentation says HEC does, and can be made to fail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from osel.backoff import BackoffPolicy
from osel.config import Settings
from osel.daemon import Daemon
from osel.model import FloatingIP, Port, SecurityGroup
from osel.outbox import Outbox, sink_status
from osel.sinks.hec import HecSink, HecUnavailable
from osel.store.store import Batch, Store
from simulators.hec import HecSimulator, RunningSimulator, Token
from tests import messages as m
from tests.fakes import FakeNeutron, FakeSource
from tests.integration.test_syslog import CA, rsyslog

pytestmark = pytest.mark.integration

TOKEN = str(uuid.uuid4())
FAST = BackoffPolicy(initial=0.05, cap=0.5)


@pytest.fixture
def sim() -> Iterator[tuple[HecSimulator, str]]:
    simulator = HecSimulator({TOKEN: Token(ack=True, indexes={"security"})})
    with RunningSimulator(simulator) as running:
        yield simulator, running.url


@pytest.fixture
async def store(store_url: str):
    s = Store(store_url)
    await s.migrate()
    yield s
    await s.close()


def record(i: int) -> dict[str, Any]:
    return {
        "source_type": "osel2.0",
        "record_type": "change",
        "record_id": str(uuid.uuid4()),
        "sequence": i,
        "change_type": "sg_rule_add",
        "timestamp": "2026-11-28T04:44:08.865386Z",
        "affected_ip_address": f"203.0.113.{i % 250}",
        "internet_exposed": True,
        "opened": [{"protocol": "tcp", "port_range_min": 22, "port_range_max": 22}],
    }


async def wait_for(predicate: Any, state: Any = None) -> None:
    """Wait up to 60 s; on a timeout, fail with `state()` (what was seen) in the message."""
    try:
        async with asyncio.timeout(60):
            while not predicate():  # noqa: ASYNC110 - the simulator's state has no event
                await asyncio.sleep(0.02)
    except TimeoutError:
        if state is None:
            raise
        raise AssertionError(f"still waiting after 60 s: {state()}") from None


def delivery_state(simulator: HecSimulator, sink: HecSink, outbox: Outbox) -> str:
    """Both sides of an acknowledged delivery, for a test that times out."""
    indexed = len(counts(simulator))  # takes the simulator's lock itself
    with simulator.lock:
        pending = {channel: sorted(state.pending) for channel, state in simulator.channels.items()}
        requests = Counter((kind, status) for kind, status, _ in simulator.requests)
    return (
        f"indexed {indexed} distinct records; simulator requests {dict(requests)}, "
        f"acks not reported yet {pending}, acks reported {simulator.acks_reported}; sink "
        f"requests {sink.requests}, resent {sink.resent_requests}; outbox health "
        f"{outbox.health.get(sink.sink_id)}"
    )


def counts(simulator: HecSimulator) -> Counter[str]:
    return Counter(e["event"]["record_id"] for e in simulator.events())


async def test_busy_then_late_out_of_order_acks_every_record_exactly_once(sim, store: Store):
    simulator, url = sim
    simulator.busy(seconds=1.5)  # 503 "Server is busy" for a while
    simulator.ack_delays([0.6, 0.1, 0.35, 0.05, 0.2])  # late, and later ids before earlier
    sink = HecSink(sink_id="splunk_hec:sim", url=url, token=TOKEN, instance="osel-test",
                   index="security", ack=True, max_batch_bytes=4000,
                   poll_initial=0.02, poll_max=0.2)  # fmt: skip
    outbox = Outbox(store, [sink], chunk=40, idle_seconds=0.05, backoff=FAST)
    stop = asyncio.Event()
    runner = asyncio.create_task(outbox.run_sink(sink, stop))
    ids: list[str] = []
    try:
        for start in range(0, 200, 25):
            batch = [record(i) for i in range(start, start + 25)]
            ids += [r["record_id"] for r in batch]
            await store.commit(Batch(records=batch))
            outbox.wake.set()
            await asyncio.sleep(0.05)
        state = lambda: delivery_state(simulator, sink, outbox)  # noqa: E731
        await wait_for(lambda: outbox.health[sink.sink_id].state == "retrying", state)
        await wait_for(lambda: len(counts(simulator)) == 200, state)
        await wait_for(lambda: outbox.health[sink.sink_id].state == "ok", state)
    finally:
        stop.set()
        await runner
        await sink.close()
    assert counts(simulator) == Counter(ids)  # every record, each exactly once
    assert all(e["index"] == "security" for e in simulator.events())
    assert await store.cursor(sink.sink_id) == 200
    statuses = Counter(status for kind, status, _ in simulator.requests if kind == "event")
    assert statuses[503] > 0 and statuses[200] > 1
    assert simulator.acks_reported != sorted(simulator.acks_reported)  # out of order
    # one request per ackId: nothing acknowledged was ever posted again
    assert len(simulator.acks_reported) == statuses[200]


def daemon_settings(tmp_path: Path, url: str, token_file: Path, store_url: str) -> Settings:
    return Settings.model_validate(
        {
            "service": {"instance_name": "osel-test"},
            "scan": {"backend": "dry-run", "window_seconds": 0},
            "store": {"url": store_url},
            "audit": {
                "sinks": [
                    {"type": "file", "path": str(tmp_path / "audit.jsonl")},
                    {
                        "type": "splunk_hec",
                        "url": url,
                        "token_file": str(token_file),
                        "index": "security",
                        "ack": True,
                    },
                ]
            },
            "openstack": {"resync_minutes": 0},
            "http": {"enabled": False},
        }
    )


def neutron_world() -> FakeNeutron:
    n = FakeNeutron()
    n.groups = {"sg1": SecurityGroup("sg1", "p1")}
    n.ports = {"p1": Port.from_neutron(m.port("p1", ["10.0.0.1"], ["sg1"]))}
    n.fips = {"f1": FloatingIP("f1", "203.0.113.10", "p1", "10.0.0.1", "p1")}
    return n


def file_records(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


async def test_a_bad_token_one_error_line_records_wait_then_go_out_after_a_restart(
    sim, tmp_path: Path, caplog, store_url: str
):
    simulator, url = sim
    token_file = tmp_path / "hec.token"
    token_file.write_text("00000000-dead-beef-0000-000000000000\n")
    settings = daemon_settings(tmp_path, url, token_file, store_url)
    hec_id = f"splunk_hec:{url}"
    source = FakeSource()
    daemon = Daemon(settings, neutron=neutron_world(), source=source, backoff=FAST)
    stop = asyncio.Event()
    with caplog.at_level(logging.INFO):
        runner = asyncio.create_task(daemon.run(stop))
        for rid in ("r1", "r2", "r3"):
            rule = m.rule("sg1", rid=rid, low=22 + len(rid), high=22 + len(rid))
            source.publish(m.envelope(m.notification("security_group_rule.create.end",
                                                     {"security_group_rule": rule})))  # fmt: skip
        await wait_for(lambda: len(file_records(tmp_path)) >= 6)  # the file sink goes on
        await wait_for(lambda: daemon.outbox.health[hec_id].state == "stopped")
        await asyncio.sleep(1.0)  # time for more lines, if the sink were to retry
        stop.set()
        assert await runner == 0
    about_hec = [r for r in caplog.records if hec_id in r.getMessage()]
    assert len(about_hec) == 1, [r.getMessage() for r in about_hec]
    line = about_hec[0]
    assert line.levelno == logging.ERROR
    assert "HEC refused the token" in line.getMessage() and "Invalid token" in line.getMessage()
    assert "token_file" in line.getMessage() and "restart" in line.getMessage()
    assert "dead-beef" not in caplog.text and TOKEN not in caplog.text
    assert simulator.events() == []
    written = file_records(tmp_path)
    store = Store(settings.store.url.get_secret_value())
    (status,) = await sink_status(store, [hec_id])
    assert (status["state"], status["behind"]) == ("stopped", len(written))
    await store.close()

    token_file.write_text(TOKEN + "\n")  # the token is fixed and osel restarted
    fixed = Daemon(daemon_settings(tmp_path, url, token_file, store_url), neutron=neutron_world(),
                   source=FakeSource(), backoff=FAST)  # fmt: skip
    stop = asyncio.Event()
    runner = asyncio.create_task(fixed.run(stop))
    await wait_for(lambda: len(counts(simulator)) == len(written))
    await wait_for(lambda: fixed.outbox.health[hec_id].state == "ok")
    stop.set()
    assert await runner == 0
    assert counts(simulator) == Counter(r["record_id"] for r in written)  # each once
    assert [e["event"] for e in simulator.events()] == written  # in commit order
    store = Store(settings.store.url.get_secret_value())
    (status,) = await sink_status(store, [hec_id])
    assert (status["state"], status["behind"]) == ("ok", 0)
    await store.close()


async def test_https_with_a_ca_file_and_verification_on_by_default(store: Store):
    rsyslog("up")  # it keeps the test CA this test's server certificate comes from
    simulator = HecSimulator({TOKEN: Token()})
    with RunningSimulator(simulator, certfile=str(CA / "server.pem"),
                          keyfile=str(CA / "server.key")) as running:  # fmt: skip
        await store.commit(Batch(records=[record(1), record(2)]))
        untrusted = HecSink(sink_id="splunk_hec:tls", url=running.url, token=TOKEN,
                            instance="osel-test")  # fmt: skip
        with pytest.raises(HecUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await Outbox(store, [untrusted]).drain_once(untrusted)
        await untrusted.close()
        trusted = HecSink(sink_id="splunk_hec:tls", url=running.url, token=TOKEN,
                          instance="osel-test", ca_file=str(CA / "ca.pem"))  # fmt: skip
        assert await Outbox(store, [trusted]).drain_once(trusted) == 2
        await trusted.close()
    assert len(simulator.events()) == 2
