"""The AMQP source: osel's own queue on the OpenStack notification bus.

osel declares its own durable queue, binds it to each exchange with
``<topic>.info``, and consumes it with manual acks. It never declares, binds
or consumes the shared ``<topic>.info`` queue that oslo.messaging creates for
Ceilometer and friends (a second consumer there steals their messages).

The client is pika's asyncio adapter: it hands each delivery to a plain
callback, which only appends it to a buffer. (aio-pika, used before, runs
tasks and queue hand-offs for every frame in aiormq: on messages osel ignores,
the benchmark drained about half as many per second.) Connections are made by our own
loop (no automatic reconnect): endpoints are tried in order, a full failed
round waits per `BackoffPolicy`, outages are logged through
`OutageLog("amqp")`. Every (re)connection starts a new *generation*;
deliveries of a dead generation are dropped from the buffer and acks for them
are ignored (the broker redelivers whatever was not acknowledged on the
connection it lost).

``recognise``, when given, names the event type of a body osel surely ignores
(`osel.pipeline.Pipeline.recognise`, most of a cloud's notifications): such a
delivery keeps only that name, not its body, while it waits in the buffer and
in its batch, and the body is looked at once, as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pika
import pika.channel
import pika.exceptions
import pika.spec
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.adapters.utils import connection_workflow

from osel.backoff import BackoffPolicy, OutageLog, Stopped, describe_error, retry_forever
from osel.transport_url import AmqpEndpoint

__all__ = [
    "AmqpConfigError",
    "AmqpConnectError",
    "AmqpSource",
    "Delivery",
    "build_ssl_context",
    "connection_parameters",
    "quiet_pika_logging",
]

log = logging.getLogger(__name__)

# oslo.messaging notification priorities: <topic>.<priority> queues are shared.
_PRIORITIES = ("audit", "debug", "info", "warn", "warning", "error", "critical", "sample")
_QUEUE_TYPES = ("classic", "quorum")
_CLOSE_TIMEOUT = 5.0
_PRECONDITION_FAILED = 406


class AmqpConfigError(Exception):
    """The broker refused our declarations (406 PRECONDITION_FAILED); the
    message names the configuration key to change."""


class AmqpConnectError(ConnectionError):
    """No endpoint of the round could be connected; says why for each."""


class Delivery(NamedTuple):
    """One message taken from the broker, not yet acknowledged.

    A named tuple, not a frozen dataclass: one is made for every message of the bus,
    and a frozen dataclass of these fields took 1.4 microseconds to build, a named
    tuple 0.6."""

    body: bytes
    delivery_tag: int
    generation: int  # bumps on every (re)connection; acks for an older generation are dropped
    exchange: str
    routing_key: str
    redelivered: bool
    broker: str  # host name of the broker this came from (endpoint host)
    message_id: str | None  # AMQP property, informational only
    # the event type of a body recognised on arrival as one osel ignores; the body
    # itself is then not kept (it is b"")
    ignored: str | None = None


def quiet_pika_logging() -> None:
    """pika logs every failed connection attempt and every lost connection at
    ERROR, with tracebacks; `OutageLog` reports those, bounded. pika's loggers are
    set to CRITICAL unless logging was configured for them (a level set on
    ``pika``)."""
    target = logging.getLogger("pika")
    if target.level == logging.NOTSET:
        target.setLevel(logging.CRITICAL)


def _cause(exc: BaseException) -> BaseException:
    """The error under pika's connection-workflow wrappers (refused, timed out,
    TLS, authentication), which is what an operator needs to see."""
    while True:
        if isinstance(exc, connection_workflow.AMQPConnectionWorkflowFailed) and exc.exceptions:
            exc = exc.exceptions[-1]
        elif isinstance(exc, connection_workflow.AMQPConnectorPhaseErrorBase):
            exc = exc.exception
        else:
            return exc


def _closed_error(exc: BaseException | None, what: str) -> BaseException:
    return exc if isinstance(exc, BaseException) else ConnectionError(f"{what} closed")


class _Channel:
    """A pika channel whose requests can be awaited.

    pika answers each request through a callback. When the broker closes the
    channel (a refused declaration, a deleted queue), every request still
    waiting fails with the broker's reason, and `closed` is set.
    """

    def __init__(self, connection: AsyncioConnection) -> None:
        loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[BaseException] = loop.create_future()
        self._opened: asyncio.Future[None] = loop.create_future()
        self._waiting: set[asyncio.Future[Any]] = set()
        self.channel = connection.channel(on_open_callback=self._on_open)
        self.channel.add_on_close_callback(self._on_close)

    @classmethod
    async def open(cls, connection: AsyncioConnection) -> _Channel:
        channel = cls(connection)
        await channel.wait(channel._opened)
        return channel

    async def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``method(*args, callback=..., **kwargs)``; its reply frame."""
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def answered(frame: Any) -> None:
            if not reply.done():
                reply.set_result(frame)

        if self.closed.done():
            raise self.closed.result()
        method(*args, callback=answered, **kwargs)
        return await self.wait(reply)

    async def wait(self, future: asyncio.Future[Any]) -> Any:
        """Await ``future``, failed with the broker's reason if the channel closes first."""
        self._waiting.add(future)
        try:
            return await future
        finally:
            self._waiting.discard(future)

    def _on_open(self, _channel: pika.channel.Channel) -> None:
        if not self._opened.done():
            self._opened.set_result(None)

    def _on_close(self, _channel: pika.channel.Channel, exc: BaseException) -> None:
        error = _closed_error(exc, "channel")
        for future in list(self._waiting):
            if not future.done():
                future.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(error)

    def close(self) -> None:
        if self.channel.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                self.channel.close()


