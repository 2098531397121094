"""`osel run`: wire the parts together and keep them running.

One consume loop (batch -> pipeline -> one commit -> ack), a scheduler loop,
an outbox loop per sink, a loop that retries changes deferred while Neutron
was away, and the periodic re-sync. The pipeline lock keeps them from
interleaving inside the inventory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from osel import memory
from osel.backoff import BackoffPolicy, OutageLog, Stopped, describe_error, retry_forever
from osel.config import Settings
from osel.decide import Rules, decide, now_iso
from osel.decode import EventFilter
from osel.faults import crash_point
from osel.handlers import HANDLERS
from osel.health import Bounded, Health
from osel.http.app import Context, create_app
from osel.http.metrics import Metrics
from osel.http.server import HttpServer
from osel.inventory import Inventory
from osel.neutron import NeutronAPI, NeutronUnavailable
from osel.outbox import Outbox
from osel.pipeline import HandlingFailed, Item, Pipeline, Stats
from osel.resolver import Resolver
from osel.resync import load_snapshot, reconcile
from osel.scan_backend import DryRunBackend, ScanBackend
from osel.scheduler import Scheduler
from osel.sinks import Sink
from osel.sinks.file import FileSink
from osel.store import queries, retention
from osel.store.store import Batch, Store, unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
PROBE_ID = "00000000-0000-0000-0000-000000000000"  # asked for to see that Neutron answers


# what a batch, or the start, waits for (watch_waits)
STORE = "the store"
STORE_OR_NEUTRON = "the store or Neutron"
LOCK = "the inventory lock (another instance holds it, or the store does not answer)"


@dataclass(slots=True, eq=False)
class Waiting:
    doing: str  # "a batch of 1000 message(s)", "start-up"
    what: str
    since: float  # time.monotonic()


class Source(Protocol):
    """What the consume loop needs from a message source (`osel.amqp.AmqpSource`)."""

    async def start(self) -> None: ...

    async def get_batch(self, max_messages: int, max_wait: float) -> list[Any]: ...

    async def ack(self, deliveries: Any) -> None: ...

    async def nack(self, delivery: Any, requeue: bool = True) -> None: ...

    async def close(self) -> None: ...


def decision_rules(settings: Settings) -> Rules:
    """The decision's knobs; raises `osel.policy.PolicyError` for a bad policy.file."""
    from osel.policy import load_policy

    return Rules(
        out_of_scope=settings.scope.classify,
        trigger=settings.scope.trigger,
        scan_on_rule_delete=settings.scan.scan_on_rule_delete,
        policy=load_policy(settings.policy.file) if settings.policy.file else None,
    )


def build_sinks(settings: Settings) -> list[Sink]:
    from osel.sinks.hec import HecSink
    from osel.sinks.syslog import SyslogSink

    instance = settings.service.instance
    sinks: list[Sink] = []
    for sink in settings.audit.sinks:
        if sink.type == "file":
            sinks.append(FileSink(sink.path, fsync=sink.fsync, sink_id=sink.sink_id))
        elif sink.type == "syslog":
            sinks.append(SyslogSink.from_settings(sink, hostname=instance))
        else:
            sinks.append(HecSink.from_settings(sink, instance=instance))
    return sinks


def build_backend(
    settings: Settings, store: Store, backoff: BackoffPolicy | None = None
) -> ScanBackend:
    if settings.scan.backend == "dry-run":
        return DryRunBackend()
    from osel.qualys.backend import QualysBackend

    return QualysBackend(settings.qualys, store, backoff=backoff)


def build_neutron(settings: Settings) -> NeutronAPI:
    from osel.neutron_sdk import SdkNeutron

    os_ = settings.openstack
    auth = None
    if os_.auth is not None:
        auth = {
            k: (v.get_secret_value() if hasattr(v, "get_secret_value") else v)
            for k, v in os_.auth.model_dump(exclude_none=True).items()
            if not k.endswith("_file")
        }
    return SdkNeutron(
        cloud=os_.cloud,
        auth=auth,
        region_name=os_.region_name,
        interface=os_.interface,
        verify=os_.verify,
        cacert=os_.cacert,
        timeout=os_.timeout_seconds,
        max_concurrency=os_.max_concurrency,
    )


