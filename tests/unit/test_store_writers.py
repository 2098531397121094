"""The store's write transactions: on SQLite this process's writers take turns."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from osel.store import tables as t
from osel.store.store import (
    SQLITE_STATEMENT_CACHE,
    SQLITE_WAL_CHECKPOINT_PAGES,
    SQLITE_WAL_LIMIT,
    Batch,
    Store,
    record_json,
)


async def _writer(store: Store, key: str, events: list[str]) -> None:
    async with store.begin() as conn:
        events.append(f"{key} in")
        await conn.execute(insert(t.meta).values(key=key, value="1"))
        await asyncio.sleep(0.2)  # another writer gets every chance to start meanwhile
        events.append(f"{key} out")


async def test_writers_take_turns_on_sqlite_and_overlap_on_postgresql(store: Store):
    events: list[str] = []
    await asyncio.gather(_writer(store, "a", events), _writer(store, "b", events))
    if store.dialect == "sqlite":
        # the second waits in the process, not in SQLite's polling busy handler
        assert events == ["a in", "a out", "b in", "b out"]
    else:
        # PostgreSQL locks rows, not the database: both run at once
        assert events[:2] == ["a in", "b in"]
    assert {await store.get_meta("a"), await store.get_meta("b")} == {"1"}


async def test_a_failed_write_lets_the_next_writer_in(store: Store):
    async def failing() -> None:
        async with store.begin() as conn:
            await conn.execute(insert(t.meta).values(key="x", value="1"))
            raise RuntimeError("boom")

    with contextlib.suppress(RuntimeError):
        await failing()
    async with asyncio.timeout(5):
        async with store.begin() as conn:
            await conn.execute(insert(t.meta).values(key="x", value="2"))
    assert await store.get_meta("x") == "2"  # the failed one was rolled back


def test_record_json_is_sorted_compact_utf8_and_round_trips() -> None:
    body = {
        "user_name": "Zoë",
        "record_id": "r1",
        "opened": [{"port_range_min": 22, "internet_exposed": True, "remote": "0.0.0.0/0"}],
        "address_errors": {10: "int keys become strings as with the json module"},
        "scan_priority": None,
    }
    text = record_json(body)
    assert text.startswith('{"address_errors":{"10":')
    assert "Zoë" in text and '": ' not in text and '", "' not in text
    assert list(json.loads(text)) == sorted(body)
    assert json.loads(text) == json.loads(json.dumps(body))


async def test_sqlite_connections_keep_a_small_statement_cache(tmp_path, monkeypatch):
    opened: list[dict[str, object]] = []
    real = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append(kwargs)
        connection: sqlite3.Connection = real(*args, **kwargs)
        return connection

    monkeypatch.setattr(sqlite3, "connect", connect)
    store = Store(f"sqlite:///{tmp_path}/osel.db")
    try:
        await store.migrate()
        assert await store.seen(["m1"]) == set()
    finally:
        await store.close()
    assert opened, "the store opened no SQLite connection through sqlite3.connect"
    assert {k.get("cached_statements") for k in opened} == {SQLITE_STATEMENT_CACHE}
    assert SQLITE_STATEMENT_CACHE < 128  # below Python's default, which is the point


async def test_the_consumers_commit_goes_before_the_writers_already_waiting(tmp_path: Path):
    # SQLite only: PostgreSQL has no single write lock, so nothing waits to compare
    store = Store(f"sqlite:///{tmp_path}/osel.db")
    await store.migrate()
    try:
        events: list[str] = []
        holder = asyncio.create_task(_writer(store, "holder", events))
        await asyncio.sleep(0.05)  # it holds the write lock for 0.2 s
        other = asyncio.create_task(_writer(store, "other", events))
        await asyncio.sleep(0.05)
        batch = Batch(message_ids=[("m-urgent", "port.create.end")])

        async def commit() -> None:
            await store.commit(batch)
            events.append("commit")

        committed = asyncio.create_task(commit())
        await asyncio.gather(holder, other, committed)
        assert events.index("commit") < events.index("other in")
        assert await store.seen(["m-urgent"]) == {"m-urgent"}
    finally:
        await store.close()


async def test_sqlite_connections_checkpoint_the_log_less_often_and_cap_it(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/osel.db")
    try:
        await store.migrate()
        async with store.engine.connect() as conn:
            pragmas = {
                name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "synchronous", "wal_autocheckpoint",
                             "journal_size_limit")
            }  # fmt: skip
    finally:
        await store.close()
    assert pragmas == {
        "journal_mode": "wal",
        "synchronous": 2,  # FULL: a commit that returned survives power loss
        "wal_autocheckpoint": SQLITE_WAL_CHECKPOINT_PAGES,
        "journal_size_limit": SQLITE_WAL_LIMIT,
    }
    assert SQLITE_WAL_CHECKPOINT_PAGES > 1000  # above SQLite's default, which is the point