class _Connection:
    """A pika asyncio connection being opened, with futures for its open and close."""

    def __init__(self, parameters: pika.ConnectionParameters) -> None:
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[BaseException] = loop.create_future()
        self.connection = AsyncioConnection(
            parameters,
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_close,
            custom_ioloop=loop,
        )

    @classmethod
    async def open(cls, parameters: pika.ConnectionParameters) -> _Connection:
        """Open a connection; one cancelled or failed half-way is closed."""
        made = cls(parameters)
        try:
            await asyncio.shield(made.opened)
        except BaseException:
            await made.close()
            raise
        return made

    @property
    def is_open(self) -> bool:
        return bool(self.connection.is_open)

    def _on_open(self, _connection: Any) -> None:
        if not self.opened.done():
            self.opened.set_result(None)

    def _on_open_error(self, _connection: Any, exc: BaseException | str) -> None:
        self._closed(_cause(exc) if isinstance(exc, BaseException) else ConnectionError(str(exc)))

    def _on_close(self, _connection: Any, exc: BaseException) -> None:
        self._closed(_closed_error(exc, "connection"))

    def _closed(self, error: BaseException) -> None:
        if not self.opened.done():
            self.opened.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(error)

    async def close(self) -> None:
        """Close quietly and boundedly: the connection may be dead or half open."""
        if not (self.connection.is_closing or self.connection.is_closed):
            with contextlib.suppress(pika.exceptions.AMQPError):
                self.connection.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await asyncio.shield(self.closed)
        # a failed open leaves its exception unread
        if self.opened.done() and not self.opened.cancelled():
            self.opened.exception()


@dataclass(eq=False)
class _Session:
    """One live connection (one generation)."""

    generation: int
    endpoint: AmqpEndpoint
    connection: _Connection
    channel: _Channel
    lost: asyncio.Future[BaseException]
    started_at: float
    outstanding: set[int] = field(default_factory=set)  # delivered, not yet settled

    def mark_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc or ConnectionError("connection closed"))

    @property
    def alive(self) -> bool:
        return not self.lost.done() and self.connection.is_open