def build_source(
    settings: Settings,
    backoff: BackoffPolicy,
    recognise: Callable[[bytes], str | None] | None = None,
) -> Source:
    from osel.amqp import AmqpSource
    from osel.transport_url import parse_transport_url

    a = settings.amqp
    return AmqpSource(
        parse_transport_url(a.transport_url.get_secret_value()),
        exchanges=list(a.exchanges),
        topics=list(a.topics),
        queue=a.queue,
        prefetch=a.prefetch,
        queue_type=a.queue_type,
        exchange_durable=a.exchange_durable,
        heartbeat=a.heartbeat,
        connect_timeout=a.connect_timeout,
        ssl_ca_file=a.ssl_ca_file,
        ssl_cert_file=a.ssl_cert_file,
        ssl_key_file=a.ssl_key_file,
        ssl_verify=a.ssl_verify,
        backoff=backoff,
        recognise=recognise,
    )


class Daemon:
    stuck_seconds = 30.0  # a wait of the batch in hand this long is logged (watch_waits)

    def __init__(
        self,
        settings: Settings,
        *,
        neutron: NeutronAPI | None = None,
        source: Source | None = None,
        backoff: BackoffPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.store = Store(settings.store.url.get_secret_value())
        self.inventory = Inventory()
        self.neutron = neutron if neutron is not None else build_neutron(settings)
        self.source = source
        self.backoff = backoff or BackoffPolicy(
            initial=min(
                settings.service.backoff_initial_seconds, settings.service.backoff_cap_seconds
            ),
            cap=settings.service.backoff_cap_seconds,
        )
        self.resolver = Resolver(self.inventory, self.neutron)
        self.instance = settings.service.instance
        self.pipeline = Pipeline(
            self.store,
            self.inventory,
            self.resolver,
            decision_rules(settings),
            instance=self.instance,
            max_message_bytes=settings.service.max_message_bytes,
            max_attempts=settings.service.max_attempts,
        )
        self.scheduler = Scheduler(
            self.store,
            build_backend(settings, self.store, self.backoff),
            window_seconds=settings.scan.window_seconds,
            max_targets=settings.scan.max_targets,
            instance=self.instance,
            cooldown_minutes=settings.scan.cooldown_minutes,
            missing_scan_hours=settings.qualys.missing_scan_hours,
            backoff=self.backoff,
        )
        self.outbox = Outbox(
            self.store,
            build_sinks(settings),
            backoff=self.backoff,
            instance=self.instance,
            lease_seconds=settings.service.lease_seconds,
        )
        self.lock = asyncio.Lock()
        self.scan_wake = asyncio.Event()  # set by a commit that queued scan targets
        self.health = Health()
        self.metrics = Metrics(self.health)
        self.caught_up = False
        self.started = False  # prepared: the store answered and the inventory is loaded
        self.ready_probe = Bounded(5.0)  # /readyz's write to the store, 5 s at most
        self.waiting: Waiting | None = None  # what the batch in hand waits for (watch_waits)
        # the in-memory inventory was cleared to be rebuilt and the store did not answer:
        # it is rebuilt before the next batch is handled (see _reload_inventory)
        self.inventory_stale = False
        self.neutron_outage = OutageLog("neutron", log, cap=self.backoff.cap)
        self.store_outage = OutageLog("store", log, cap=self.backoff.cap)

    # --- what this instance does (service.role) ---------------------------------

    @property
    def intake(self) -> bool:
        """It judges changes: notifications, the Aodh webhook, deferred retries."""
        return self.settings.service.role != "worker"

    @property
    def worker(self) -> bool:
        """It forms, launches and follows scan batches and delivers the audit trail."""
        return self.settings.service.role != "intake"

    @property
    def consumes(self) -> bool:
        return self.intake and self.settings.amqp.enabled

    def loops(self) -> list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]]:
        """The background loops this instance runs (the audit sinks aside)."""
        loops: list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = []
        if self.consumes:
            loops.append(self.consume)
        if self.intake:
            loops += [self.retry_deferred, self.resync]
        if self.worker:
            loops += [self.schedule, self.follow_scans]
        return [*loops, self.probe_neutron, self.policy_expiry, self.housekeeping]

    # --- start-up ----------------------------------------------------------

    async def prepare(self, *, initial_sync: bool = True) -> None:
        """Migrate the store, load the inventory, sync from Neutron on a first start
        (a worker judges no change: the schema is all it needs)."""
        async with self._watched("start-up", STORE):
            await self.store.migrate()
            if not self.intake:
                return
            self._wait("start-up", LOCK if self.store.dialect != "sqlite" else STORE)
            async with self.store.exclusive():
                self._wait("start-up", STORE_OR_NEUTRON)
                await self._prepare_inventory(initial_sync)
        memory.freeze_long_lived()

    async def _prepare_when_the_store_answers(self, stop: asyncio.Event) -> None:
        """`prepare`, waiting with backoff while the store is out of reach (logged as an
        outage, in bounded lines) instead of exiting: a supervisor that restarts osel
        every few seconds would otherwise print a traceback each time."""

        async def attempt() -> None:
            self.inventory.clear()  # a failed attempt may have loaded part of it
            try:
                await self.prepare()
            except Exception as exc:
                if unavailable(exc):
                    self.health.report("store", False, describe_error(exc))
                raise
            self.health.report("store", True)

        await retry_forever(
            attempt,
            policy=self.backoff,
            what="waiting for the store",
            outage=self.store_outage,
            stop_event=stop,
            retry_if=unavailable,
        )

    async def _prepare_inventory(self, initial_sync: bool) -> None:
        held = await self.store.load_inventory(self.inventory)
        if await self.store.deferred_count():
            self.pipeline.deferring = True
        if held == 0 and initial_sync:
            try:
                snap = await self.neutron.snapshot()
            except NeutronUnavailable as exc:
                log.warning(
                    "first start and Neutron does not answer (%s): the inventory fills "
                    "as changes arrive",
                    exc,
                )
                return
            load_snapshot(snap, self.inventory)
            await self.store.replace_inventory(self.inventory)
            await self.store.set_meta("resynced_at", now_iso())
            log.info(
                "inventory loaded from Neutron: %d groups, %d rules, %d ports, %d floating IPs",
                len(snap.security_groups),
                len(snap.rules),
                len(snap.ports),
                len(snap.floating_ips),
            )
        else:
            log.info("inventory loaded from the store: %d resources", held)

    # --- processing ----------------------------------------------------------

    async def process(self, items: list[Item]) -> Stats:
        """Run items through the pipeline and commit them: the unit of work."""
        started = time.monotonic()
        handled = might_change_inventory(items, self.pipeline.filter)
        guard = self.store.exclusive() if handled else contextlib.nullcontext()
        doing = f"a batch of {len(items)} message(s)"
        first = LOCK if handled and self.store.dialect != "sqlite" else STORE
        # the holder of self.lock alone says what it waits for
        async with self.lock, self._watched(doing, first), guard:
            batch = Batch()
            try:
                self._wait(doing, STORE)
                if handled:
                    await self._catch_up()
                self._wait(doing, STORE_OR_NEUTRON)
                stats = await self.pipeline.process(items, batch)
                batch.dirty = self.inventory.take_dirty()
                crash_point("before_commit")
                self._wait(doing, STORE)
                await self.store.commit(batch)
            except BaseException as exc:
                if not isinstance(exc, asyncio.CancelledError):
                    self.health.report("store", False, describe_error(exc))
                await self._reload_inventory_or_later()
                raise
        self.health.report("store", True)
        if batch.quarantined:
            await self._dead_letter(batch.quarantined)
        self.metrics.observe(stats, time.monotonic() - started)
        self.metrics.revision_gaps.set(self.resolver.revision_gaps)
        self.metrics.neutron_misses.set(self.resolver.misses)
        if stats.outcomes["deferred"] or batch.undeferred:
            self.metrics.deferred.set(await self.store.deferred_count())
        self.outbox.wake.set()
        if stats.targets:
            self.scan_wake.set()
        return stats

    async def _dead_letter(self, quarantined: list[dict[str, Any]]) -> None:
        """Copy quarantined messages to amqp.dead_letter_exchange, when there is one.

        The store's quarantine table is the record; this copy is for tools that
        watch the broker, and is given up (with one warning) when it cannot be sent.
        """
        dlx = self.settings.amqp.dead_letter_exchange
        publish = getattr(self.source, "publish", None)
        if not dlx or publish is None:
            return
        for q in quarantined:
            headers = {"x-osel-reason": q["reason"][:1000], "x-osel-source": q["source"]}
            try:
                await publish(dlx, self.settings.amqp.queue, q["body"], headers)
            except Exception as exc:
                log.warning(
                    "could not copy a quarantined message to the dead-letter exchange "
                    "%r (amqp.dead_letter_exchange): %s; it stays in the quarantine "
                    "table",
                    dlx,
                    describe_error(exc),
                )
                return

    async def _catch_up(self) -> None:
        """Under the inventory lock: take in what other instances committed, and queue up
        behind changes one of them deferred while Neutron was away."""
        if self.inventory_stale:
            await self._reload_inventory()
        generation = self.inventory.generation
        await self.store.refresh_inventory(self.inventory)
        if self.inventory.generation != generation:  # reloaded as a whole: a new long-lived set
            memory.freeze_long_lived()
        if self.store.dialect != "sqlite" and not self.pipeline.deferring:
            self.pipeline.deferring = await self.store.deferred_count() > 0

    def _wait(self, doing: str, what: str) -> None:
        self.waiting = Waiting(doing, what, time.monotonic())

    @contextlib.asynccontextmanager
    async def _watched(self, doing: str, what: str) -> AsyncIterator[None]:
        """What `doing` waits for, watched by watch_waits until it is done (`_wait`
        says what it waits for next)."""
        self._wait(doing, what)
        try:
            yield
        finally:
            self.waiting = None

    async def watch_waits(self, stop: asyncio.Event) -> None:
        """Say so when the batch in hand (or the start) waits long on the store or the
        inventory lock: a PostgreSQL that hangs answers nothing and closes nothing, and
        an instance that is frozen (not dead) keeps the lock, so no error ever comes."""
        warned: Waiting | None = None  # the wait that was logged
        said = 0.0
        while not stop.is_set():
            await _sleep(stop, 1.0)
            waiting, now = self.waiting, time.monotonic()
            if warned is not None and waiting is not warned:
                log.info(
                    "%s waited about %.0f s for %s, and goes on",
                    warned.doing,
                    now - warned.since,
                    warned.what,
                )
                warned = None
            if waiting is None or now - waiting.since < self.stuck_seconds:
                continue
            if warned is None:
                warned, said = waiting, now
                log.warning(
                    "%s has waited %.0f s for %s; it goes on waiting, and nothing is "
                    "acknowledged or lost meanwhile",
                    waiting.doing,
                    now - waiting.since,
                    waiting.what,
                )
                if waiting.what != LOCK:
                    self.health.report("store", False, f"no answer for {now - waiting.since:.0f} s")
            elif now - said >= self.backoff.cap:
                said = now
                log.warning(
                    "%s still waiting for %s after %.0f s",
                    waiting.doing,
                    waiting.what,
                    now - waiting.since,
                )

    async def housekeeping(self, stop: asyncio.Event, every: float = 60.0) -> None:
        """Every minute, give freed memory back to the system; every ten, trim the
        inventory change log and delete what is past `store.retention_days`."""
        rounds = 0
        while not stop.is_set():
            memory.trim()
            if rounds % 10 == 0:
                try:
                    await self.store.prune_inventory_log()
                except Exception as exc:
                    log.debug("could not trim the inventory log: %s", exc)
                await self.forget_old()
            rounds += 1
            await _sleep(stop, every)

    async def forget_old(self) -> None:
        """Delete from the store what is older than `store.retention_days` (see
        `retention`); nothing when it is 0."""
        days = self.settings.store.retention_days
        if not days:
            return
        try:
            pruned = await retention.prune_for(self.store, self.settings, days)
        except Exception as exc:
            if unavailable(exc):
                log.debug("could not delete old rows: %s", exc)
            else:
                log.warning(
                    "could not delete what is older than store.retention_days (%g): %s; "
                    "it is tried again in 10 minutes",
                    days,
                    exc,
                )
            return
        for table, count in pruned.rows.items():
            self.metrics.pruned.labels(table).inc(count)
        if pruned.total:
            log.info("deleted what is older than store.retention_days (%g): %s", days, pruned)

    async def _reload_inventory(self) -> None:
        """After a failed commit the in-memory inventory is ahead of the store: rebuild it."""
        self.inventory.clear()
        self.inventory_stale = True
        await self.store.load_inventory(self.inventory)
        self.inventory_stale = False
        memory.freeze_long_lived()

    async def _reload_inventory_or_later(self) -> None:
        """`_reload_inventory`, or, when the store does not answer (the usual reason the
        commit failed), leave it marked stale: `_catch_up` rebuilds it before the next
        batch is handled, instead of handling changes against an empty inventory."""
        with contextlib.suppress(Exception):
            await self._reload_inventory()

    async def consume(self, stop: asyncio.Event) -> None:
        assert self.source is not None
        size = self.settings.service.batch_size
        full = min(size, self.settings.amqp.prefetch)  # a batch this long was not waited for
        wait = self.settings.service.batch_wait_ms / 1000
        failures = 0
        while not stop.is_set():
            deliveries = await _until_stopped(self.source.get_batch(size, wait), stop)
            if deliveries is None:
                return  # stopping: take nothing more; what is unacknowledged comes back
            self.health.report("amqp", bool(getattr(self.source, "connected", True)))
            if not deliveries:
                self.caught_up = True
                continue
            self.caught_up = len(deliveries) < full
            items = [Item(d.body, "amqp", d.broker, ignored=d.ignored) for d in deliveries]
            try:
                await self.process(items)
            except HandlingFailed as exc:
                failures += 1
                log.warning(
                    "%s; the batch of %d message(s) returns to the queue, and the "
                    "message is quarantined after service.max_attempts tries",
                    exc,
                    len(deliveries),
                )
                for d in deliveries:
                    await self.source.nack(d, requeue=True)
                await _sleep(stop, self.backoff.delay(failures))
                continue
            except Exception as exc:
                # the store is failing: messages stay unacknowledged and come back; the
                # outage is logged once, then summarised once per backoff cap
                failures += 1
                self.store_outage.failed(exc)
                for d in deliveries:
                    await self.source.nack(d, requeue=True)
                await _sleep(stop, self.backoff.delay(failures))
                continue
            failures = 0
            self.store_outage.recovered()
            crash_point("before_ack")
            await self.source.ack(deliveries)

    async def retry_deferred(self, stop: asyncio.Event) -> None:
        attempt = 0
        outage = OutageLog("deferred-change retry", log, cap=self.backoff.cap)
        while not stop.is_set():
            if not self.pipeline.deferring:
                await _sleep(stop, 1.0)
                continue
            try:
                reason = await self._retry_deferred_once()
            except Exception as exc:  # the store is away, or a handler fails: try again
                await _sleep(stop, self._failed(outage, exc))
                continue
            outage.recovered()
            if reason is not None:
                attempt += 1
                self.neutron_outage.failed(NeutronUnavailable(reason))
                await _sleep(stop, self.backoff.delay(attempt))
            else:
                attempt = 0

    async def _retry_deferred_once(self) -> str | None:
        """Process the oldest deferred change; why it is still deferred, if it is."""
        rows = await self.store.deferred_head(1)
        if not rows:
            async with self.lock:
                if not await self.store.deferred_count():
                    self.pipeline.deferring = False
                    self.neutron_outage.recovered()
            return None
        row = rows[0]
        stats = await self.process([Item(row.body, row.source, row.broker, row.id)])
        return str(row.reason) if stats.outcomes["deferred"] else None

    def _failed(self, outage: OutageLog, exc: Exception) -> float:
        """One failed round of a background loop, logged in bounded lines (`OutageLog`:
        never a line per round, which at window 0 would be several a second while the
        store is away); the traceback only when the store is not simply out of reach.
        Returns how long to wait before the next round."""
        outage.failed(exc, trace=not unavailable(exc))
        return self.backoff.delay(outage.attempts)

    async def schedule(self, stop: asyncio.Event) -> None:
        """Form and launch due scan batches every window/4 (0.2 s to 5 s); with
        scan.window_seconds 0, also as soon as a commit has queued scan targets."""
        await self.scheduler.resume()
        period = max(0.2, min(5.0, self.settings.scan.window_seconds / 4))
        at_once = self.settings.scan.window_seconds == 0
        outage = OutageLog("scan scheduler", log, cap=self.backoff.cap)
        while not stop.is_set():
            self.scan_wake.clear()
            try:
                await self.scheduler.tick()
            except Exception as exc:
                await _sleep(stop, max(period, self._failed(outage, exc)))
                continue
            outage.recovered()
            await _wait_any([stop, self.scan_wake] if at_once else [stop], period)

    async def follow_scans(self, stop: asyncio.Event) -> None:
        """Poll launched scans to their end, every qualys.poll_seconds (qualys.follow)."""
        if not self.scheduler.backend.follows:
            return
        failing = OutageLog("scan follower", log, cap=self.backoff.cap)
        while not stop.is_set():
            delay = self.settings.qualys.poll_seconds
            try:
                await self.scheduler.follow()
            except Exception as exc:
                delay = max(delay, self._failed(failing, exc))
            else:
                failing.recovered()
            outage = self.scheduler.outage
            if outage.is_down:
                delay = max(delay, self.backoff.delay(outage.attempts))
            await _sleep(stop, delay)

    async def probe_neutron(self, stop: asyncio.Event, every: float = 60.0) -> None:
        """Ask Neutron something cheap now and then, so readiness says whether it answers."""
        while not stop.is_set():
            try:
                await self.neutron.get_security_group(PROBE_ID)
            except NeutronUnavailable as exc:
                self.health.report("neutron", False, str(exc))
            else:
                self.health.report("neutron", True)
            await _sleep(stop, every)

    async def ready(self) -> dict[str, bool]:
        """The checks of /readyz."""
        checks = {"started": self.started, "neutron": self.health.is_up("neutron", within=300)}
        if self.consumes:
            checks["amqp"] = bool(getattr(self.source, "connected", False))
        if not self.started:  # waiting for the store, or migrating it: not probed meanwhile
            checks["store"] = self.health.is_up("store")
            return checks
        try:
            await self.ready_probe(lambda: self.store.set_meta("ready_probe", now_iso()))
            checks["store"] = True
            self.health.report("store", True)
        except Exception as exc:
            self.health.report("store", False, describe_error(exc))
            checks["store"] = False
        return checks

    async def refresh_metrics(self) -> None:
        """The gauges read from the store (and the Qualys client) when /metrics is asked."""
        for state, number in (await queries.scans_by_state(self.store)).items():
            self.metrics.scans.labels(state).set(number)
        backend = self.scheduler.backend
        client = getattr(backend, "client", None)
        if client is not None:
            self.metrics.qualys_calls = dict(client.calls)
            for api in await client.budget.snapshot():
                if api["remaining"] is not None:
                    self.metrics.qualys_remaining.labels(api["api"]).set(api["remaining"])

    async def lag(self) -> dict[str, dict[str, float | int | None]]:
        return await queries.sink_lag(self.store, [s.sink_id for s in self.outbox.sinks])

    def http_server(self) -> HttpServer:
        from osel.aodh_route import aodh_routes

        ctx = Context(
            self.store,
            self.health,
            self.metrics,
            self.ready,
            self.lag,
            instance=self.instance,
            extra_routes=(
                [aodh_routes(self.settings, self.neutron, self.process)] if self.intake else []
            ),
            refresh=self.refresh_metrics,
            started=lambda: self.started,
        )
        http = self.settings.http
        return HttpServer(create_app(ctx), http.host, http.port)

    async def resync(self, stop: asyncio.Event) -> None:
        minutes = self.settings.openstack.resync_minutes
        if minutes <= 0:
            return
        while not stop.is_set():
            await _sleep(stop, minutes * 60)
            if stop.is_set():
                return
            if not self.caught_up or self.pipeline.deferring:
                log.info("re-sync postponed: notifications are still waiting to be processed")
                continue
            try:
                await self.resync_once()
            except Exception as exc:
                log.warning(
                    "re-sync failed; the next one is in %g minutes (openstack.resync_minutes): %s",
                    minutes,
                    describe_error(exc),
                    exc_info=None if unavailable(exc) else exc,
                )

    async def resync_once(self) -> int:
        try:
            snap = await self.neutron.snapshot()
        except NeutronUnavailable as exc:
            self.health.report("neutron", False, str(exc))
            log.warning("re-sync skipped: %s", exc)
            return 0
        self.health.report("neutron", True)
        async with self.lock, self.store.exclusive():
            await self._catch_up()
            batch = Batch()
            changes = await reconcile(snap, self.inventory, self.resolver, now=now_iso())
            for change in changes:
                batch.decisions.append(
                    decide(change, self.pipeline.rules, instance=self.instance, broker="")
                )
            batch.dirty = self.inventory.take_dirty()
            try:
                await self.store.commit(batch)
            except BaseException:
                await self._reload_inventory_or_later()
                raise
        self.resolver.revision_gaps += len(changes)
        await self.store.set_meta("resynced_at", now_iso())
        self.outbox.wake.set()
        return len(changes)

    # --- lifetime ------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        inner = asyncio.Event()
        # the HTTP endpoint answers from the start: /healthz, /readyz and /metrics while
        # osel waits for the store; the rest 503 until the inventory is loaded
        http = (
            asyncio.create_task(self.http_server().run(inner), name="http")
            if self.settings.http.enabled
            else None
        )
        watch = asyncio.create_task(self.watch_waits(inner), name="watch_waits")
        preparing = asyncio.create_task(self._prepare_when_the_store_answers(stop))
        watched = {preparing, http} if http is not None else {preparing}
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        if http is not None and http.done() and http.exception() is not None:
            preparing.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await preparing
            log.error("%s stopped: %r; shutting down", http.get_name(), http.exception())
            inner.set()
            await watch
            return 1
        try:
            await preparing
        except BaseException as exc:
            inner.set()
            await asyncio.wait({watch, http} if http is not None else {watch}, timeout=5)
            if not isinstance(exc, Stopped):
                raise
            log.info("osel %s stopped before the store answered", self.instance)
            return 0
        self.started = True
        if self.consumes:
            if self.source is None:
                self.source = build_source(self.settings, self.backoff, self.pipeline.recognise)
            await self.source.start()
        tasks = [asyncio.create_task(w(inner), name=w.__name__) for w in self.loops()]
        tasks.append(watch)
        if http is not None:
            tasks.append(http)
        if self.worker:
            tasks += [
                asyncio.create_task(self.outbox.run_sink(s, inner), name=s.sink_id)
                for s in self.outbox.sinks
            ]
        log.info(
            "osel %s running (service.role %s): queue %s, store %s, %s",
            self.instance,
            self.settings.service.role,
            self.settings.amqp.queue if self.consumes else "not consumed",
            self.store.dialect,
            f"{len(self.outbox.sinks)} audit sink(s)"
            if self.worker
            else "audit sinks left to a worker",
        )
        stopper = asyncio.create_task(stop.wait())
        running: set[asyncio.Task[Any]] = {stopper, *tasks}
        failed: list[asyncio.Task[Any]] = []
        while not stop.is_set() and not failed:
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            failed = [t for t in done if t is not stopper and t.exception() is not None]
        for task in failed:
            log.error("%s stopped: %r; shutting down", task.get_name(), task.exception())
        inner.set()
        await self.shutdown(tasks)
        stopper.cancel()
        log.info("osel %s stopped", self.instance)
        return 1 if failed else 0

    async def shutdown(self, tasks: list[asyncio.Task[None]], flush_seconds: float = 5.0) -> None:
        """Stop consuming, let in-flight work finish, flush the outbox for a bounded time."""
        _done, pending = await asyncio.wait(tasks, timeout=flush_seconds)
        for task in pending:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._flush(), timeout=flush_seconds)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.outbox.release(), timeout=flush_seconds)
        if self.source is not None:
            await self.source.close()
        await self.neutron.close()
        await self.scheduler.backend.close()
        for sink in self.outbox.sinks:
            await sink.close()
        await self.store.close()

    async def _flush(self) -> None:
        if not self.worker:  # an intake leaves the delivery to the worker
            return
        for sink in self.outbox.sinks:
            await self.outbox.drain_once(sink)

    # --- the exposure policy (policy.file) ------------------------------------

    _expiries_recorded: set[str] | None = None  # exception expiries known to be in the store
    policy_expiry_seconds = 5.0  # how often policy_expiry looks for expired exceptions

    async def reload_policy(self) -> bool:
        """Read policy.file again (SIGHUP) and swap it in between two batches.

        An invalid file is reported and the policy in force stays; nothing is
        dropped or processed twice either way.
        """
        from dataclasses import replace

        from osel.policy import PolicyError, load_policy

        path = self.settings.policy.file
        if path is None:
            log.warning("SIGHUP: policy.file is not set; there is no policy to reload")
            return False
        try:
            policy = await asyncio.to_thread(load_policy, path)
        except PolicyError as exc:
            log.error(
                "policy %s not reloaded; the policy in force stays: %s",
                path,
                "; ".join(str(p) for p in exc.problems),
            )
            return False
        async with self.lock:  # the pipeline is between two batches
            old = self.pipeline.rules.policy
            self.pipeline.rules = replace(self.pipeline.rules, policy=policy)
        log.info(
            "policy %s reloaded: %s (was %s)",
            path,
            policy.summary(),
            old.summary() if old is not None else "no policy",
        )
        return True

    async def policy_expiry(self, stop: asyncio.Event) -> None:
        """Record each policy exception's expiry, once (record_type policy)."""
        outage = OutageLog("policy expiry recorder", log, cap=self.backoff.cap)
        while not stop.is_set():
            delay = self.policy_expiry_seconds
            try:
                await self.expire_policy_once()
            except Exception as exc:
                delay = max(delay, self._failed(outage, exc))
            else:
                outage.recovered()
            await _sleep(stop, delay)

    async def expire_policy_once(self) -> int:
        """Commit a `policy_exception_expired` record for each newly expired exception.

        Once per exception and expiry, across restarts and instances: the record id
        derives from the exception's name and expiry (the store refuses a second
        one), and a meta key spares later starts the attempt.
        """
        from sqlalchemy.exc import IntegrityError

        from osel.decide import policy_expiry_record

        rules = self.pipeline.rules
        if rules.policy is None:
            return 0
        if self._expiries_recorded is None:
            self._expiries_recorded = set()
        now = rules.now()
        written = 0
        for exc in rules.policy.expired(now):
            if exc.expiry_key in self._expiries_recorded:
                continue
            record = policy_expiry_record(exc, now, instance=self.instance)
            meta = f"policy_expired:{record['record_id']}"
            if await self.store.get_meta(meta) is None:
                try:
                    await self.store.commit(Batch(records=[record]))
                    written += 1
                    log.info(
                        "policy exception %s (owner %s, ticket %s) expired at %s: what it "
                        "matched is scanned again",
                        exc.name,
                        exc.owner,
                        exc.ticket,
                        record["expired_at"],
                    )
                except IntegrityError:
                    pass  # another instance recorded it first
                with contextlib.suppress(IntegrityError):
                    await self.store.set_meta(meta, exc.expiry_key)
            self._expiries_recorded.add(exc.expiry_key)
        if written:
            self.outbox.wake.set()
        return written


_FILTER = EventFilter(HANDLERS)


def might_change_inventory(items: list[Item], event_filter: EventFilter = _FILTER) -> bool:
    """False only for batches whose bodies all surely are of event types osel ignores
    (most of a cloud's notifications): those need no inventory lock. The same test the
    pipeline uses to skip decoding them (or its result, taken on arrival)."""
    return any(item.ignored is None and event_filter.ignorable(item.body) is None for item in items)


async def _until_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """The result of `work`, or None (with `work` cancelled) if `stop` is set first."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def _wait_any(events: list[asyncio.Event], seconds: float) -> None:
    """Return when one of `events` is set, or after `seconds`."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
