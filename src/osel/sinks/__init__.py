"""Audit sinks: where committed records are delivered."""

from __future__ import annotations

from typing import Protocol


class Sink(Protocol):
    """Delivers records in order; raises when it could not deliver them all."""

    sink_id: str

    async def send(self, records: list[tuple[int, str]]) -> None: ...

    async def close(self) -> None: ...
