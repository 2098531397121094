"""The oslo.messaging notification listener, as Ceilometer consumes notifications.

Ceilometer's notification agent (27.0) calls `get_batch_notification_listener`
with the threading executor, its `[notification] batch_size` (default 1) and
`batch_timeout` (default none), and starts it with a pool of
`max_parallel_requests` (default 64) threads; these are the defaults here, with
one endpoint whose `info` only counts (oslo.messaging has already decoded the
messages). `--batch-size 0` takes the plain `get_notification_listener` instead
(on this machine the two drained at the same rate, 2,425 and 2,435 messages/s;
with a batch size of 100, 3,235).

Run as its own process by the benchmark; prints one JSON line with its timings.
`--declare` starts and stops the listener once, so that oslo.messaging declares
its queue (`<topic>.info` on the exchange) the way it wants it before the
messages are published.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from typing import Any

import oslo_messaging
from oslo_config import cfg

from bench.broker import AMQP_URL


def transport_url() -> str:
    """The pika URL of the benchmark as an oslo.messaging transport URL."""
    rest = AMQP_URL.split("://", 1)[1].rsplit("/", 1)[0]
    return f"rabbit://{rest}/"


class Counter:
    def __init__(self, count: int) -> None:
        self.expected = count
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = threading.Event()
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        """`n` more notifications taken."""
        with self.lock:
            if self.count == 0:
                self.first = time.monotonic()
            self.count += n
            self.last = time.monotonic()
            if self.count >= self.expected:
                self.done.set()

    def info(
        self,
        ctxt: dict[str, Any],
        publisher_id: str,
        event_type: str,
        payload: dict[str, Any],
        metadata: dict[str, Any],
    ) -> Any:
        self.add(1)
        return oslo_messaging.NotificationResult.HANDLED


class BatchCounter(Counter):
    """The endpoint of a batch listener: `info` takes a list of notifications."""

    def info(self, messages: list[dict[str, Any]]) -> Any:  # type: ignore[override]
        self.add(len(messages))
        return oslo_messaging.NotificationResult.HANDLED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.oslo_listener")
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--declare", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--batch-timeout", type=float, default=None)
    parser.add_argument("--pool-size", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    conf = cfg.ConfigOpts()
    conf([], project="osel-bench")
    transport = oslo_messaging.get_notification_transport(conf, url=transport_url())
    target = oslo_messaging.Target(topic=args.topic, exchange=args.exchange)
    if args.batch_size:
        counter: Counter = BatchCounter(max(1, args.count))
        listener = oslo_messaging.get_batch_notification_listener(
            transport, [target], [counter], executor="threading",
            batch_size=args.batch_size, batch_timeout=args.batch_timeout,
        )  # fmt: skip
        listener.start(override_pool_size=args.pool_size)
    else:
        counter = Counter(max(1, args.count))
        listener = oslo_messaging.get_notification_listener(
            transport, [target], [counter], executor="threading"
        )
        listener.start()
    if not args.declare:
        counter.done.wait(args.timeout)
    else:
        time.sleep(1.0)
    listener.stop()
    listener.wait()
    transport.cleanup()
    if args.declare:
        return 0
    # the last message is acknowledged when `info` returns, a moment after `last`
    span = counter.last - counter.first
    json.dump(
        {
            "messages": counter.count,
            "first_at": counter.first,
            "last_ack_at": counter.last,
            "rate": (counter.count - 1) / span if span > 0 else None,
        },
        sys.stdout,
    )
    print()
    return 0 if counter.count >= args.count else 1


if __name__ == "__main__":
    sys.exit(main())