def build_ssl_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None, verify: bool
) -> ssl.SSLContext:
    """A client TLS context; certificate and host name checks are on unless
    ``verify`` is False. Errors name the configuration key."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"amqp.ssl_ca_file: cannot load {ca_file}: {exc}") from None
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"amqp.ssl_cert_file/amqp.ssl_key_file: cannot load {cert_file}: {exc}"
            ) from None
    elif key_file:
        raise ValueError("amqp.ssl_key_file is set but amqp.ssl_cert_file is not")
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def connection_parameters(
    endpoint: AmqpEndpoint,
    *,
    ssl_context: ssl.SSLContext | None,
    heartbeat: int,
    connect_timeout: float,
    name: str,
) -> pika.ConnectionParameters:
    """pika's parameters for one endpoint: one attempt (osel's loop retries), TLS with
    the host name checked against the endpoint's host (with the system's CAs when no
    context is given: an amqps endpoint never falls back to plain TCP)."""
    return pika.ConnectionParameters(
        host=endpoint.host,
        port=endpoint.port,
        virtual_host=endpoint.virtual_host,
        credentials=pika.PlainCredentials(endpoint.username, endpoint.password),
        ssl_options=(
            pika.SSLOptions(
                ssl_context or ssl.create_default_context(), server_hostname=endpoint.host
            )
            if endpoint.ssl
            else None
        ),
        heartbeat=heartbeat,
        connection_attempts=1,
        socket_timeout=connect_timeout,
        stack_timeout=connect_timeout,
        client_properties={"connection_name": name},
    )


class AmqpSource:
    """Consumes osel's own queue; see the module docstring."""

    def __init__(
        self,
        endpoints: list[AmqpEndpoint],
        *,
        exchanges: list[str],
        topics: list[str],
        queue: str,
        prefetch: int,
        queue_type: str = "classic",
        exchange_durable: bool = False,
        heartbeat: int = 60,
        connect_timeout: float = 10,
        ssl_ca_file: str | None = None,
        ssl_cert_file: str | None = None,
        ssl_key_file: str | None = None,
        ssl_verify: bool = True,
        backoff: BackoffPolicy = BackoffPolicy(),  # noqa: B008 - frozen, immutable
        logger: logging.Logger | None = None,
        recognise: Callable[[bytes], str | None] | None = None,
    ) -> None:
        _validate(endpoints, exchanges, topics, queue, prefetch, queue_type)
        self._endpoints = list(endpoints)
        self._exchanges = list(exchanges)
        self._topics = list(topics)
        self._queue_name = queue
        self._prefetch = prefetch
        self._queue_type = queue_type
        self._exchange_durable = exchange_durable
        self._heartbeat = heartbeat
        self._connect_timeout = connect_timeout
        self._ssl_context = (
            build_ssl_context(ssl_ca_file, ssl_cert_file, ssl_key_file, ssl_verify)
            if any(e.ssl for e in endpoints)
            else None
        )
        self._backoff = backoff
        self._log = logger or log
        self._recognise = recognise
        self._outage = OutageLog("amqp", self._log, cap=backoff.cap)
        # deliveries wait here for get_batch; `_arrived` is set whenever one is added
        # (a deque and an event: an asyncio.Queue would cost a wake-up per message)
        self._buffer: deque[Delivery] = deque()
        self._arrived = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: _Session | None = None
        self._generation = 0
        self._next_index = 0
        self._last_broker: str | None = None
        self._name = f"osel@{socket.gethostname()}"
        quiet_pika_logging()

    @property
    def connected(self) -> bool:
        return self._session is not None and self._session.alive

    @property
    def broker(self) -> str | None:
        """Host name of the broker currently connected to."""
        session = self._session
        return session.endpoint.host if session is not None and session.alive else None

    @property
    def generation(self) -> int:
        """The current connection's generation (0 before the first one)."""
        return self._generation

    @property
    def outage(self) -> OutageLog:
        """The outage state of the bus (is_down, attempts, down_since)."""
        return self._outage

    async def start(self) -> None:
        """Start connecting and consuming in the background; returns at once."""
        if self._task is not None or self._stop.is_set():
            raise RuntimeError("AmqpSource can be started once (make a new one after close)")
        self._task = asyncio.create_task(self._run(), name="osel-amqp")
        self._task.add_done_callback(self._on_task_done)

    async def get_batch(self, max_messages: int, max_wait: float) -> list[Delivery]:
        """Wait for at least one delivery, then collect more for up to ``max_wait``
        seconds or until ``max_messages``. A batch is also complete once it holds
        ``prefetch`` deliveries: the broker sends no more before some are acknowledged,
        so waiting would only delay them. ``[]`` once stopped."""
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        most = min(max_messages, self._prefetch)
        while not self._stop.is_set():
            collected = await self._collect(most, max_wait)
            current = self._current_generation()
            batch = [d for d in collected if d.generation == current]
            if batch and not self._stop.is_set():
                return batch
        return []

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge exactly these deliveries (those whose connection is gone
        are skipped: the broker redelivers them).

        One basic.ack(multiple) covers the finished tags below the lowest tag
        still unfinished; finished tags above it are acknowledged one by one.
        A multiple ack past an unfinished delivery would acknowledge a message
        that was never processed (deliveries can reach the buffer out of tag
        order), and it would be lost if the connection then dropped.
        """
        session = self._session
        if session is None or not session.alive:
            return
        finished = session.outstanding & {
            d.delivery_tag for d in deliveries if d.generation == session.generation
        }
        if not finished:
            return  # already acknowledged (acking twice would close the channel)
        unfinished = session.outstanding - finished
        lowest = min(unfinished) if unfinished else None
        prefix = {t for t in finished if lowest is None or t < lowest}
        session.outstanding -= finished
        if prefix:
            await self._settle(session, "ack", max(prefix), multiple=True)
        for tag in sorted(finished - prefix):
            await self._settle(session, "ack", tag)

    async def ack_through(self, delivery: Delivery) -> None:
        """Acknowledge this one delivery (see `ack`)."""
        await self.ack([delivery])

    async def nack(self, delivery: Delivery, requeue: bool = True) -> None:
        """Reject one delivery (basic.nack), requeued by default."""
        session = self._session_for(delivery)
        if session is None or delivery.delivery_tag not in session.outstanding:
            return
        session.outstanding.discard(delivery.delivery_tag)
        await self._settle(session, "nack", delivery.delivery_tag, requeue=requeue)

    async def publish(
        self, exchange: str, routing_key: str, body: bytes, headers: dict[str, str]
    ) -> bool:
        """Publish a persistent message on the live connection (`""`: the default
        exchange) and wait for the broker's confirm. False, having sent nothing,
        when there is no connection."""
        session = self._session
        if session is None or not session.alive:
            return False
        # a channel of its own: a missing exchange closes it, not the consuming one
        async with asyncio.timeout(self._connect_timeout):
            await _publish(session.connection, exchange, routing_key, body, headers)
        return True

    async def close(self) -> None:
        """Stop consuming and close the channel and connection. Unacked
        deliveries go back to the queue (the broker requeues them)."""
        self._stop.set()
        self._arrived.set()  # wakes get_batch
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session, self._session = self._session, None
        if session is not None:
            await session.connection.close()
        self._purge()

    # -- consuming -------------------------------------------------------

    async def _collect(self, max_messages: int, max_wait: float) -> list[Delivery]:
        """Wait (without limit) for a first delivery, then take what arrives for up
        to ``max_wait`` seconds or until ``max_messages``; [] when stopping."""
        loop = asyncio.get_running_loop()
        batch: list[Delivery] = []
        deadline: float | None = None
        while not self._stop.is_set():
            current = self._current_generation()
            while self._buffer and len(batch) < max_messages:
                item = self._buffer.popleft()
                if item.generation == current:  # else its connection is gone: redelivered
                    batch.append(item)
            if len(batch) >= max_messages:
                break
            if batch and deadline is None:
                deadline = loop.time() + max_wait
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            self._arrived.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                break
        return batch

    def _current_generation(self) -> int | None:
        """The generation of the live session; deliveries of any other are void (their
        connection is gone, and the broker redelivers them). Asked once per batch, not
        per delivery: a batch of the mix holds a thousand of them."""
        session = self._session
        return session.generation if session is not None and session.alive else None

    def _session_for(self, delivery: Delivery) -> _Session | None:
        return self._session if delivery.generation == self._current_generation() else None

    def _on_delivered(
        self,
        session: _Session,
        _channel: pika.channel.Channel,
        method: pika.spec.Basic.Deliver,
        properties: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        """One delivery from the broker, called by pika as the frames are read: it
        only goes into the buffer."""
        tag = method.delivery_tag
        if session is not self._session or not session.alive:
            return
        session.outstanding.add(tag)
        self._arrived.set()
        ignored = self._recognise(body) if self._recognise is not None else None
        self._buffer.append(
            Delivery(
                body=b"" if ignored is not None else body,
                delivery_tag=tag,
                generation=session.generation,
                exchange=method.exchange or "",
                routing_key=method.routing_key or "",
                redelivered=bool(method.redelivered),
                broker=session.endpoint.host,
                message_id=properties.message_id,
                ignored=ignored,
            )
        )

    async def _settle(
        self, session: _Session, how: str, tag: int, *, multiple: bool = False, requeue: bool = True
    ) -> None:
        try:
            if how == "ack":
                session.channel.channel.basic_ack(tag, multiple=multiple)
            else:
                session.channel.channel.basic_nack(tag, requeue=requeue)
        except (pika.exceptions.AMQPError, ConnectionError) as exc:
            # The channel is gone: the broker redelivers everything unacked once
            # the connection is dropped.
            self._log.debug("amqp %s of tag %d dropped: %s", how, tag, describe_error(exc))
            session.mark_lost(exc)

    def _purge(self, generation: int | None = None) -> None:
        """Drop buffered deliveries (of one generation, or all)."""
        if generation is None:
            self._buffer.clear()
            return
        kept = [d for d in self._buffer if d.generation != generation]
        self._buffer.clear()
        self._buffer.extend(kept)

    # -- connection loop -------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        flaps = 0
        while not self._stop.is_set():
            if flaps and await self._pause(self._backoff.delay(flaps)):
                return
            try:
                session = await retry_forever(
                    self._connect_round,
                    policy=self._backoff,
                    what="amqp connect",
                    outage=self._outage,
                    stop_event=self._stop,
                )
            except Stopped:
                return
            exc = await self._until_lost(session)
            if exc is None:
                return  # stopping; close() tears the session down
            # A connection that dies soon after it was made must not turn
            # the loop into a tight reconnect loop: back off on flapping.
            flaps = flaps + 1 if loop.time() - session.started_at < self._backoff.cap else 0
            self._session = None
            self._purge(session.generation)
            self._next_index = (self._endpoints.index(session.endpoint) + 1) % len(self._endpoints)
            await session.connection.close()
            self._outage.failed(exc)

    async def _pause(self, seconds: float) -> bool:
        """Sleep unless stopped; True if stopped."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        return self._stop.is_set()

    async def _until_lost(self, session: _Session) -> BaseException | None:
        """Wait until the session dies (its error) or we stop (None)."""
        stopping = asyncio.ensure_future(self._stop.wait())
        waiters: list[asyncio.Future[Any]] = [session.lost, stopping]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if self._stop.is_set():
            return None
        return session.lost.result()

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            self._log.error("amqp source stopped unexpectedly: %s", describe_error(exc))

    async def _connect_round(self) -> _Session:
        """Try each endpoint once, starting with the next in rotation."""
        errors: list[str] = []
        config_error: AmqpConfigError | None = None
        count = len(self._endpoints)
        for offset in range(count):
            index = (self._next_index + offset) % count
            endpoint = self._endpoints[index]
            try:
                session = await self._connect(endpoint)
            except AmqpConfigError as exc:
                config_error = config_error or exc
                errors.append(f"{endpoint.label}: {exc}")
            except Exception as exc:
                errors.append(f"{endpoint.label}: {describe_error(exc)}")
            else:
                self._next_index = index
                self._log_connected(session, errors)
                return session
        if config_error is not None:
            raise config_error
        raise AmqpConnectError("; ".join(errors))

    def _log_connected(self, session: _Session, skipped: list[str]) -> None:
        """INFO when the broker changes (first connection, failover), else DEBUG."""
        endpoint = session.endpoint
        changed = endpoint.host != self._last_broker
        self._last_broker = endpoint.host
        self._log.log(
            logging.INFO if changed or skipped else logging.DEBUG,
            "amqp connected to %s (vhost %s), consuming queue %s%s",
            endpoint.label,
            endpoint.virtual_host,
            self._queue_name,
            f"; failed first: {'; '.join(skipped)}" if skipped else "",
            extra={"broker": endpoint.host, "generation": session.generation},
        )

    async def _connect(self, endpoint: AmqpEndpoint) -> _Session:
        parameters = connection_parameters(
            endpoint,
            ssl_context=self._ssl_context,
            heartbeat=self._heartbeat,
            connect_timeout=self._connect_timeout,
            name=self._name,
        )
        async with asyncio.timeout(self._connect_timeout):
            connection = await _Connection.open(parameters)
        try:
            async with asyncio.timeout(self._connect_timeout):
                return await self._open_session(endpoint, connection)
        except BaseException:
            self._session = None
            await connection.close()
            raise

    async def _open_session(self, endpoint: AmqpEndpoint, connection: _Connection) -> _Session:
        channel = await _Channel.open(connection.connection)
        await channel.call(channel.channel.basic_qos, prefetch_count=self._prefetch)
        await self._declare(channel, endpoint)
        loop = asyncio.get_running_loop()
        self._generation += 1
        session = _Session(
            generation=self._generation,
            endpoint=endpoint,
            connection=connection,
            channel=channel,
            lost=loop.create_future(),
            started_at=loop.time(),
        )
        for closed in (connection.closed, channel.closed):
            closed.add_done_callback(lambda f: session.mark_lost(f.result()))
        channel.channel.add_on_cancel_callback(
            lambda _frame: session.mark_lost(ConnectionError("consumer cancelled by the broker"))
        )
        self._session = session
        on_message = functools.partial(self._on_delivered, session)
        await channel.call(
            channel.channel.basic_consume, self._queue_name, on_message, auto_ack=False
        )
        return session

    async def _declare(self, channel: _Channel, endpoint: AmqpEndpoint) -> None:
        """Declare the exchanges and our own queue, and bind it."""
        for name in self._exchanges:
            try:
                await channel.call(
                    channel.channel.exchange_declare,
                    name,
                    exchange_type="topic",
                    durable=self._exchange_durable,
                )
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != _PRECONDITION_FAILED:
                    raise
                raise AmqpConfigError(
                    f"exchange {name!r} already exists on {endpoint.host} with other arguments "
                    f"({exc.reply_text}); set amqp.exchange_durable to "
                    f"{str(not self._exchange_durable).lower()} to match it"
                ) from None
        quorum = self._queue_type == "quorum"
        try:
            await channel.call(
                channel.channel.queue_declare,
                self._queue_name,
                durable=True,
                arguments={"x-queue-type": "quorum"} if quorum else None,
            )
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != _PRECONDITION_FAILED:
                raise
            raise AmqpConfigError(
                f"queue {self._queue_name!r} already exists on {endpoint.host} with other "
                f"arguments ({exc.reply_text}); set amqp.queue_type to match it, or choose "
                "another amqp.queue"
            ) from None
        for exchange in self._exchanges:
            for topic in self._topics:
                await channel.call(
                    channel.channel.queue_bind,
                    self._queue_name,
                    exchange,
                    routing_key=f"{topic}.info",
                )


