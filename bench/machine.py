"""What the benchmark ran on."""

from __future__ import annotations

import os
import platform
import sqlite3
from pathlib import Path
from typing import Any

from bench import broker


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _rabbitmq() -> str:
    try:
        conn = broker.connect()
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    try:
        props: dict[Any, Any] = conn._impl.server_properties or {}
        version = props.get("version") or props.get(b"version") or b"?"
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        conn.close()


def _postgresql() -> str:
    try:
        import psycopg

        from bench.oselproc import PG_ADMIN_URL

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else "?"
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"


def describe() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "kernel": platform.release(),
        "rabbitmq": _rabbitmq(),
        "postgresql": _postgresql(),
        "sqlite": sqlite3.sqlite_version,
    }
