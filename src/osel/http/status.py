"""The status page: server-rendered HTML (Jinja2), no JavaScript, no build step."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from osel.store import queries

if TYPE_CHECKING:
    from osel.http.app import Context

_env = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)


def _permits(permits: list[dict[str, Any]]) -> str:
    out = []
    for p in permits:
        low, high = p["port_range_min"], p["port_range_max"]
        ports = (
            "all ports"
            if (low, high) == (0, 65535)
            else (str(low) if low == high else f"{low}-{high}")
        )
        out.append(f"{p['protocol']}/{ports} from {p['remote']}")
    return ", ".join(out)


def _ago(epoch: float) -> str:
    if not epoch:
        return "never"
    seconds = int(time.time() - epoch)
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


async def render_status(ctx: Context) -> str:
    page = await queries.changes(ctx.store, queries.ChangeFilter(limit=100))
    scans = await queries.scans(ctx.store, queries.ScanFilter(limit=50))
    addresses: dict[str, dict[str, Any]] = {}
    for change in page.items:
        address = change["affected_ip_address"]
        if address and address not in addresses:
            addresses[address] = change
    summaries = {s["id"]: s.get("summary") for s in scans.items}
    return _env.get_template("status.html").render(
        instance=ctx.instance,
        now=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        health=[
            {"name": name, "up": s.up, "since": _ago(s.since), "error": s.error}
            for name, s in sorted(ctx.health.deps.items())
        ],
        lag=await ctx.lag(),
        counts=await queries.counts(ctx.store),
        changes=page.items,
        addresses=addresses,
        scans=scans.items,
        summaries=summaries,
        permits=_permits,
    )
