"""The `osel` command."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, TypeVar

import click
import yaml

from osel import __version__, logs
from osel.config import ConfigError, Settings, load_settings

T = TypeVar("T")

CONFIG_HELP = "Configuration file (default: $OSEL_CONFIG, ./osel.yaml, /etc/osel/osel.yaml)"


def _settings(config: str | None) -> Settings:
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        click.echo(f"osel: the configuration has {len(exc.problems)} problem(s):", err=True)
        click.echo(str(exc), err=True)
        click.echo("run `osel check-config` for details", err=True)
        sys.exit(2)
    logs.setup(settings.service.log_level, settings.service.log_format)
    return settings


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


config_option = click.option(
    "-c", "--config", "config", type=click.Path(), default=None, help=CONFIG_HELP
)


@click.group()
@click.version_option(__version__, prog_name="osel")
def main() -> None:
    """osel: OpenStack exposure changes to Qualys scans and an audit trail."""


@main.command()
@config_option
def run(config: str | None) -> None:
    """Run the daemon."""
    settings = _settings(config)
    from osel.daemon import Daemon

    async def go() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await Daemon(settings).run(stop)

    sys.exit(_run(go()))


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@config_option
@click.option(
    "--offline",
    is_flag=True,
    help="Do not ask Neutron: resolve from the notifications and the store only",
)
def replay(file: str, config: str | None, offline: bool) -> None:
    """Run captured notifications (JSONL) through the pipeline, then exit."""
    settings = _settings(config)
    summary = _run(_replay(settings, file, offline))
    click.echo(json.dumps(summary, indent=2, sort_keys=True))
    sys.exit(1 if summary["deferred_waiting"] else 0)


async def _replay(settings: Settings, file: str, offline: bool) -> dict[str, Any]:
    from osel.daemon import Daemon
    from osel.neutron import OfflineNeutron
    from osel.pipeline import Stats
    from osel.replay import items

    daemon = Daemon(settings, neutron=OfflineNeutron() if offline else None)
    await daemon.prepare(initial_sync=not offline)
    total = Stats()
    chunk: list[Any] = []
    for item in items(file):
        chunk.append(item)
        if len(chunk) >= settings.service.batch_size:
            total.add(await daemon.process(chunk))
            chunk = []
    if chunk:
        total.add(await daemon.process(chunk))
    daemon.scheduler.window = timedelta(0)
    await daemon.scheduler.resume()
    batches = await daemon.scheduler.tick()
    for sink in daemon.outbox.sinks:
        await daemon.outbox.drain_once(sink)
    waiting = await daemon.store.deferred_count()
    await daemon.neutron.close()
    await daemon.store.close()
    return {
        "messages": sum(total.outcomes.values()),
        "outcomes": dict(total.outcomes),
        "changes": dict(total.changes),
        "records": total.records,
        "scan_batches": len(batches),
        "deferred_waiting": waiting,
    }


@main.command("check-config")
@config_option
def check_config(config: str | None) -> None:
    """Validate the configuration; print every problem with its key."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        click.echo(f"{len(exc.problems)} problem(s):")
        click.echo(str(exc))
        sys.exit(1)
    if not settings.audit.sinks:
        click.echo(
            "warning: audit.sinks is empty: records stay in the store only "
            "(osel audit tail shows them)"
        )
    click.echo("configuration OK; effective settings (secrets masked):")
    click.echo(yaml.safe_dump(settings.redacted(), sort_keys=False, default_flow_style=False))


def _with_store(settings: Settings, fn: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    from osel.store.store import Store

    async def go() -> T:
        store = Store(settings.store.url.get_secret_value())
        try:
            await store.migrate()
            return await fn(store)
        finally:
            await store.close()

    return _run(go())


@main.group()
def audit() -> None:
    """Audit records."""


@audit.command("tail")
@config_option
@click.option("-n", "count", default=20, show_default=True, help="How many records")
def audit_tail(config: str | None, count: int) -> None:
    """Print the newest audit records (JSON lines)."""
    settings = _settings(config)
    for record in _with_store(settings, lambda s: s.tail(count)):
        click.echo(json.dumps(record, sort_keys=True))


@main.group(invoke_without_command=True)
@click.pass_context
def scans(ctx: click.Context) -> None:
    """Scan batches and their state (default: list)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(scans_list)


def _batch_view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "state": row.state,
        "backend": row.backend,
        "reference": row.reference or "",
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "priority": row.priority,
        "addresses": json.loads(row.addresses),
        "error": row.error or "",
    }


@scans.command("list")
@config_option
@click.option("-n", "count", default=50, show_default=True)
def scans_list(config: str | None = None, count: int = 50) -> None:
    """List scan batches, newest first."""
    from osel.scheduler import DryRunBackend, Scheduler

    settings = _settings(config)

    async def fetch(store: Any) -> list[Any]:
        sched = Scheduler(store, DryRunBackend(), window_seconds=0, max_targets=1, instance="")
        return await sched.batches(count)

    rows = _with_store(settings, fetch)
    if not rows:
        click.echo("no scan batches yet")
    for row in rows:
        v = _batch_view(row)
        click.echo(
            f"{v['created_at']}  {v['id']}  {v['state']:<9} {v['backend']:<8} "
            f"{v['reference'] or '-':<24} {len(v['addresses'])} address(es)"
            f"{'  error: ' + v['error'] if v['error'] else ''}"
        )


@scans.command("show")
@click.argument("ref")
@config_option
def scans_show(ref: str, config: str | None) -> None:
    """Show one batch by its id or its Qualys reference."""
    from osel.scheduler import DryRunBackend, Scheduler

    settings = _settings(config)

    async def fetch(store: Any) -> list[Any]:
        sched = Scheduler(store, DryRunBackend(), window_seconds=0, max_targets=1, instance="")
        return [r for r in await sched.batches(10_000) if ref in (r.id, r.reference)]

    rows = _with_store(settings, fetch)
    if not rows:
        click.echo(f"no scan batch with id or reference {ref!r}", err=True)
        sys.exit(1)
    click.echo(json.dumps(_batch_view(rows[0]), indent=2))


@main.group(invoke_without_command=True)
@click.pass_context
def quarantine(ctx: click.Context) -> None:
    """Messages that could not be processed (default: list)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(quarantine_list)


@quarantine.command("list")
@config_option
def quarantine_list(config: str | None = None) -> None:
    """List quarantined messages, newest first."""
    settings = _settings(config)
    rows = _with_store(settings, lambda s: s.quarantine_list())
    if not rows:
        click.echo("quarantine is empty")
    for row in rows:
        click.echo(
            f"{row.id:>6}  {row.received_at.isoformat()}  {row.source:<7} "
            f"{row.event_type or '-':<36} {row.reason}"
        )


@main.group()
def db() -> None:
    """The store."""


@db.command("upgrade")
@config_option
def db_upgrade(config: str | None) -> None:
    """Apply the store's migrations (osel run does this too)."""
    settings = _settings(config)

    async def noop(_store: Any) -> None:
        return None

    _with_store(settings, noop)
    click.echo("store is at the newest schema")