def _validate(
    endpoints: list[AmqpEndpoint],
    exchanges: list[str],
    topics: list[str],
    queue: str,
    prefetch: int,
    queue_type: str,
) -> None:
    if not endpoints:
        raise ValueError("amqp.transport_url: no broker given")
    if not exchanges or not topics:
        raise ValueError("amqp.exchanges and amqp.topics must not be empty")
    if not queue:
        raise ValueError("amqp.queue must be set (osel consumes its own named queue)")
    shared = {f"{t}.{p}" for t in topics for p in _PRIORITIES}
    if queue in shared:
        raise ValueError(
            f"amqp.queue must not be {queue!r}: that queue is shared by other consumers "
            "(Ceilometer); consuming it would steal their messages. Use e.g. 'osel'"
        )
    if prefetch < 1:
        raise ValueError("amqp.prefetch must be at least 1")
    if queue_type not in _QUEUE_TYPES:
        raise ValueError(f"amqp.queue_type must be one of {', '.join(_QUEUE_TYPES)}")


async def _publish(
    connection: _Connection, exchange: str, routing_key: str, body: bytes, headers: dict[str, str]
) -> None:
    """Publish one persistent message on a channel of its own, with publisher confirms;
    raises unless the broker confirmed it. A message the broker cannot route (no
    such queue) comes back and is reported."""
    channel = await _Channel.open(connection.connection)
    try:
        loop = asyncio.get_running_loop()
        confirmed: asyncio.Future[bool] = loop.create_future()
        returned: list[str] = []

        def on_confirm(frame: Any) -> None:
            if not confirmed.done():
                confirmed.set_result(isinstance(frame.method, pika.spec.Basic.Ack))

        def on_return(_ch: Any, method: Any, _props: Any, _body: bytes) -> None:
            returned.append(f"{method.reply_code} {method.reply_text}")

        channel.channel.add_on_return_callback(on_return)
        await channel.call(channel.channel.confirm_delivery, on_confirm)
        if exchange:  # it must exist: a passive declare closes the channel (404) if not
            await channel.call(channel.channel.exchange_declare, exchange, passive=True)
        channel.channel.basic_publish(
            exchange,
            routing_key,
            body,
            properties=pika.BasicProperties(headers=dict(headers), delivery_mode=2),
            mandatory=True,
        )
        if not await channel.wait(confirmed):
            raise ConnectionError(f"the broker refused the message (nack) for {routing_key!r}")
        if returned:
            raise ConnectionError(
                f"the broker could not route the message to {routing_key!r} "
                f"({returned[0]}): no queue is bound for it"
            )
    finally:
        channel.close()


async def publish_once(
    endpoints: list[AmqpEndpoint],
    exchange: str,
    routing_key: str,
    body: bytes,
    headers: dict[str, str],
    *,
    connect_timeout: float = 10,
    ssl_context: ssl.SSLContext | None = None,
) -> str:
    """Publish one persistent message through the first endpoint that answers
    (for command-line tools); returns that endpoint's label."""
    quiet_pika_logging()
    errors = []
    for endpoint in endpoints:
        parameters = connection_parameters(
            endpoint,
            ssl_context=ssl_context,
            heartbeat=0,
            connect_timeout=connect_timeout,
            name=f"osel-cli@{socket.gethostname()}",
        )
        try:
            async with asyncio.timeout(connect_timeout):
                connection = await _Connection.open(parameters)
        except Exception as exc:  # as _connect_round: pika's connector errors are plain ones
            errors.append(f"{endpoint.label}: {describe_error(exc)}")
            continue
        try:
            async with asyncio.timeout(connect_timeout):
                await _publish(connection, exchange, routing_key, body, headers)
            return endpoint.label
        finally:
            await connection.close()
    raise AmqpConnectError("; ".join(errors) or "no endpoint")
