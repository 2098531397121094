"""`osel replay FILE`: captured notifications through the same pipeline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from osel.pipeline import Item


def read_bodies(path: str | Path) -> Iterator[bytes]:
    """One AMQP body a line, or `{"body": ...}` (a string or an object) a line."""
    with Path(path).open("rb") as fh:
        for raw in fh:
            line = raw.strip()
            if not line:
                continue
            try:
                data = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                yield line  # let the pipeline quarantine it, with its reason
                continue
            if isinstance(data, dict) and "body" in data and "event_type" not in data:
                body = data["body"]
                yield body.encode() if isinstance(body, str) else json.dumps(body).encode()
            else:
                yield line


def items(path: str | Path) -> Iterator[Item]:
    for body in read_bodies(path):
        yield Item(body, "replay", "")
