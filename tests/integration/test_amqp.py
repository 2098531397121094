"""AmqpSource against a real RabbitMQ at 127.0.0.1:5672 (guest/guest)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from osel.amqp import AmqpSource, Delivery, build_ssl_context
from osel.backoff import BackoffPolicy
from osel.transport_url import AmqpEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(40)]

BROKER = ("127.0.0.1", 5672)
LOGGER = "osel.test.amqp"
FAST = BackoffPolicy(initial=0.05, cap=1.0)


def _broker_up() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(BROKER, timeout=1):
        return True
    return False


if not _broker_up():
    pytest.skip("RabbitMQ is not listening on 127.0.0.1:5672", allow_module_level=True)


@dataclass
class Names:
    exchange: str
    queue: str
    topic: str

    @property
    def shared_queue(self) -> str:
        """The queue oslo.messaging would declare for this topic (Ceilometer's)."""
        return f"{self.topic}.info"

    @property
    def routing_key(self) -> str:
        return f"{self.topic}.info"


@pytest.fixture
async def admin() -> AsyncIterator[AbstractChannel]:
    """A channel of our own, straight to the broker, for publishing and checks."""
    connection = await aio_pika.connect(host=BROKER[0], port=BROKER[1])
    try:
        yield await connection.channel()
    finally:
        await connection.close()


@pytest.fixture
async def names(admin: AbstractChannel) -> AsyncIterator[Names]:
    """Unique names; the exchange exists (as Neutron declares it); all deleted after."""
    suffix = uuid.uuid4().hex[:10]
    n = Names(f"osel-test-{suffix}", f"osel-test-q-{suffix}", f"osel-test-topic-{suffix}")
    await admin.declare_exchange(n.exchange, aio_pika.ExchangeType.TOPIC, durable=False)
    yield n
    connection = await aio_pika.connect(host=BROKER[0], port=BROKER[1])
    async with connection:
        for queue in (n.queue, n.shared_queue):
            channel = await connection.channel()
            await channel.queue_delete(queue)
        channel = await connection.channel()
        await channel.exchange_delete(n.exchange)


SourceFactory = Callable[..., Awaitable[AmqpSource]]


@pytest.fixture
async def source_factory(names: Names) -> AsyncIterator[SourceFactory]:
    """Factory for started sources; every one is closed after the test."""
    sources: list[AmqpSource] = []

    async def make(endpoints: list[AmqpEndpoint] | None = None, **kwargs: Any) -> AmqpSource:
        options: dict[str, Any] = {
            "exchanges": [names.exchange],
            "topics": [names.topic],
            "queue": names.queue,
            "prefetch": 50,
            "backoff": FAST,
            "logger": logging.getLogger(LOGGER),
            "connect_timeout": 3,
        }
        options.update(kwargs)
        source = AmqpSource(endpoints or [endpoint(*BROKER)], **options)
        sources.append(source)
        await source.start()
        return source

    yield make
    for source in sources:
        await source.close()


def endpoint(host: str, port: int) -> AmqpEndpoint:
    return AmqpEndpoint(host, port, "guest", "guest", "/", False)


async def until(predicate: Callable[[], bool], within: float = 10) -> None:
    """Poll ``predicate`` until true; fail after ``within`` seconds."""
    for _ in range(int(within / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {within}s")


async def publish(channel: AbstractChannel, exchange: str, key: str, bodies: list[str]) -> None:
    target = await channel.get_exchange(exchange)
    for body in bodies:
        await target.publish(aio_pika.Message(body.encode(), message_id=body), routing_key=key)


async def ready_count(channel: AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    assert declared.declaration_result.message_count is not None
    return declared.declaration_result.message_count


class TCPProxy:
    """A TCP proxy in front of the broker whose connections can be cut."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls  # terminate TLS here (the broker itself listens in plain TCP)
        self.port = 0
        self.connections = 0
        self.cut_after: float | None = None  # abort every connection after this long
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, ssl=self.tls
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop_listening(self) -> None:
        """Refuse new connections (and cut the current ones)."""
        if self._server is not None:
            self._server.close()
            self.cut()
            await self._server.wait_closed()
            self._server = None

    def cut(self) -> None:
        """Drop every proxied connection, both sides, without a goodbye."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def close(self) -> None:
        await self.stop_listening()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*BROKER)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        self.connections += 1
        if self.cut_after is not None:
            loop = asyncio.get_running_loop()
            for w in (writer, up_writer):
                loop.call_later(self.cut_after, w.transport.abort)
        for pipe in (self._pipe(reader, up_writer), self._pipe(up_reader, writer)):
            task = asyncio.create_task(pipe)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


@pytest.fixture
async def proxy() -> AsyncIterator[TCPProxy]:
    p = TCPProxy()
    await p.start()
    yield p
    await p.close()


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER
        and "amqp" in r.getMessage()
        and ("down" in r.getMessage() or "back" in r.getMessage())
    ]


async def test_receive_ack_and_redelivery(
    admin: AbstractChannel,
    names: Names,
    source_factory: SourceFactory,
    proxy: TCPProxy,
) -> None:
    """Published notifications arrive; acked ones never come back; unacked
    ones are redelivered, after a reconnect (new generation) or a reopen."""
    source = await source_factory([endpoint("127.0.0.1", proxy.port)])
    await until(lambda: source.connected)
    await publish(admin, names.exchange, names.routing_key, ["a", "b", "c"])

    batch = await source.get_batch(10, 0.3)

    assert [d.body for d in batch] == [b"a", b"b", b"c"]
    first = batch[0]
    assert (first.exchange, first.routing_key, first.broker, first.message_id) == (
        names.exchange,
        names.routing_key,
        "127.0.0.1",
        "a",
    )
    assert (first.generation, first.redelivered) == (1, False)

    # Not acked, connection cut: the same messages come back on generation 2.
    proxy.cut()
    again = await source.get_batch(10, 0.3)
    assert [d.body for d in again] == [b"a", b"b", b"c"]
    assert all(d.redelivered and d.generation == 2 for d in again)
    await source.ack(batch)  # stale generation: ignored, harmless
    assert source.connected

    await source.ack(again)
    await publish(admin, names.exchange, names.routing_key, ["d"])
    [d] = await source.get_batch(10, 0.1)
    assert d.body == b"d"
    await source.close()  # "d" unacked

    reopened = await source_factory()
    [d_again] = await reopened.get_batch(10, 0.3)
    assert (d_again.body, d_again.redelivered) == (b"d", True)
    await reopened.ack_through(d_again)
    await reopened.close()

    last = await source_factory()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(last.get_batch(10, 0.1), 1.0)
    await last.close()
    assert await ready_count(admin, names.queue) == 0


async def test_shared_queue_consumer_gets_everything(
    admin: AbstractChannel,
    names: Names,
    source_factory: SourceFactory,
) -> None:
    """A Ceilometer-style consumer on <topic>.info receives every message
    while osel consumes its own queue: nothing is stolen."""
    shared = await admin.declare_queue(names.shared_queue, durable=False)
    await shared.bind(names.exchange, routing_key=names.routing_key)
    ceilometer: list[bytes] = []

    async def on_message(message: AbstractIncomingMessage) -> None:
        ceilometer.append(message.body)
        await message.ack()

    await shared.consume(on_message)
    source = await source_factory()
    await until(lambda: source.connected)
    bodies = [f"n{i}" for i in range(60)]

    await publish(admin, names.exchange, names.routing_key, bodies)
    osel: list[bytes] = []
    while len(osel) < len(bodies):
        batch = await asyncio.wait_for(source.get_batch(100, 0.05), 5)
        osel.extend(d.body for d in batch)
        await source.ack(batch)
    await until(lambda: len(ceilometer) == len(bodies))

    expected = [b.encode() for b in bodies]
    assert osel == expected
    assert ceilometer == expected
    check = await admin.declare_queue(names.shared_queue, passive=True)
    assert check.declaration_result.consumer_count == 1  # only "Ceilometer"


async def test_failover_to_second_endpoint(
    source_factory: SourceFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With nothing listening on the first endpoint, the second is used,
    and a round that succeeds logs no outage."""
    caplog.set_level(logging.DEBUG)
    source = await source_factory([endpoint("127.0.0.1", 1), endpoint("localhost", 5672)])

    await until(lambda: source.connected)

    assert source.broker == "localhost"
    assert outage_lines(caplog) == []
    assert not [
        r for r in caplog.records if r.name.startswith("pika") and r.levelno >= logging.ERROR
    ]


async def test_reconnects_after_cuts_and_refusals(
    admin: AbstractChannel,
    names: Names,
    source_factory: SourceFactory,
    proxy: TCPProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Connections cut mid-stream and a broker refusing connections for a
    while: every message arrives at least once and is acked, and the log
    has a bounded number of outage lines."""
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    source = await source_factory([endpoint("127.0.0.1", proxy.port)])
    await until(lambda: source.connected)
    bodies = [f"m{i:04d}" for i in range(300)]
    seen: set[bytes] = set()
    generations: set[int] = set()

    async def producer() -> None:
        for i in range(0, len(bodies), 10):
            await publish(admin, names.exchange, names.routing_key, bodies[i : i + 10])
            await asyncio.sleep(0.02)

    async def consumer() -> None:
        while len(seen) < len(bodies):
            batch = await source.get_batch(25, 0.02)
            seen.update(d.body for d in batch)
            generations.update(d.generation for d in batch)
            await source.ack(batch)

    consuming = asyncio.create_task(consumer())
    producing = asyncio.create_task(producer())
    await asyncio.sleep(0.2)
    proxy.cut()
    await asyncio.sleep(0.3)
    await proxy.stop_listening()  # refused for 2 s: several failed attempts
    await asyncio.sleep(2.0)
    attempts_while_down = source.outage.attempts
    await proxy.start()
    await asyncio.wait_for(asyncio.gather(producing, consuming), 15)
    elapsed = time.monotonic() - started

    assert seen == {b.encode() for b in bodies}
    assert max(generations) >= 3
    await source.close()
    assert await ready_count(admin, names.queue) == 0

    lines = outage_lines(caplog)
    assert lines[0].startswith("amqp down: ")
    assert lines[-1].startswith("amqp back after ")
    assert attempts_while_down >= 4
    assert len(lines) <= 2 * (elapsed / FAST.cap + 1)
    assert len(lines) < attempts_while_down + 2
    assert not [r for r in caplog.records if r.name.startswith("pika")]


async def test_flapping_broker_is_backed_off(
    source_factory: SourceFactory,
    proxy: TCPProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A broker that accepts and then drops every connection at once does
    not get a tight reconnect loop, nor the log a line per reconnect."""
    caplog.set_level(logging.DEBUG)
    proxy.cut_after = 0.05
    source = await source_factory([endpoint("127.0.0.1", proxy.port)])

    await asyncio.sleep(3.0)
    await source.close()

    # Without backoff: one connection per ~60 ms, about 50 in 3 s.
    assert 3 <= proxy.connections <= 20
    assert len(outage_lines(caplog)) <= 2 * (3.0 / FAST.cap + 1)
    assert len([r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.INFO]) <= 8


async def test_ack_batching_with_prefetch(
    admin: AbstractChannel,
    names: Names,
    source_factory: SourceFactory,
) -> None:
    """prefetch 10, 100 messages, acked ten at a time: all acked, in batches of <= 10."""
    source = await source_factory(prefetch=10)
    await until(lambda: source.connected)
    await publish(admin, names.exchange, names.routing_key, [f"p{i}" for i in range(100)])
    received: list[Delivery] = []
    largest = 0

    while len(received) < 100:
        batch = await asyncio.wait_for(source.get_batch(100, 0.05), 5)
        largest = max(largest, len(batch))
        pending: list[Delivery] = []
        for delivery in batch:
            received.append(delivery)
            pending.append(delivery)
            if len(received) % 10 == 0:
                await source.ack(pending)
                pending = []
        if pending:
            await source.ack(pending)

    assert largest <= 10
    assert [d.body for d in received] == [f"p{i}".encode() for i in range(100)]
    await source.close()
    assert await ready_count(admin, names.queue) == 0


async def test_exchange_mismatch_names_the_key(
    admin: AbstractChannel,
    names: Names,
    source_factory: SourceFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exchange declared with other arguments (406) is reported with the
    configuration key to change."""
    caplog.set_level(logging.WARNING, LOGGER)
    durable = f"{names.exchange}-durable"
    await admin.declare_exchange(durable, aio_pika.ExchangeType.TOPIC, durable=True)
    try:
        source = await source_factory(exchanges=[durable], exchange_durable=False)
        await until(lambda: bool(outage_lines(caplog)))

        assert not source.connected
        assert "set amqp.exchange_durable to true" in outage_lines(caplog)[0]
    finally:
        await admin.exchange_delete(durable)


def test_refuses_the_shared_queue() -> None:
    """osel must never consume <topic>.info itself."""
    with pytest.raises(ValueError, match="steal"):
        AmqpSource(
            [endpoint(*BROKER)],
            exchanges=["neutron"],
            topics=["notifications"],
            queue="notifications.info",
            prefetch=10,
        )


async def test_queue_deleted_under_us_is_redeclared(
    admin: AbstractChannel,
    names: Names,
    source_factory: SourceFactory,
) -> None:
    """The broker cancelling our consumer (queue deleted) counts as a lost
    connection: the source reconnects, re-declares and resumes."""
    source = await source_factory()
    await until(lambda: source.connected)

    await admin.queue_delete(names.queue)
    await until(lambda: source.connected and source.generation == 2, within=5)
    await publish(admin, names.exchange, names.routing_key, ["after"])
    [delivery] = await asyncio.wait_for(source.get_batch(10, 0.05), 5)

    assert (delivery.body, delivery.generation) == (b"after", 2)
    await source.ack_through(delivery)
    await source.ack_through(delivery)  # twice: ignored, the channel survives
    assert source.connected


async def test_close_wakes_get_batch(source_factory: SourceFactory) -> None:
    """A consumer waiting in get_batch gets [] when the source closes."""
    source = await source_factory()
    waiting = asyncio.create_task(source.get_batch(10, 0.1))
    await asyncio.sleep(0.1)

    await source.close()

    assert await asyncio.wait_for(waiting, 2) == []
    assert not source.connected
    assert source.broker is None


async def test_quorum_queue(
    admin: AbstractChannel,
    names: Names,
    source_factory: SourceFactory,
) -> None:
    """queue_type=quorum declares a quorum queue and consumes it."""
    source = await source_factory(queue_type="quorum")
    await until(lambda: source.connected)
    await publish(admin, names.exchange, names.routing_key, ["q"])

    [delivery] = await asyncio.wait_for(source.get_batch(10, 0.05), 5)

    assert delivery.body == b"q"
    await source.ack_through(delivery)
    # Declaring it as classic now is refused: it really is a quorum queue.
    connection = await aio_pika.connect(host=BROKER[0], port=BROKER[1])
    async with connection:
        channel = await connection.channel()
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
            await channel.declare_queue(
                names.queue, durable=True, arguments={"x-queue-type": "classic"}
            )


RSYSLOG_CA = (
    Path(os.environ.get("OSEL_RSYSLOG_DIR", Path.home() / ".cache" / "osel-rsyslog")) / "ca"
)  # the test CA that scripts/setup makes (for 127.0.0.1 and localhost)


@pytest.fixture
async def tls_proxy() -> AsyncIterator[TCPProxy]:
    """The broker behind TLS, with the test CA's server certificate."""
    if not (RSYSLOG_CA / "server.pem").exists():
        pytest.fail(f"no test CA in {RSYSLOG_CA}: run scripts/setup")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(RSYSLOG_CA / "server.pem", RSYSLOG_CA / "server.key")
    p = TCPProxy(tls=context)
    await p.start()
    yield p
    await p.close()


async def test_tls_to_the_broker(
    admin: AbstractChannel,
    names: Names,
    source_factory: SourceFactory,
    tls_proxy: TCPProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """amqps:// with the CA that signed the broker's certificate: consumes over TLS.
    Without that CA (the system's only), the certificate is refused and the outage
    says why."""
    caplog.set_level(logging.WARNING, LOGGER)
    tls = AmqpEndpoint("localhost", tls_proxy.port, "guest", "guest", "/", True)
    source = await source_factory([tls], ssl_ca_file=str(RSYSLOG_CA / "ca.pem"))
    await until(lambda: source.connected)
    await publish(admin, names.exchange, names.routing_key, ["secret"])

    [delivery] = await asyncio.wait_for(source.get_batch(10, 0.05), 5)

    assert (delivery.body, delivery.broker) == (b"secret", "localhost")
    await source.ack_through(delivery)
    await source.close()

    untrusted = await source_factory([tls])
    await until(lambda: bool(outage_lines(caplog)))
    assert not untrusted.connected
    assert "CERTIFICATE_VERIFY_FAILED" in outage_lines(caplog)[0]


def test_tls_context_verifies_by_default() -> None:
    """TLS checks the certificate and host name unless told not to."""
    strict = build_ssl_context(None, None, None, verify=True)
    lax = build_ssl_context(None, None, None, verify=False)

    assert (strict.verify_mode, strict.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert (lax.verify_mode, lax.check_hostname) == (ssl.CERT_NONE, False)


def test_tls_context_errors_name_the_key(tmp_path: Path) -> None:
    """Unreadable TLS files are reported with their configuration key."""
    with pytest.raises(ValueError, match=r"amqp\.ssl_ca_file"):
        build_ssl_context(str(tmp_path / "missing.pem"), None, None, verify=True)
    with pytest.raises(ValueError, match=r"amqp\.ssl_cert_file"):
        build_ssl_context(None, str(tmp_path / "missing.pem"), None, verify=True)


async def test_finished_deliveries_are_acknowledged_exactly(
    admin: AbstractChannel,
    names: Names,
    source_factory: SourceFactory,
) -> None:
    """A delivery still being worked on is never covered by a multiple ack of later ones."""
    source = await source_factory(prefetch=10)
    await until(lambda: source.connected)
    await publish(admin, names.exchange, names.routing_key, ["a", "b", "c", "d"])
    batch = await asyncio.wait_for(source.get_batch(4, 0.3), 5)
    assert [d.body for d in batch] == [b"a", b"b", b"c", b"d"]
    await source.ack([batch[0], batch[2], batch[3]])  # "b" not finished yet
    await source.close()  # "b" (and only "b") comes back
    reopened = await source_factory()
    again = await asyncio.wait_for(reopened.get_batch(10, 0.3), 5)
    assert [d.body for d in again] == [b"b"]
    await reopened.ack(again)
    await reopened.close()
    assert await ready_count(admin, names.queue) == 0


async def test_recognised_deliveries_keep_no_body(
    admin: AbstractChannel,
    names: Names,
    source_factory: SourceFactory,
) -> None:
    """A delivery `recognise` names waits without its body, and is acknowledged like any."""
    looked_at: list[bytes] = []

    def recognise(body: bytes) -> str | None:
        looked_at.append(body)
        return "x.ignored" if body.startswith(b"i") else None

    source = await source_factory(recognise=recognise)
    await until(lambda: source.connected)
    await publish(admin, names.exchange, names.routing_key, ["i0", "h0", "i1", "h1"])
    batch = await asyncio.wait_for(source.get_batch(4, 0.3), 5)
    assert [(d.body, d.ignored, d.message_id) for d in batch] == [
        (b"", "x.ignored", "i0"),
        (b"h0", None, "h0"),
        (b"", "x.ignored", "i1"),
        (b"h1", None, "h1"),
    ]
    assert looked_at == [b"i0", b"h0", b"i1", b"h1"]  # once each, as they arrived
    await source.ack(batch)
    await source.close()
    assert await ready_count(admin, names.queue) == 0


async def test_a_batch_of_prefetch_deliveries_does_not_wait(
    admin: AbstractChannel,
    names: Names,
    source_factory: SourceFactory,
) -> None:
    """Once a batch holds `prefetch` deliveries no more can come before an ack: it is
    returned at once, not after max_wait."""
    source = await source_factory(prefetch=10)
    await until(lambda: source.connected)
    await publish(admin, names.exchange, names.routing_key, [f"m{i}" for i in range(25)])
    received: list[bytes] = []
    while len(received) < 20:
        # a wait of 30 s would time out here (5 s) if the batch waited for more
        batch = await asyncio.wait_for(source.get_batch(1000, 30), 5)
        assert len(batch) == 10
        received += [d.body for d in batch]
        await source.ack(batch)
    assert received == [f"m{i}".encode() for i in range(20)]
    await source.close()
