"""The `osel` command."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import click
import yaml

from osel import __version__, logs
from osel.config import ConfigError, Settings
from osel.config_load import load_settings
from osel.redact import secret_values

if TYPE_CHECKING:
    from osel.daemon import Daemon

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
    logs.setup(settings.service.log_level, settings.service.log_format, secret_values(settings))
    return settings


def _run(coro: Coroutine[Any, Any, T]) -> T:
    from osel.store.store import SchemaTooNew

    try:
        return asyncio.run(coro)
    except SchemaTooNew as exc:
        click.echo(f"osel: {exc}", err=True)
        sys.exit(2)


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
    from osel import memory
    from osel.daemon import Daemon

    memory.limit_arenas()  # before any thread starts
    memory.tune_collector()

    async def go() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        daemon = Daemon(settings)
        reloads: set[asyncio.Task[bool]] = set()

        def reload_policy() -> None:  # SIGHUP: read policy.file again, between two batches
            task = asyncio.create_task(daemon.reload_policy())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, reload_policy)
        return await daemon.run(stop)

    sys.exit(_run(go()))


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False), required=False)
@config_option
@click.option(
    "--offline",
    is_flag=True,
    help="Do not ask Neutron: resolve from the notifications and the store only",
)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Shadow replay: decide the change records of --since again under this policy "
    "file and print what would differ; nothing is scanned or written",
)
@click.option(
    "--since",
    default=None,
    help="With --policy: the period, 7d, 12h, 30m, 2w or an ISO date/time (UTC)",
)
@click.option("--until", default=None, help="With --policy: end of the period (default: now)")
@click.option("--json", "as_json", is_flag=True, help="With --policy: the report as JSON")
def replay(
    file: str | None,
    config: str | None,
    offline: bool,
    policy_file: str | None,
    since: str | None,
    until: str | None,
    as_json: bool,
) -> None:
    """Run captured notifications (JSONL) through the pipeline, then exit.

    With --policy NEW.yaml --since 7d instead of FILE: a shadow replay of the
    change records committed in the period under NEW.yaml (docs/policy.md).
    """
    if policy_file is not None or since is not None:
        if file is not None or policy_file is None or since is None:
            raise click.UsageError(
                "a shadow replay takes --policy FILE and --since PERIOD, and no capture FILE"
            )
        _shadow(config, policy_file, since, until, as_json)
        return
    if file is None:
        raise click.UsageError("give a capture FILE, or --policy FILE --since PERIOD")
    settings = _settings(config)
    summary = _run_on_store(settings, _replay(settings, file, offline))
    click.echo(json.dumps(summary, indent=2, sort_keys=True))
    sys.exit(1 if summary["deferred_waiting"] else 0)


def _load_policy_or_exit(path: str) -> Any:
    from osel.policy import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        click.echo(f"osel: the policy has {len(exc.problems)} problem(s):", err=True)
        click.echo(str(exc), err=True)
        sys.exit(1)


def _shadow(
    config: str | None, policy_file: str, since: str, until: str | None, as_json: bool
) -> None:
    from datetime import UTC, datetime

    from sqlalchemy.exc import DBAPIError

    from osel import shadow
    from osel.store.store import Store

    settings = _settings(config)
    policy = _load_policy_or_exit(policy_file)
    now = datetime.now(UTC)
    try:
        start = shadow.parse_since(since, now)
        end = shadow.parse_since(until, now) if until is not None else None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    async def go() -> list[dict[str, Any]]:
        store = Store(settings.store.url.get_secret_value())
        try:
            return await shadow.committed_changes(store, start, end)
        finally:
            await store.close()

    try:
        records = _run(go())
    except DBAPIError as exc:
        click.echo(
            f"osel: cannot read the change records from store.url: {exc.orig}; point -c at "
            "the daemon's configuration (osel db upgrade creates an empty store)",
            err=True,
        )
        sys.exit(1)
    report = shadow.Report(policy_file, shadow_time(start), shadow_time(end or now))
    shadow.compare(policy, records, report)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for line in shadow.table(report):
            click.echo(line)


def shadow_time(moment: Any) -> str:
    return str(moment.isoformat(timespec="seconds").replace("+00:00", "Z"))


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
    unfinished = await _scans_left_to_run(daemon)
    await daemon.neutron.close()
    await daemon.store.close()
    if unfinished:
        click.echo(
            f"osel replay: {unfinished} scan batch(es) not finished yet (queued, held, or "
            f"waiting for {daemon.scheduler.backend.name}); `osel run` on this store launches "
            "and follows them to their end (`osel scans list` shows them)",
            err=True,
        )
    return {
        "messages": sum(total.outcomes.values()),
        "outcomes": dict(total.outcomes),
        "changes": dict(total.changes),
        "records": total.records,
        "scan_batches": len(batches),
        "scan_batches_unfinished": unfinished,
        "deferred_waiting": waiting,
    }


async def _scans_left_to_run(daemon: Daemon) -> int:
    """Scan batches in the store that `osel run` still has to launch or follow; a backend
    that does not follow its scans (dry-run) leaves nothing to follow once launched."""
    from osel.scan_backend import ACTIVE, HELD, LAUNCHING, QUEUED
    from osel.store.queries import scans_by_state

    states = [QUEUED, HELD, LAUNCHING]
    if daemon.scheduler.backend.follows:
        states += ACTIVE
    by_state = await scans_by_state(daemon.store)
    return sum(by_state.get(state, 0) for state in states)


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
    if settings.policy.file is not None:
        _policy_summary(settings.policy.file)
    click.echo("configuration OK; effective settings (secrets masked):")
    click.echo(yaml.safe_dump(settings.redacted(), sort_keys=False, default_flow_style=False))


@main.group()
def policy() -> None:
    """The exposure policy: exceptions and rules (docs/policy.md)."""


@policy.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def policy_check(file: str) -> None:
    """Validate a policy file and explain each exception and rule in plain words.

    Flags exceptions that expired or expire within 14 days; exits 1 when the
    file is invalid.
    """
    from datetime import UTC, datetime

    from osel.policy import explain

    loaded = _load_policy_or_exit(file)
    for line in explain(loaded, datetime.now(UTC)):
        click.echo(line)
    click.echo("policy OK")


def _change_records(change: str) -> list[dict[str, Any]]:
    """JSON text, `-` (stdin) or a path: one record, a list, or JSON lines."""
    from pathlib import Path

    text = change
    if change == "-":
        text = sys.stdin.read()
    elif not change.lstrip().startswith(("{", "[")):
        try:
            text = Path(change).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(
                f"{change!r} is neither JSON nor a readable file ({exc.strerror}); give a "
                "change record as JSON, a file of them, or - for stdin",
                param_hint="--change",
            ) from None
    try:
        data = json.loads(text)
        items = data if isinstance(data, list) else [data]
    except ValueError:
        try:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise click.BadParameter(
                f"not JSON ({exc}); give a change record as `osel audit tail` prints it",
                param_hint="--change",
            ) from None
    records = [
        r for r in items if isinstance(r, dict) and r.get("record_type", "change") == "change"
    ]
    if not records:
        raise click.BadParameter(
            "no change record in it; give an object with affected_ip_address, project_id "
            "and opened (as `osel audit tail` prints)",
            param_hint="--change",
        )
    return records


@policy.command("test")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--change",
    "change",
    required=True,
    help="A change record as JSON, a file of them (JSON or JSON lines), or - for stdin",
)
@click.option("--at", "at", default=None, help="Judge expiries at this time (default: now)")
@click.option("--json", "as_json", is_flag=True, help="The result as JSON")
def policy_test(file: str, change: str, at: str | None, as_json: bool) -> None:
    """Show which exception or rule each permit of a change record hits, and the outcome."""
    from datetime import UTC, datetime

    from osel.policy import permits_of_record, subject_of_record
    from osel.shadow import parse_since

    loaded = _load_policy_or_exit(file)
    now = datetime.now(UTC)
    if at is not None:
        try:
            now = parse_since(at, now)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--at") from None
    results = []
    for record in _change_records(change):
        subject = subject_of_record(record)
        outcome = loaded.outcome(subject, permits_of_record(record), now)
        results.append((record, outcome))
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "record_id": r.get("record_id", ""),
                        "affected_ip_address": r.get("affected_ip_address", ""),
                        "policy_action": o.action,
                        "policy_rule": o.rule,
                        "priority": o.priority if o.scanned else None,
                        "policy_matches": o.matches_json(),
                    }
                    for r, o in results
                ],
                indent=2,
            )
        )
        return
    for record, outcome in results:
        click.echo(
            f"{record.get('change_type', 'change')} {record.get('affected_ip_address') or '-'} "
            f"(project {record.get('project_id') or '-'}):"
        )
        if not outcome.hits:
            click.echo("  opens and closes nothing: the policy has nothing to decide")
        for permit, hit in outcome.hits:
            low, high = permit.port_min, permit.port_max
            ports = f"{low}" if low == high else f"{low}-{high}"
            click.echo(
                f"  {permit.protocol or 'any'} {ports} from {permit.remote}: {hit.describe()}"
            )
        if outcome.scanned:
            click.echo(f"  => scan, {outcome.priority} priority")
        else:
            click.echo(f"  => record only, not scanned: {outcome.reason()}")


def _policy_summary(path: str) -> None:
    """check-config: the policy's size and its exceptions that expired or expire soon."""
    from datetime import UTC, datetime

    from osel.policy import expiry_warning, load_policy

    loaded = load_policy(path)  # load_settings validated it
    now = datetime.now(UTC)
    click.echo(f"policy {path}: {loaded.summary()} (osel policy check {path} explains it)")
    for exc in loaded.exceptions:
        warning = expiry_warning(exc, now)
        if warning:
            click.echo(f"{warning.replace('warning: ', f'warning: policy exception {exc.name} ')}")


