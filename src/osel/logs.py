"""Logging: stdlib logging rendered by structlog (console or JSON lines)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

import structlog

from osel.redact import Redactor


def setup(level: str = "info", fmt: str = "console", secrets: Iterable[str] = ()) -> None:
    """Route stdlib logging through structlog; `secrets` never appear in a line."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
                Redactor(secrets),
            ],
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.stdlib.ExtraAdder(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in (
        "keystoneauth",
        "stevedore",
        "openstack",
        "urllib3",
        "alembic",
        "httpx",
        "aiosqlite",
        "asyncio",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
