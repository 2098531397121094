"""The JSONL file sink: one audit record a line, appended and synced."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


class FileSink:
    def __init__(self, path: str, *, fsync: bool = True, sink_id: str | None = None) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.sink_id = sink_id or f"file:{path}"

    def _write(self, lines: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines))
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())

    async def send(self, records: list[tuple[int, str]]) -> None:
        await asyncio.to_thread(self._write, [body for _, body in records])

    async def close(self) -> None:
        return None
