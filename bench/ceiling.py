"""The ceiling: a bare pika consumer that only decodes the JSON (envelope and inner
message) and acknowledges every `--ack-every` messages with one basic.ack(multiple).

Run as its own process by the benchmark; prints one JSON line with its timings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from bench.broker import connect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling")
    parser.add_argument("--queue", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--ack-every", type=int, default=200)
    args = parser.parse_args(argv)

    conn = connect()
    channel = conn.channel()
    channel.basic_qos(prefetch_count=args.prefetch)
    state = {"count": 0, "first": 0.0, "last": 0.0, "bad": 0}

    def on_message(ch: Any, method: Any, _properties: Any, body: bytes) -> None:
        if state["count"] == 0:
            state["first"] = time.monotonic()
        try:
            outer = json.loads(body)
            inner = outer.get("oslo.message")
            if isinstance(inner, str):
                json.loads(inner)
        except ValueError:
            state["bad"] += 1
        state["count"] += 1
        if state["count"] % args.ack_every == 0 or state["count"] >= args.count:
            ch.basic_ack(method.delivery_tag, multiple=True)
            state["last"] = time.monotonic()
        if state["count"] >= args.count:
            ch.stop_consuming()

    channel.basic_consume(args.queue, on_message, auto_ack=False)
    channel.start_consuming()
    conn.close()
    span = state["last"] - state["first"]
    json.dump(
        {
            "messages": state["count"],
            "undecodable": state["bad"],
            "first_at": state["first"],
            "last_ack_at": state["last"],
            "rate": (state["count"] - 1) / span if span > 0 else None,
        },
        sys.stdout,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
