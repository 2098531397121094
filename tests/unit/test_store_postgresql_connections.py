"""The TCP settings of osel's PostgreSQL connections, read back from their sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator

import pytest

from osel.store.store import PG_CONNECT_DEFAULTS, Store, unavailable
from tests.pg import postgres_database


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


async def _socket_options(store: Store) -> dict[str, int]:
    async with store.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        fd = raw.driver_connection.pgconn.socket  # type: ignore[union-attr]
        with socket.socket(fileno=os.dup(fd)) as sock:
            return {
                "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                "user_timeout": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
            }


async def test_connections_probe_a_vanished_server(pg_url: str) -> None:
    """Every pooled connection, not only the one holding the inventory lock, has TCP
    keepalives and a user timeout, so a PostgreSQL host that vanishes is noticed in
    about 40 s rather than the kernel's 15 minutes."""
    store = Store(pg_url)
    try:
        options = await _socket_options(store)
    finally:
        await store.close()
    assert options == {
        "keepalive": 1,
        "idle": PG_CONNECT_DEFAULTS["keepalives_idle"],
        "interval": PG_CONNECT_DEFAULTS["keepalives_interval"],
        "count": PG_CONNECT_DEFAULTS["keepalives_count"],
        "user_timeout": PG_CONNECT_DEFAULTS["tcp_user_timeout"],
    }


async def test_the_store_url_overrides_them(pg_url: str) -> None:
    store = Store(f"{pg_url}?keepalives_idle=7&tcp_user_timeout=9000")
    try:
        options = await _socket_options(store)
    finally:
        await store.close()
    assert options["idle"] == 7
    assert options["user_timeout"] == 9000
    assert options["interval"] == PG_CONNECT_DEFAULTS["keepalives_interval"]


async def test_a_server_that_accepts_and_never_answers(unused_tcp_port: int) -> None:
    """A connection attempt to a host that takes the TCP connection but says nothing (a
    hung server, a half-dead load balancer) gives up after connect_timeout instead of
    waiting for the kernel."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", unused_tcp_port)
    store = Store(f"postgresql://osel@127.0.0.1:{unused_tcp_port}/osel?connect_timeout=2")
    start = time.monotonic()
    try:
        with pytest.raises(Exception) as caught:
            async with store.engine.connect():
                pass
        took = time.monotonic() - start
    finally:
        await store.close()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert unavailable(caught.value)
    assert held, "the connection attempt never reached the server"
    assert 1.5 <= took < 10, took
