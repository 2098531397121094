"""The JSONL file sink: whole lines, even after a writer died mid-write."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from osel.sinks.file import FileSink, torn_tail


def records(start: int, count: int, pad: int = 0) -> list[tuple[int, str]]:
    return [
        (i, json.dumps({"record_id": f"r{i}", "pad": "x" * pad}))
        for i in range(start, start + count)
    ]


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_batches_are_appended_as_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "audit.jsonl"
    sink = FileSink(str(path))
    await sink.send(records(0, 3))
    await sink.send(records(3, 2))
    assert [r["record_id"] for r in lines(path)] == ["r0", "r1", "r2", "r3", "r4"]
    assert path.read_bytes().endswith(b"}\n")


@pytest.mark.parametrize("whole_before", [0, 2])
async def test_a_record_cut_short_is_removed_before_the_batch_is_written_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, whole_before: int
) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileSink(str(path))
    if whole_before:
        await sink.send(records(0, whole_before))
    torn = records(whole_before, 1, pad=100_000)[0][1][:70_000]  # longer than one look back
    with path.open("a") as fh:
        fh.write(torn)
    with caplog.at_level(logging.WARNING, "osel.sinks.file"):
        await sink.send(records(whole_before, 2))
    got = [r["record_id"] for r in lines(path)]  # every line parses
    assert got == [f"r{i}" for i in range(whole_before + 2)]
    assert f"removed {len(torn)} bytes at the end of {path}" in caplog.text


async def test_a_file_ending_in_a_newline_is_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"record_id": "kept"}\n')
    with caplog.at_level(logging.WARNING, "osel.sinks.file"):
        await FileSink(str(path)).send(records(1, 1))
    assert [r["record_id"] for r in lines(path)] == ["kept", "r1"]
    assert caplog.text == ""


def test_torn_tail_reports_where_the_last_whole_line_ends(tmp_path: Path) -> None:
    path = tmp_path / "f"
    for content, expected in [(b"", 0), (b"a\n", 2), (b"a\nb", 2), (b"abc", 0), (b"a\n\nbc", 3)]:
        path.write_bytes(content)
        fd = os.open(path, os.O_RDONLY)
        try:
            assert torn_tail(fd) == (expected, len(content))
        finally:
            os.close(fd)


WRITER = """
import asyncio, json, sys
from osel.sinks.file import FileSink
sink = FileSink(sys.argv[1], fsync=False)
name = sys.argv[2]
async def main():
    for b in range(200):
        batch = [{"w": name, "b": b, "i": i, "pad": "x" * 3000} for i in range(20)]
        await sink.send([(r["i"], json.dumps(r)) for r in batch])
asyncio.run(main())
"""


def test_writers_sharing_one_file_never_interleave_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), name])
        for name in ("a", "b", "c")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    got = lines(path)
    assert len(got) == 3 * 200 * 20
    for name in ("a", "b", "c"):  # each writer's records whole and in its order
        mine = [(r["b"], r["i"]) for r in got if r["w"] == name]
        assert mine == [(b, i) for b in range(200) for i in range(20)]


KEEPS_WRITING = """
import asyncio, json, logging, sys
from osel.sinks.file import FileSink
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
sink = FileSink(sys.argv[1], fsync=False)
async def main(batches):
    for b in range(batches):
        batch = [{"b": b, "i": i, "pad": "x" * 100_000} for i in range(100)]
        await sink.send([(r["i"], json.dumps(r)) for r in batch])
asyncio.run(main(int(sys.argv[2])))
"""


def test_a_writer_sigkilled_mid_write_leaves_no_broken_line(tmp_path: Path) -> None:
    """Real kills of a writer appending 10 MB batches, until one cuts a record short."""
    path = tmp_path / "audit.jsonl"
    rng = random.Random(7)
    for _ in range(60):
        path.unlink(missing_ok=True)
        writer = subprocess.Popen([sys.executable, "-c", KEEPS_WRITING, str(path), "1000"])
        time.sleep(rng.uniform(0.3, 0.9))
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        with path.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                break
    else:
        pytest.fail("no kill in 60 landed in the middle of a write")
    after = subprocess.run(
        [sys.executable, "-c", KEEPS_WRITING, str(path), "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "a record cut short by a writer that stopped mid-write" in after.stderr
    with path.open() as fh:
        got = [json.loads(line) for line in fh]  # every line is one whole record
    assert got[-100:] == [{"b": 0, "i": i, "pad": "x" * 100_000} for i in range(100)]