def _with_store(settings: Settings, fn: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    from osel.store.store import Store

    async def go() -> T:
        store = Store(settings.store.url.get_secret_value())
        try:
            await store.migrate()
            return await fn(store)
        finally:
            await store.close()

    return _run_on_store(settings, go())


def _run_on_store(settings: Settings, coro: Coroutine[Any, Any, T]) -> T:
    """`_run`, with a store out of reach said in one line (exit status 1), not a traceback."""
    from osel.backoff import describe_error
    from osel.store.store import unavailable

    try:
        return _run(coro)
    except Exception as exc:
        if not unavailable(exc):
            raise
        click.echo(  # str() of the SecretUrl masks its passwords
            f"osel: the store does not answer (store.url={settings.store.url}): "
            f"{describe_error(exc)}; "
            "check that the database runs and is reachable from here, and store.url",
            err=True,
        )
        sys.exit(1)


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


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@audit.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per sink")
def audit_status(config: str | None, as_json: bool) -> None:
    """Per sink: records not yet delivered, the oldest one's age, its state and last error.

    The state and error are those the daemon last recorded (ok, retrying,
    stopped); exits 1 when a sink is stopped.
    """
    from osel.outbox import sink_status

    settings = _settings(config)
    ids = [s.sink_id for s in settings.audit.sinks]
    rows = _with_store(settings, lambda s: sink_status(s, ids))
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, sort_keys=True))
    elif not rows:
        click.echo("no audit sinks configured (audit.sinks is empty)")
    else:
        width = max(len(r["sink"]) for r in rows)
        click.echo(f"{'sink':<{width}}  {'behind':>8}  {'oldest':>8}  state")
        for r in rows:
            since = f" since {r['since']}" if r["since"] and r["state"] != "ok" else ""
            error = f": {r['error']}" if r["error"] else ""
            click.echo(
                f"{r['sink']:<{width}}  {r['behind']:>8}  {_age(r['oldest_seconds']):>8}  "
                f"{r['state']}{since}{error}"
            )
    sys.exit(1 if any(r["state"] == "stopped" for r in rows) else 0)


