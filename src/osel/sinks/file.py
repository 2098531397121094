"""The JSONL file sink: one audit record a line, appended and synced.

Each batch is appended with one ``write`` on a file opened for appending,
under an exclusive ``flock`` held until it is synced. A writer killed in the
middle of a batch (SIGKILL, a crash, a full disk) can leave a record cut
short at the end of the file; its cursor had not moved, so the whole batch is
sent again. Before appending, the next writer, holding the lock, removes such
an unterminated tail, so that every line of the file stays one whole JSON
record (a torn fragment glued to the next record would spoil that record
too). The lock makes the check safe with several writers on one file: a
writer that is alive holds the lock for all of its write.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_SCAN = 1 << 16  # bytes read at a time when looking back for the last newline


def torn_tail(fd: int) -> tuple[int, int]:
    """(where the last whole line ends, file size) of an open file."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size, size
    end = size - 1
    while end > 0:
        start = max(end - _SCAN, 0)
        found = os.pread(fd, end - start, start).rfind(b"\n")
        if found >= 0:
            return start + found + 1, size
        end = start
    return 0, size


class FileSink:
    def __init__(self, path: str, *, fsync: bool = True, sink_id: str | None = None) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.sink_id = sink_id or f"file:{path}"

    def _write(self, lines: list[str]) -> None:
        data = memoryview("".join(line + "\n" for line in lines).encode())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            whole, size = torn_tail(fd)
            if whole < size:
                os.ftruncate(fd, whole)
                log.warning(
                    "audit sink %s: removed %d bytes at the end of %s, a record cut short "
                    "by a writer that stopped mid-write; it is written again",
                    self.sink_id,
                    size - whole,
                    self.path,
                )
            while data:
                data = data[os.write(fd, data) :]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock

    async def send(self, records: list[tuple[int, str]]) -> None:
        await asyncio.to_thread(self._write, [body for _, body in records])

    async def close(self) -> None:
        return None
