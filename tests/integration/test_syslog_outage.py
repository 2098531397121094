"""rsyslog stopped for a while, then started: every record arrives, in order.

Duplicates: the sink documents that the batch in flight when a connection
breaks may be sent again (one batch per break, osel.sinks.syslog); nothing
else may arrive twice, and nothing may be missing.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from osel.backoff import BackoffPolicy
from osel.outbox import Outbox
from osel.sinks.syslog import SyslogSink
from osel.store.store import Store
from tests.integration.test_syslog import commit, received, rsyslog, settings

pytestmark = pytest.mark.integration

CHUNK = 50
FAST = BackoffPolicy(initial=0.05, cap=0.5)


@pytest.fixture
async def store(store_url: str):
    s = Store(store_url)
    await s.migrate()
    yield s
    await s.close()


@pytest.fixture(autouse=True)
def rsyslog_up_again():
    rsyslog("up")
    yield
    rsyslog("up")  # whatever happened, leave it running for the next test


async def in_thread(command: str) -> None:
    await asyncio.to_thread(rsyslog, command)


async def wait_for(predicate: Any) -> None:
    async with asyncio.timeout(60):
        while not predicate():  # noqa: ASYNC110 - rsyslog's files have no event to wait on
            await asyncio.sleep(0.05)


def sequences(listener: str, mark: str) -> list[int]:
    return [json.loads(x["msg"])["sequence"] for x in received(listener, mark)]


def first_occurrences(seq: list[int]) -> list[int]:
    seen: set[int] = set()
    return [s for s in seq if not (s in seen or seen.add(s))]  # type: ignore[func-returns-value]


@pytest.mark.parametrize("listener", ["tcp", "tls"])
async def test_records_committed_while_rsyslog_is_down_arrive_in_order_once_it_is_back(
    store: Store, listener: str
):
    mark = uuid.uuid4().hex
    sink = SyslogSink.from_settings(settings(listener), hostname="osel-test")
    outbox = Outbox(store, [sink], chunk=CHUNK, idle_seconds=0.05, backoff=FAST)
    stop = asyncio.Event()
    runner = asyncio.create_task(outbox.run_sink(sink, stop))
    try:
        await commit(store, mark, range(1, 21))
        outbox.wake.set()
        await wait_for(lambda: len(received(listener, mark)) == 20)
        await in_thread("down")
        for start in range(21, 121, 20):  # committed while the receiver is away
            await commit(store, mark, range(start, start + 20))
            outbox.wake.set()
            await asyncio.sleep(0.2)
        await wait_for(lambda: outbox.health[sink.sink_id].state == "retrying")
        lag = (await outbox.status())[0]
        assert lag["behind"] == 100 and lag["oldest_seconds"] is not None
        assert "Connection refused" in lag["error"]
        await in_thread("up")
        await wait_for(lambda: len(received(listener, mark)) >= 120)
        await wait_for(lambda: outbox.health[sink.sink_id].state == "ok")
    finally:
        stop.set()
        await runner
        await sink.close()
    assert sequences(listener, mark) == list(range(1, 121))  # all, in order, none twice
    assert await store.cursor(sink.sink_id) == 120


async def test_rsyslog_stopped_and_started_while_records_flow(store: Store):
    mark = uuid.uuid4().hex
    total = 240
    sink = SyslogSink.from_settings(settings("tcp"), hostname="osel-test")
    outbox = Outbox(store, [sink], chunk=CHUNK, idle_seconds=0.02, backoff=FAST)
    stop = asyncio.Event()
    runner = asyncio.create_task(outbox.run_sink(sink, stop))

    async def produce() -> None:
        for i in range(1, total + 1, 2):
            await commit(store, mark, range(i, i + 2))
            outbox.wake.set()
            await asyncio.sleep(0.02)

    try:
        producer = asyncio.create_task(produce())
        await wait_for(lambda: len(received("tcp", mark)) >= 40)
        await in_thread("down")
        down_at = time.monotonic()
        await asyncio.sleep(1.0)
        await in_thread("up")
        assert time.monotonic() - down_at >= 1.0
        await producer
        await wait_for(lambda: len(set(sequences("tcp", mark))) >= total)
    finally:
        stop.set()
        await runner
        await sink.close()
    got = sequences("tcp", mark)
    assert set(got) == set(range(1, total + 1))  # every record arrived
    assert first_occurrences(got) == list(range(1, total + 1))  # in commit order
    twice = sorted(s for s, n in Counter(got).items() if n > 1)
    assert max(Counter(got).values()) <= 2
    # at most the one batch that was in flight when the connection broke
    assert len(twice) <= CHUNK
    if twice:
        assert twice == list(range(twice[0], twice[0] + len(twice)))
