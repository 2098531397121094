"""Run a real `osel run` process for end-to-end tests and read what it writes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import sqlalchemy
import yaml

from tests.integration.neutron_fixtures import clouds_yaml, unique

Record = dict[str, Any]
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def delete_queue(name: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        conn.channel().queue_delete(name)
    finally:
        conn.close()


def store_query(url: str, sql: str) -> list[Any]:
    """Rows of a query on a store given by its osel URL (SQLite or PostgreSQL)."""
    sync_url = sqlalchemy.make_url(url)
    if sync_url.get_backend_name() == "postgresql":
        sync_url = sync_url.set(drivername="postgresql+psycopg")
    engine = sqlalchemy.create_engine(sync_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sqlalchemy.text(sql))]
    finally:
        engine.dispose()


class OselProcess:
    """`osel run` with a dry-run scanner, a JSONL audit file and its own queue."""

    def __init__(
        self,
        workdir: Path,
        *,
        window_seconds: float = 1.0,
        extra: dict[str, Any] | None = None,
        http: bool = False,
        store_url: str | None = None,
        queue: str | None = None,
        instance: str = "osel-test",
        audit: Path | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.queue = queue or unique("queue")
        self.audit = audit or workdir / "audit.jsonl"
        self.log = workdir / "osel.log"
        self.config = workdir / "osel.yaml"
        self.store_url = store_url or f"sqlite:///{workdir}/osel.db"
        settings: dict[str, Any] = {
            "service": {"instance_name": instance, "batch_wait_ms": 20},
            "amqp": {"queue": self.queue, "prefetch": 200},
            "openstack": {"cloud": "osel", "resync_minutes": 0},
            "scan": {"backend": "dry-run", "window_seconds": window_seconds},
            "audit": {"sinks": [{"type": "file", "path": str(self.audit)}]},
            "store": {"url": self.store_url},
            "http": {"enabled": http, "bind": f"127.0.0.1:{free_port()}"},
        }
        for section, values in (extra or {}).items():
            settings.setdefault(section, {}).update(values)
        self.config.write_text(yaml.safe_dump(settings))
        self.http_url = f"http://{settings['http']['bind']}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "OS_CLIENT_CONFIG_FILE": str(clouds_yaml())}
        full_env.pop("OSEL_CRASH_AT", None)
        full_env.update(env or {})
        offset = len(self.log.read_text(errors="replace")) if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "osel", "run", "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
            )
        # ready means consuming: a message published to its queue before osel has
        # declared it would be dropped by the broker (unroutable)
        settings = yaml.safe_load(self.config.read_text())
        consumes = settings.get("amqp", {}).get("enabled", True) and (
            settings.get("service", {}).get("role", "all") != "worker"
        )
        self.wait_for_log("amqp connected" if consumes else "running", after=offset)

    def wait_for_log(self, text: str, *, after: int = 0, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text(errors="replace")[after:]:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"osel exited with {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.1)
        raise AssertionError(f"osel did not log {text!r} within {timeout}s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def records(self) -> list[Record]:
        if not self.audit.exists():
            return []
        text = self.audit.read_text()
        text = text[: text.rfind("\n") + 1]  # as a tailing reader does: whole lines only
        return [json.loads(line) for line in text.splitlines() if line]

    def wait_records(
        self, match: Callable[[Record], bool], count: int, *, timeout: float = 30
    ) -> list[Record]:
        """Wait until exactly `count` records match (and a moment longer, to catch extras)."""
        deadline = time.monotonic() + timeout
        found: list[Record] = []
        while time.monotonic() < deadline:
            found = [r for r in self.records() if match(r)]
            if len(found) >= count:
                time.sleep(1.0)
                return [r for r in self.records() if match(r)]
            time.sleep(0.2)
        raise AssertionError(f"{len(found)} of {count} records after {timeout}s:\n{self.tail()}")

    def store_records(self) -> list[Record]:
        """Every audit record committed in the store (the source of truth)."""
        return [
            json.loads(body) for (body,) in self.query("SELECT body FROM audit_records ORDER BY id")
        ]

    def query(self, sql: str) -> list[Any]:
        """Rows of a query on osel's store (SQLite or PostgreSQL)."""
        return store_query(self.store_url, sql)

    def queue_depth(self, *, wait_released: float = 0.0) -> int:
        """Messages ready in the queue. With `wait_released`, first wait (at most that
        many seconds) for the broker to see the consumer go: until it has, what a killed
        consumer held counts as unacknowledged, not ready."""
        deadline = time.monotonic() + wait_released
        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            channel = conn.channel()
            while True:
                ok = channel.queue_declare(self.queue, passive=True).method
                if ok.consumer_count == 0 or time.monotonic() >= deadline:
                    return int(ok.message_count)
                time.sleep(0.05)
        finally:
            conn.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"osel did not stop on SIGTERM:\n{self.tail()}") from None

    def close(self) -> None:
        try:
            self.stop()
        finally:
            delete_queue(self.queue)