@main.group(invoke_without_command=True)
@click.pass_context
def scans(ctx: click.Context) -> None:
    """Scan batches and their state (default: list)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(scans_list)


def _when(stamp: Any) -> str:
    return stamp.isoformat() if stamp is not None else ""


def _batch_view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "title": row.title,
        "state": row.state,
        "qualys_state": row.qualys_state or "",
        "backend": row.backend,
        "reference": row.reference or "",
        "qualys_id": row.qualys_id or "",
        "created_at": _when(row.created_at),
        "updated_at": _when(row.updated_at),
        "launched_at": _when(row.launched_at),
        "finished_at": _when(row.finished_at),
        "priority": row.priority,
        "addresses": json.loads(row.addresses),
        "address_errors": json.loads(row.address_errors) if row.address_errors else {},
        "error": row.error or "",
        "launch_attempts": row.launch_attempts,
        "launch_in_doubt": bool(row.in_doubt),
        "summary": json.loads(row.summary) if row.summary else None,
    }


def _targets(addresses: list[str], shown: int = 4) -> str:
    more = f", +{len(addresses) - shown} more" if len(addresses) > shown else ""
    return ", ".join(addresses[:shown]) + more


def _results_line(summary: dict[str, Any] | None) -> str:
    if not summary:
        return ""
    links = summary.get("change_links") or []
    found = sorted({f"{x['address']} {p}" for x in links for p in x.get("found_open", [])})
    vulns = " ".join(f"sev{k}:{v}" for k, v in (summary.get("vulnerabilities") or {}).items())
    parts = [f"{len(summary.get('hosts') or {})} host(s) reported"]
    if vulns:
        parts.append(f"vulnerabilities {vulns}")
    if found:
        parts.append("opened and found open: " + ", ".join(found[:6]))
    return "; ".join(parts)


@scans.command("list")
@config_option
@click.option("-n", "count", default=50, show_default=True)
def scans_list(config: str | None = None, count: int = 50) -> None:
    """List scan batches, newest first: state, reference, targets, errors, results."""
    from osel.qualys.budget import Budget
    from osel.scan_backend import DryRunBackend
    from osel.scheduler import Scheduler

    settings = _settings(config)

    async def fetch(store: Any) -> tuple[list[Any], list[dict[str, Any]]]:
        sched = Scheduler(store, DryRunBackend(), window_seconds=0, max_targets=1, instance="")
        return await sched.batches(count), await Budget(store, min_remaining=0).snapshot()

    rows, budget = _with_store(settings, fetch)
    if not rows:
        click.echo("no scan batches yet")
    for row in rows:
        v = _batch_view(row)
        state = v["state"] + (f" ({v['qualys_state']})" if v["qualys_state"] else "")
        click.echo(
            f"{v['created_at']}  {v['id']}  {state:<9} {v['backend']:<8} "
            f"{v['reference'] or '-':<24} {len(v['addresses'])} address(es): "
            f"{_targets(v['addresses'])}"
        )
        results = _results_line(v["summary"])
        if results:
            click.echo(f"    results: {results}")
        for address, why in sorted(v["address_errors"].items()):
            click.echo(f"    not scanned: {address}: {why}")
        if v["error"]:
            click.echo(f"    error: {v['error']}")
    for api in budget:
        wait = f", waiting until {api['wait_until']}" if api["wait_until"] else ""
        click.echo(
            f"Qualys budget {api['api']}: {api['remaining']} of {api['rate_limit']} calls left "
            f"per {api['window_seconds']}s (seen {api['observed_at']}){wait}"
        )


@scans.command("show")
@click.argument("ref")
@config_option
def scans_show(ref: str, config: str | None) -> None:
    """Show one batch by its id or its Qualys reference, with its change records."""
    from osel.scan_backend import DryRunBackend
    from osel.scheduler import Scheduler

    settings = _settings(config)

    async def fetch(store: Any) -> tuple[Any, list[Any]] | None:
        sched = Scheduler(store, DryRunBackend(), window_seconds=0, max_targets=1, instance="")
        return await sched.find_batch(ref)

    found = _with_store(settings, fetch)
    if found is None:
        click.echo(f"no scan batch with id or reference {ref!r}", err=True)
        sys.exit(1)
    row, changes = found
    view = _batch_view(row)
    view["changes"] = [
        {
            "record_id": c.record_uuid,
            "address": c.address,
            "change_type": c.change_type or "",
            "scan_state": c.scan_state or "",
            "qualys_scan_id": c.qualys_scan_id or "",
            "scan_result": json.loads(c.scan_result) if c.scan_result else None,
        }
        for c in changes
    ]
    click.echo(json.dumps(view, indent=2))


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
        retried = f"  (retried {row.retried_at.isoformat()})" if row.retried_at else ""
        click.echo(
            f"{row.id:>6}  {row.received_at.isoformat()}  {row.source:<7} "
            f"{row.event_type or '-':<36} {row.reason}{retried}"
        )


@quarantine.command("retry")
@click.argument("row_id", metavar="ID", type=int)
@config_option
def quarantine_retry(row_id: int, config: str | None) -> None:
    """Send one quarantined message through osel again (after a fix).

    The message goes back into osel's own queue, so the running daemon (or the
    next one to start) processes it like any other; if it fails again it is
    quarantined again, as a new entry.
    """
    from osel.amqp import build_ssl_context, publish_once
    from osel.transport_url import parse_transport_url

    settings = _settings(config)
    row = _with_store(settings, lambda s: s.quarantined(row_id))
    if row is None:
        click.echo(f"no quarantined message with id {row_id} (see osel quarantine list)", err=True)
        sys.exit(1)
    a = settings.amqp
    endpoints = parse_transport_url(a.transport_url.get_secret_value())
    context = (
        build_ssl_context(a.ssl_ca_file, a.ssl_cert_file, a.ssl_key_file, a.ssl_verify)
        if any(e.ssl for e in endpoints)
        else None
    )
    broker = _run(
        publish_once(
            endpoints,
            "",
            a.queue,
            bytes(row.body),
            {"x-osel-retry-of": str(row_id)},
            connect_timeout=a.connect_timeout,
            ssl_context=context,
        )
    )
    _with_store(settings, lambda s: s.mark_retried(row_id))
    click.echo(f"quarantined message {row_id} sent to queue {a.queue} via {broker}")


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


@db.command("prune")
@config_option
@click.option(
    "--days",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Delete what is older than this (default: store.retention_days)",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing")
def db_prune(config: str | None, days: float | None, dry_run: bool) -> None:
    """Delete what is past the retention now, round after round until nothing is left
    (osel run does one round every 10 minutes); safe while osel runs."""
    import time

    from osel.store import retention

    settings = _settings(config)
    days = days or settings.store.retention_days
    if not days:
        click.echo(
            "osel db prune: store.retention_days is 0 (keep everything) and --days is not "
            "given: nothing to do. Set store.retention_days, or pass --days N",
            err=True,
        )
        sys.exit(2)

    def summary(verb: str, rows: retention.Pruned) -> str:
        if not rows.total:
            return f"nothing older than {days:g} day(s) to delete"
        return f"{verb} what is older than {days:g} day(s): {rows}"

    async def go(store: Any) -> None:
        if dry_run:
            counted = await retention.count(store, await retention.old_for(store, settings, days))
            click.echo(summary("would delete", counted))
            return
        total, rounds, said = retention.Pruned(), 0, False
        while True:
            started = time.monotonic()
            pruned = await retention.prune_for(store, settings, days)
            if pruned.busy and not pruned.total:
                if not said:
                    click.echo("another osel instance is deleting old rows; waiting for it")
                said = True
                await asyncio.sleep(5)
                continue
            if not pruned.total:
                break
            rounds += 1
            for table, count in pruned.rows.items():
                total.add(table, count)
            click.echo(f"round {rounds}: deleted {pruned} ({time.monotonic() - started:.1f} s)")
        click.echo(summary("deleted", total))

    _with_store(settings, go)


@main.group()
def aodh() -> None:
    """Aodh event alarms that feed osel's webhook (docs/aodh.md)."""


