"""The outbox with failing sinks: retries, a permanent stop said once, lag and state."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from osel.backoff import BackoffPolicy
from osel.cli import main
from osel.outbox import MetaStore, Outbox, PermanentSinkError, sink_status
from osel.store.store import Batch, Store


def record(i: int) -> dict[str, Any]:
    return {
        "record_id": f"00000000-0000-0000-0000-{i:012d}",
        "record_type": "change",
        "change_type": "sg_rule_add",
        "affected_ip_address": f"203.0.113.{i}",
        "internet_exposed": True,
    }


async def commit(store: Store, *numbers: int) -> None:
    await store.commit(Batch(records=[record(i) for i in numbers]))


class ListSink:
    """Keeps what it is sent; fails as told."""

    def __init__(self, sink_id: str, failures: list[Exception] | None = None) -> None:
        self.sink_id = sink_id
        self.failures = list(failures or [])
        self.got: list[str] = []
        self.calls = 0

    async def send(self, records: list[tuple[int, str]]) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        self.got += [json.loads(body)["record_id"] for _, body in records]

    async def close(self) -> None:
        return None


class StatefulListSink(ListSink):
    def __init__(self, sink_id: str) -> None:
        super().__init__(sink_id)
        self.attached: list[MetaStore] = []

    async def attach(self, meta: MetaStore) -> None:
        self.attached.append(meta)


async def run_until(outbox: Outbox, done: Any, *sinks: ListSink) -> None:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(outbox.run_sink(s, stop)) for s in sinks]
    try:
        async with asyncio.timeout(10):
            while not done():  # noqa: ASYNC110 - the sinks' state has no event to wait on
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


FAST = BackoffPolicy(initial=0.01, cap=0.05)


async def test_a_permanent_error_stops_that_sink_once_and_its_records_wait(store: Store, caplog):
    await commit(store, 1, 2, 3)
    bad = ListSink(
        "splunk_hec:bad", [PermanentSinkError("audit sink splunk_hec:bad: fix the token")]
    )
    good = ListSink("file:good")
    outbox = Outbox(store, [bad, good], backoff=FAST, idle_seconds=0.01)
    stop = asyncio.Event()
    with caplog.at_level(logging.INFO, logger="osel.outbox"):
        bad_task = asyncio.create_task(outbox.run_sink(bad, stop))
        good_task = asyncio.create_task(outbox.run_sink(good, stop))
        await asyncio.wait_for(bad_task, 5)  # the stopped sink's loop ends by itself
        await commit(store, 4)
        outbox.wake.set()
        async with asyncio.timeout(5):
            while len(good.got) < 4:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        stop.set()
        await good_task
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1
    line = errors[0].getMessage()
    assert "audit sink splunk_hec:bad stopped: audit sink splunk_hec:bad: fix the token" in line
    assert "3 undelivered record(s) wait" in line and "restarted" in line
    assert bad.calls == 1 and bad.got == []
    assert await store.cursor("splunk_hec:bad") == 0
    assert await outbox.drain_once(bad) == 0 and bad.calls == 1  # stopped until a restart
    status = {s["sink"]: s for s in await outbox.status()}
    assert status["splunk_hec:bad"]["state"] == "stopped"
    assert status["splunk_hec:bad"]["behind"] == 4
    assert status["splunk_hec:bad"]["oldest_seconds"] is not None
    assert status["file:good"] == {**status["file:good"], "state": "ok", "behind": 0,
                                   "oldest_seconds": None}  # fmt: skip
    # what another process (osel audit status) reads from the store
    kept = {s["sink"]: s for s in await sink_status(store, ["splunk_hec:bad", "file:good"])}
    assert kept["splunk_hec:bad"]["state"] == "stopped"
    assert "fix the token" in kept["splunk_hec:bad"]["error"]
    # a restart with the problem fixed: the waiting records go out, in order
    fixed = ListSink("splunk_hec:bad")
    await Outbox(store, [fixed]).drain_once(fixed)
    assert fixed.got == [record(i)["record_id"] for i in (1, 2, 3, 4)]


async def test_failures_are_retried_with_backoff_and_nothing_is_lost(store: Store):
    await commit(store, 1, 2)
    flaky = ListSink("syslog:x", [ConnectionError("refused"), ConnectionError("refused")])
    outbox = Outbox(store, [flaky], backoff=FAST, idle_seconds=0.01)
    seen_retrying: list[str] = []

    def done() -> bool:
        if outbox.health["syslog:x"].state == "retrying":
            seen_retrying.append(outbox.health["syslog:x"].error)
        return len(flaky.got) == 2

    await run_until(outbox, done, flaky)
    assert flaky.got == [record(1)["record_id"], record(2)["record_id"]]
    assert flaky.calls == 3
    assert seen_retrying and "ConnectionError: refused" in seen_retrying[0]
    assert outbox.health["syslog:x"].state == "ok"
    assert (await outbox.status())[0]["behind"] == 0


async def test_a_stateful_sink_is_given_the_store_once(store: Store):
    await commit(store, 1)
    sink = StatefulListSink("splunk_hec:s")
    outbox = Outbox(store, [sink])
    await outbox.drain_once(sink)
    await commit(store, 2)
    await outbox.drain_once(sink)
    assert sink.attached == [store]
    assert len(sink.got) == 2


def test_audit_status_command(tmp_path: Path):
    db = tmp_path / "osel.db"
    config = tmp_path / "osel.yaml"
    token = tmp_path / "hec.token"
    token.write_text("SECRET-TOKEN-VALUE\n")
    config.write_text(yaml.safe_dump({
        "scan": {"backend": "dry-run"},
        "store": {"url": f"sqlite:///{db}"},
        "audit": {"sinks": [
            {"type": "file", "path": str(tmp_path / "audit.jsonl")},
            {"type": "splunk_hec", "url": "https://splunk:8088", "token_file": str(token)},
        ]},
    }))  # fmt: skip

    async def prepare() -> None:
        store = Store(f"sqlite:///{db}")
        await store.migrate()
        await commit(store, 1, 2, 3)
        bad = ListSink("splunk_hec:https://splunk:8088", [PermanentSinkError("fix the token")])
        good = ListSink(f"file:{tmp_path / 'audit.jsonl'}")
        outbox = Outbox(store, [bad, good], backoff=FAST)
        await outbox.run_sink(bad, asyncio.Event())
        await outbox.drain_once(good)
        await store.close()

    asyncio.run(prepare())
    result = CliRunner().invoke(main, ["audit", "status", "-c", str(config)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["sink", "behind", "oldest", "state"]
    hec_line = next(x for x in lines if x.startswith("splunk_hec:"))
    assert hec_line.split()[1] == "3" and " stopped since " in hec_line
    assert hec_line.endswith(": fix the token")
    file_line = next(x for x in lines if x.startswith("file:"))
    assert file_line.split()[1:] == ["0", "-", "unknown"]  # no daemon recorded its state
    as_json = CliRunner().invoke(main, ["audit", "status", "--json", "-c", str(config)])
    rows = [json.loads(x) for x in as_json.output.splitlines()]
    assert [(r["behind"], r["state"]) for r in rows] == [(0, "unknown"), (3, "stopped")]
    assert "SECRET-TOKEN-VALUE" not in result.output + as_json.output
