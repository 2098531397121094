"""RabbitMQ helpers of the benchmark (pika, blocking): declare, publish, watch a queue."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions

AMQP_URL = os.environ.get("OSEL_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
PREFIX = "osel-bench-"


def unique(what: str) -> str:
    return f"{PREFIX}{what}-{uuid.uuid4().hex[:8]}"


def connect() -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(AMQP_URL))


def declare(exchange: str, queue: str, routing_key: str) -> None:
    """The exchange (topic, not durable, as Neutron's) and a durable queue bound to it,
    declared as osel declares its own."""
    conn = connect()
    try:
        ch = conn.channel()
        ch.exchange_declare(exchange, exchange_type="topic", durable=False)
        ch.queue_declare(queue, durable=True)
        ch.queue_bind(queue, exchange, routing_key=routing_key)
    finally:
        conn.close()


def delete(queues: Iterable[str] = (), exchanges: Iterable[str] = ()) -> None:
    conn = connect()
    try:
        ch = conn.channel()
        for q in queues:
            ch.queue_delete(q)
        for e in exchanges:
            ch.exchange_delete(e)
    finally:
        conn.close()


def depth(queue: str, channel: Any = None) -> int:
    """Messages ready in the queue (not counting those delivered and unacknowledged)."""
    if channel is not None:
        return int(channel.queue_declare(queue, passive=True).method.message_count)
    conn = connect()
    try:
        return depth(queue, conn.channel())
    finally:
        conn.close()


PROPERTIES = pika.BasicProperties(
    content_type="application/json", content_encoding="utf-8", delivery_mode=2
)


class Publisher:
    """One connection publishing persistent messages (with publisher confirms if asked:
    each publish then waits for the broker's confirm)."""

    def __init__(self, confirm: bool = False) -> None:
        self.conn = connect()
        self.channel = self.conn.channel()
        if confirm:
            self.channel.confirm_delivery()

    def publish(self, exchange: str, routing_key: str, bodies: Iterable[bytes]) -> int:
        count = 0
        for body in bodies:
            self.channel.basic_publish(exchange, routing_key, body, PROPERTIES)
            count += 1
        return count

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()


def publish(exchange: str, routing_key: str, bodies: Iterable[bytes]) -> int:
    publisher = Publisher()
    try:
        return publisher.publish(exchange, routing_key, bodies)
    finally:
        publisher.close()


def wait_depth(queue: str, at_least: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    conn = connect()
    try:
        channel = conn.channel()
        while True:
            now = depth(queue, channel)
            if now >= at_least or time.monotonic() > deadline:
                return now
            time.sleep(0.05)
    finally:
        conn.close()


@dataclass
class DepthWatch:
    """Samples a queue's depth every `interval` seconds in a thread: (monotonic, depth)."""

    queue: str
    interval: float = 0.05
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> DepthWatch:
        self._thread = threading.Thread(target=self._run, name="depth-watch", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        conn = connect()
        try:
            channel = conn.channel()
            while not self._stop.is_set():
                try:
                    self.samples.append((time.monotonic(), depth(self.queue, channel)))
                except pika.exceptions.AMQPError:
                    return
                self._stop.wait(self.interval)
        finally:
            if conn.is_open:
                conn.close()

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        return self.samples

    def wait_empty(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.samples and self.samples[-1][1] == 0:
                return True
            time.sleep(self.interval)
        return False