@aodh.command("setup")
@config_option
@click.option(
    "--cloud",
    default=None,
    help="clouds.yaml entry to act as; needs the admin role "
    "(default: openstack.cloud or openstack.auth)",
)
@click.option(
    "--project",
    "projects",
    multiple=True,
    help="Only this project id; repeat for several (default: every enabled project)",
)
@click.option("--dry-run", is_flag=True, help="Print what would be done, change nothing")
@click.option("--prune", is_flag=True, help="Delete alarms with the prefix that are not wanted")
def aodh_setup(
    config: str | None, cloud: str | None, projects: tuple[str, ...], dry_run: bool, prune: bool
) -> None:
    """Create or update one set of event alarms per project, pointing at osel."""
    from osel import aodh_setup as setup

    settings = _settings(config)
    errors, warnings = setup.webhook_problems(settings)
    for line in warnings:
        click.echo(f"warning: {line}", err=True)
    if errors:
        for line in errors:
            click.echo(f"osel: {line}", err=True)
        sys.exit(2)
    try:
        api = setup.SdkAodhAdmin(setup.connect(settings, cloud))
        chosen = sorted(set(projects)) or api.projects()
        steps = setup.plan(
            api.event_alarms(),
            setup.wanted(settings, chosen),
            prefix=settings.http.aodh_alarm_prefix,
            prune=prune,
        )
        click.echo(f"webhook: {setup.masked_url(settings)}; {len(chosen)} project(s)")
        for step in steps:
            click.echo(("would " if dry_run and step.verb != "unchanged" else "") + step.describe())
        if not dry_run:
            setup.apply(api, steps)
    except setup.AodhSetupError as exc:
        click.echo(f"osel: {exc}", err=True)
        sys.exit(1)
    counts = {v: sum(1 for s in steps if s.verb == v) for v in dict.fromkeys(s.verb for s in steps)}
    click.echo(
        ("dry run: " if dry_run else "done: ")
        + (", ".join(f"{n} {v}" for v, n in counts.items()) or "nothing to do")
    )


@aodh.command("url")
@click.argument("project_id")
@config_option
def aodh_url(project_id: str, config: str | None) -> None:
    """Print the webhook URL of one project's alarms (it carries that project's token)."""
    from osel.aodh import webhook_url

    settings = _settings(config)
    http = settings.http
    if http.public_url is None:
        click.echo("osel: http.public_url is not set; set it to the URL Aodh reaches osel at")
        sys.exit(2)
    secret = http.aodh_token.get_secret_value() if http.aodh_token is not None else None
    click.echo(webhook_url(http.public_url, secret, project_id))
