"""A real `osel run` process for the benchmark: its configuration, a warm store,
start and stop, its /metrics, its resident memory and its CPU time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml

from bench.broker import AMQP_URL
from bench.mix import Cloud
from osel.model import Rule
from osel.store.store import Store

STACK_DIR = Path(os.environ.get("OSEL_STACK_DIR") or Path.home() / ".cache" / "osel-stack")
PG_ADMIN_URL = os.environ.get("OSEL_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
S = TypeVar("S")
_METRIC = re.compile(r"^(\w+)(?:\{([^}]*)\})? ([0-9.e+-]+)$")


def clouds_yaml() -> Path:
    return Path(os.environ.get("OS_CLIENT_CONFIG_FILE") or STACK_DIR / "clouds.yaml")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def transport_url() -> str:
    rest = AMQP_URL.split("://", 1)[1].rsplit("/", 1)[0]
    return f"rabbit://{rest}/"


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A throwaway database on the local PostgreSQL; its URL."""
    import psycopg

    name = f"osel_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def warm_store(url: str, cloud: Cloud, rules: Iterable[Rule] = ()) -> int:
    """Migrate the store and write the cloud into its inventory, with `rules` beside
    the cloud's own; how many resources."""

    async def run() -> int:
        store = Store(url)
        try:
            await store.migrate()
            inventory = cloud.inventory()
            for rule in rules:
                inventory.put_rule(rule)
            await store.replace_inventory(inventory)
            return (
                len(inventory.groups)
                + len(inventory.rules)
                + len(inventory.ports)
                + len(inventory.fips)
            )
        finally:
            await store.close()

    return asyncio.run(run())


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return out


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Watch(Generic[S]):
    """Calls `sample` every `interval` seconds in a thread and keeps what it returns,
    until stopped or until it returns None (what it watches is gone)."""

    def __init__(self, sample: Callable[[], S | None], interval: float, name: str) -> None:
        self.sample, self.interval, self.name = sample, interval, name
        self.samples: list[S] = []
        self._stop = threading.Event()

    def start(self) -> Watch[S]:
        threading.Thread(target=self._run, daemon=True, name=self.name).start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self.sample()
            if value is None:
                return
            self.samples.append(value)
            self._stop.wait(self.interval)

    def stop(self) -> list[S]:
        self._stop.set()
        return self.samples


def rss_watch(pid: int, interval: float = 1.0) -> Watch[tuple[float, int]]:
    """VmRSS of a process every `interval` seconds: (monotonic, KiB)."""

    def sample() -> tuple[float, int] | None:
        value = rss_kib(pid)
        return None if value is None else (time.monotonic(), value)

    return Watch(sample, interval, "rss-watch")


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU time of a process, all its threads, in seconds (None once it
    is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since it booted, all its cores
    (`/proc/stat`; idle and I/O wait are not busy; guest time is already in user)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    total = sum(values)
    return (total - values[3] - values[4]) / CLOCK_TICKS, total / CLOCK_TICKS


def cpu_watch(
    pids: Sequence[int], interval: float = 0.25
) -> Watch[tuple[float, float, float, float]]:
    """The CPU time of some processes (summed) and of the machine, every `interval`
    seconds: (monotonic, their CPU seconds, the machine's busy and total CPU seconds).
    Stops by itself when every process is gone."""

    def sample() -> tuple[float, float, float, float] | None:
        own = [cpu_seconds(pid) for pid in pids]
        if all(v is None for v in own):
            return None
        busy, total = machine_seconds()
        return time.monotonic(), sum(v or 0.0 for v in own), busy, total

    return Watch(sample, interval, "cpu-watch")


class OselProcess:
    """`osel run` with a dry-run scanner, a JSONL audit file and its own queue."""

    def __init__(
        self,
        workdir: Path,
        *,
        store_url: str | None = None,
        exchanges: list[str],
        topics: list[str],
        queue: str,
        window_seconds: float = 0,
        extra: dict[str, dict[str, Any]] | None = None,
        counts: Path | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.queue = queue
        self.log = workdir / "osel.log"
        self.config = workdir / "osel.yaml"
        self.counts = counts
        self.store_url = store_url or f"sqlite:///{workdir}/osel.db"
        self.bind = f"127.0.0.1:{free_port()}"
        settings: dict[str, Any] = {
            "service": {"instance_name": "osel-bench"},
            "amqp": {
                "transport_url": transport_url(),
                "exchanges": exchanges,
                "topics": topics,
                "queue": queue,
            },
            "openstack": {"cloud": "osel", "resync_minutes": 0},
            "scan": {"backend": "dry-run", "window_seconds": window_seconds},
            "audit": {"sinks": [{"type": "file", "path": str(workdir / "audit.jsonl")}]},
            "store": {"url": self.store_url},
            "http": {"enabled": True, "bind": self.bind},
        }
        for section, values in (extra or {}).items():
            settings.setdefault(section, {}).update(values)
        self.settings = settings
        self.config.write_text(yaml.safe_dump(settings))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, wait_for: str = "amqp connected", timeout: float = 120) -> None:
        env = {**os.environ}
        if clouds_yaml().exists():
            env["OS_CLIENT_CONFIG_FILE"] = str(clouds_yaml())
        env.pop("OSEL_CRASH_AT", None)
        if self.counts is not None:
            command = [sys.executable, "-m", "bench.counted", str(self.counts)]
        else:
            command = [sys.executable, "-m", "osel"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*command, "run", "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=Path(__file__).resolve().parents[1],
            )
        self.wait_for_log(wait_for, timeout=timeout)

    def wait_for_log(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.exists() and text in self.log.read_text(errors="replace"):
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"osel exited with {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"osel did not log {text!r} within {timeout}s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        with urllib.request.urlopen(f"http://{self.bind}/metrics", timeout=30) as answer:
            return parse_metrics(answer.read().decode())

    def outcomes(self) -> dict[str, int]:
        """Messages processed so far, by outcome (from /metrics)."""
        out: dict[str, int] = {}
        for labels, value in self.metrics().get("osel_messages_total", []):
            out[labels.get("outcome", "")] = out.get(labels.get("outcome", ""), 0) + int(value)
        return out

    def wait_processed(self, total: int, timeout: float = 600) -> float:
        """Wait until osel has committed `total` messages; the monotonic time it saw that."""
        return wait_processed([self], total, timeout)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def wait_processed(fleet: list[OselProcess], total: int, timeout: float = 600) -> float:
    """Wait until the instances together have committed `total` messages; the monotonic
    time that was seen. Fails at once when one of them exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(sum(member.outcomes().values()) for member in fleet) >= total:
            return time.monotonic()
        for member in fleet:
            if member.proc is not None and member.proc.poll() is not None:
                raise RuntimeError(f"osel exited with {member.proc.returncode}:\n{member.tail()}")
        time.sleep(0.1)
    raise RuntimeError(
        f"{len(fleet)} osel instance(s) did not process {total} messages in {timeout}s:\n"
        + fleet[0].tail()
    )
