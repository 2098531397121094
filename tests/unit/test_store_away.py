"""The store out of reach: the daemon's loops and its HTTP endpoint go on, log in
bounded lines and answer 503, instead of a traceback per round or per request."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from osel.backoff import BackoffPolicy
from osel.config import Settings
from osel.daemon import Daemon
from osel.health import Bounded, Health
from osel.http.app import Context, create_app
from osel.http.metrics import Metrics
from osel.pipeline import Item
from osel.scan_backend import ScanBatch
from osel.store import queries
from osel.store.store import Batch, Store, unavailable
from tests import messages as m
from tests.fakes import FakeNeutron, FakeSource
from tests.unit.test_daemon import neutron_world, settings, wait_for

# nothing listens on port 1: every connection is refused, as with PostgreSQL stopped
REFUSED = "postgresql://osel@127.0.0.1:1/osel"


def value(text: str, name: str, **labels: str) -> float:
    """A sample of a Prometheus text exposition."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"{name}{labels} is missing")


def refused() -> OperationalError:
    return OperationalError("SELECT 1", None, ConnectionRefusedError("connection refused"))


def test_unavailable_tells_an_unreachable_store_from_a_wrong_request():
    assert unavailable(refused())
    assert unavailable(OSError("disk I/O error"))
    assert unavailable(PoolTimeout("QueuePool limit reached"))
    assert unavailable(DBAPIError("SELECT 1", None, Exception("gone"), connection_invalidated=True))
    assert not unavailable(DBAPIError("SELECT 1", None, Exception("syntax error")))
    assert not unavailable(IntegrityError("INSERT", None, Exception("duplicate key")))
    assert not unavailable(KeyError("record_id"))


@pytest.fixture
async def away() -> AsyncIterator[httpx.AsyncClient]:
    store = Store(REFUSED)
    health = Health()
    metrics = Metrics(health)
    metrics.targets.inc(3)  # counted before the store went away

    async def ready() -> dict[str, bool]:
        return {"store": False}

    async def lag() -> dict[str, dict[str, float | int | None]]:
        return await queries.sink_lag(store, ["file:/tmp/x.jsonl"])

    async def refresh() -> None:
        for state, number in (await queries.scans_by_state(store)).items():
            metrics.scans.labels(state).set(number)

    app = create_app(Context(store, health, metrics, ready, lag, instance="t", refresh=refresh))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://osel"
    ) as client:
        yield client
    await store.close()


async def test_the_api_answers_503_and_metrics_still_render_while_the_store_is_away(
    away: httpx.AsyncClient,
):
    changes = await away.get("/v1/changes")
    assert changes.status_code == 503
    assert changes.headers["retry-after"] == "10"
    assert changes.json()["error"].startswith("the store does not answer: OperationalError")
    page = await away.get("/status")
    assert page.status_code == 503 and "store does not answer" in page.text
    assert (await away.get("/v1/scans")).status_code == 503
    metrics = await away.get("/metrics")
    assert metrics.status_code == 200
    assert value(metrics.text, "osel_dependency_up", dependency="store") == 0.0
    assert value(metrics.text, "osel_scan_targets_total") == 3.0


async def test_a_fault_that_is_not_the_store_being_away_stays_a_500(tmp_path: Path):
    health = Health()
    store = Store(f"sqlite:///{tmp_path}/osel.db")

    async def ready() -> dict[str, bool]:
        return {}

    async def lag() -> dict[str, dict[str, float | int | None]]:
        raise IntegrityError("SELECT", None, Exception("a bug, not an outage"))

    app = create_app(Context(store, health, Metrics(health), ready, lag))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://osel") as client:
        assert (await client.get("/metrics")).status_code == 500
    await store.close()


async def prepared(tmp_path: Path, *, cap: float, neutron: FakeNeutron | None = None) -> Daemon:
    """A daemon on a SQLite store, started up, with a fast backoff."""
    daemon = Daemon(
        settings(tmp_path),
        neutron=neutron or neutron_world(),
        backoff=BackoffPolicy(initial=0.05, cap=cap),
    )
    await daemon.prepare()
    return daemon


def lines(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(name)]


async def test_the_scan_scheduler_backs_off_and_logs_an_outage_in_a_few_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, "osel.daemon")
    daemon = await prepared(tmp_path, cap=0.2)
    calls = 0
    failing = True

    async def tick() -> list[ScanBatch]:
        nonlocal calls
        calls += 1
        if failing:
            raise refused()
        return []

    daemon.scheduler.tick = tick  # type: ignore[method-assign]
    stop = asyncio.Event()
    loop = asyncio.create_task(daemon.schedule(stop))
    await asyncio.sleep(1.5)
    failing = False
    await wait_for(lambda: lines(caplog, "scan scheduler back"))
    stop.set()
    await loop
    down = lines(caplog, "scan scheduler")
    # one line when it went down, one summary per cap (0.2 s) at most, one when back:
    # the loop's period at window 0 is 0.2 s, and it was woken after each round before
    assert calls >= 4
    assert len(down) <= 2 + 1.5 / 0.2 + 1
    assert down[0].getMessage().startswith("scan scheduler down: OperationalError")
    assert all(r.exc_info is None for r in down)  # the store away: no traceback
    await daemon.store.close()


async def test_a_fault_in_a_loop_shows_its_traceback_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, "osel.daemon")
    daemon = await prepared(tmp_path, cap=0.2)

    async def tick() -> list[ScanBatch]:
        raise KeyError("batch_id")

    daemon.scheduler.tick = tick  # type: ignore[method-assign]
    stop = asyncio.Event()
    loop = asyncio.create_task(daemon.schedule(stop))
    await wait_for(lambda: len(lines(caplog, "scan scheduler still down")) >= 2)
    stop.set()
    await loop
    down = lines(caplog, "scan scheduler")
    assert [r.exc_info is not None for r in down][:3] == [True, False, False]
    await daemon.store.close()


async def test_the_retry_of_deferred_changes_survives_the_store_going_away(tmp_path: Path):
    daemon = await prepared(tmp_path, cap=0.1)
    real_head = daemon.store.deferred_head
    calls = 0

    async def head(limit: int) -> list[object]:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise refused()
        return await real_head(limit)

    daemon.store.deferred_head = head  # type: ignore[method-assign]
    daemon.pipeline.deferring = True
    stop = asyncio.Event()
    loop = asyncio.create_task(daemon.retry_deferred(stop))
    await wait_for(lambda: not daemon.pipeline.deferring)  # the empty table, once it answers
    assert calls == 4 and not loop.done()
    stop.set()
    await loop
    await daemon.store.close()


async def test_osel_waits_for_the_store_at_start_instead_of_exiting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, "osel.daemon")
    source = FakeSource()
    daemon = Daemon(
        settings(tmp_path),
        neutron=neutron_world(),
        source=source,
        backoff=BackoffPolicy(initial=0.05, cap=0.2),
    )
    real_prepare = daemon.prepare
    attempts = 0

    async def prepare(*, initial_sync: bool = True) -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 3:
            raise refused()
        await real_prepare(initial_sync=initial_sync)

    daemon.prepare = prepare  # type: ignore[method-assign]
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    await wait_for(lambda: lines(caplog, "store back"))
    assert attempts == 4 and not runner.done()
    assert len(lines(caplog, "store down")) == 1
    stop.set()
    assert await runner == 0


async def test_a_fault_at_start_that_is_not_the_store_being_away_still_stops_osel(tmp_path: Path):
    daemon = Daemon(settings(tmp_path), neutron=neutron_world(), source=FakeSource())

    async def prepare(*, initial_sync: bool = True) -> None:
        raise RuntimeError("the store's schema is newer than this osel")

    daemon.prepare = prepare  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="schema is newer"):
        await daemon.run(asyncio.Event())
    await daemon.store.close()


async def test_stopped_while_waiting_for_the_store(tmp_path: Path):
    config = Settings.model_validate(
        {
            "scan": {"backend": "dry-run"},
            "store": {"url": REFUSED},
            "audit": {"sinks": [{"type": "file", "path": str(tmp_path / "audit.jsonl")}]},
            "openstack": {"resync_minutes": 0},
            "http": {"enabled": False},
        }
    )
    daemon = Daemon(
        config,
        neutron=neutron_world(),
        source=FakeSource(),
        backoff=BackoffPolicy(initial=0.05, cap=0.1),
    )
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    await wait_for(lambda: daemon.store_outage.attempts >= 2)
    stop.set()
    assert await runner == 0


def rule_created(rule_id: str) -> Item:
    body = m.envelope(
        m.notification(
            "security_group_rule.create.end", {"security_group_rule": m.rule("sg1", rid=rule_id)}
        )
    )
    return Item(body, "amqp", "")


async def test_an_inventory_the_store_could_not_reload_is_rebuilt_before_the_next_batch(
    tmp_path: Path,
):
    neutron = neutron_world()
    daemon = await prepared(tmp_path, cap=0.1, neutron=neutron)  # loaded from Neutron
    asked = neutron.calls
    real_commit, real_load = daemon.store.commit, daemon.store.load_inventory
    away = True

    async def commit(batch: object) -> None:
        if away:
            raise refused()
        await real_commit(batch)  # type: ignore[arg-type]

    async def load_inventory(inventory: object) -> int:
        if away:
            raise refused()
        return await real_load(inventory)  # type: ignore[arg-type]

    daemon.store.commit = commit  # type: ignore[method-assign]
    daemon.store.load_inventory = load_inventory  # type: ignore[method-assign]
    with pytest.raises(OperationalError):  # the commit fails, and so does the reload
        await daemon.process([rule_created("r1")])
    assert daemon.inventory_stale and not daemon.inventory.ports
    away = False
    await daemon.process([rule_created("r2")])
    assert not daemon.inventory_stale and "p1" in daemon.inventory.ports
    records = [r for r in await daemon.store.tail(10) if r["record_type"] == "change"]
    assert [r["affected_ip_address"] for r in records] == ["10.0.0.1", "203.0.113.10"]
    assert neutron.calls == asked  # judged against the rebuilt inventory, not Neutron
    await daemon.store.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def waiting_daemon(tmp_path: Path, port: int) -> Daemon:
    config = Settings.model_validate(
        {
            "scan": {"backend": "dry-run"},
            "store": {"url": REFUSED},
            "audit": {"sinks": [{"type": "file", "path": str(tmp_path / "audit.jsonl")}]},
            "openstack": {"resync_minutes": 0},
            "http": {"bind": f"127.0.0.1:{port}", "aodh_token": "s3cret"},
        }
    )
    return Daemon(
        config,
        neutron=neutron_world(),
        source=FakeSource(),
        backoff=BackoffPolicy(initial=0.05, cap=0.1),
    )


async def test_the_http_endpoint_answers_while_osel_waits_for_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, "osel.http.app")
    port = free_port()
    daemon = waiting_daemon(tmp_path, port)
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    await wait_for(lambda: daemon.store_outage.attempts >= 2)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {
            "started": False,
            "neutron": False,
            "amqp": False,
            "store": False,
        }
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert value(metrics.text, "osel_dependency_up", dependency="store") == 0.0
        changes = await client.get("/v1/changes")
        assert changes.status_code == 503 and changes.headers["retry-after"] == "10"
        assert changes.json()["error"].startswith("osel is starting")
        page = await client.get("/status")
        assert page.status_code == 503 and "starting" in page.text
        for _ in range(3):  # an Aodh event would be judged against no inventory yet
            aodh = await client.post("/v1/aodh/anything", content=b"{}")
            assert aodh.status_code == 503
    warned = [r for r in caplog.records if "Aodh webhook called while osel starts" in r.message]
    assert len(warned) == 1
    assert not runner.done()
    stop.set()
    assert await runner == 0
    async with httpx.AsyncClient() as client:  # and it stopped with osel
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


async def test_an_http_address_taken_while_waiting_for_the_store_stops_osel(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.ERROR, "osel.daemon")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        daemon = waiting_daemon(tmp_path, taken.getsockname()[1])
        assert await asyncio.wait_for(daemon.run(asyncio.Event()), timeout=10) == 1
    assert "cannot listen there" in caplog.text and "http stopped" in caplog.text


async def test_bounded_waits_at_most_its_timeout_and_runs_one_at_a_time():
    release = asyncio.Event()
    started = 0

    async def hangs() -> str:
        nonlocal started
        started += 1
        await release.wait()
        return "answered"

    bounded = Bounded(0.1)
    for _ in range(3):
        with pytest.raises(TimeoutError, match=r"no answer within 0\.1 s"):
            await bounded(hangs)
    assert started == 1  # the calls after the first waited for it again
    release.set()
    assert await bounded(hangs) == "answered"
    assert started == 1
    assert await bounded(hangs) == "answered" and started == 2


async def test_metrics_answer_while_the_store_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr("osel.http.app.METRICS_STORE_SECONDS", 0.2)
    store = Store(f"sqlite:///{tmp_path}/osel.db")
    health = Health()
    health.report("store", True)
    hang = asyncio.Event()

    async def ready() -> dict[str, bool]:
        return {}

    async def lag() -> dict[str, dict[str, float | int | None]]:
        await hang.wait()  # a PostgreSQL that answers nothing and closes nothing
        return {}

    app = create_app(Context(store, health, Metrics(health), ready, lag))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://osel"
    ) as client:
        async with asyncio.timeout(5):
            metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert value(metrics.text, "osel_dependency_up", dependency="store") == 0.0
        assert "no answer within 0.2 s" in health.deps["store"].error
    hang.set()
    await store.close()


async def test_a_batch_that_waits_long_on_the_store_is_logged_once_then_summarised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, "osel.daemon")
    daemon = Daemon(
        settings(tmp_path),
        neutron=neutron_world(),
        source=FakeSource(),
        backoff=BackoffPolicy(initial=0.05, cap=60),
    )
    daemon.stuck_seconds = 0.5
    await daemon.prepare()
    answer = asyncio.Event()
    real_commit = daemon.store.commit

    async def commit(batch: Batch) -> None:
        await answer.wait()  # the commit's statement gets no answer until the store's does
        await real_commit(batch)

    daemon.store.commit = commit  # type: ignore[method-assign]
    stop = asyncio.Event()
    watch = asyncio.create_task(daemon.watch_waits(stop))
    batch = asyncio.create_task(daemon.process([rule_created("r-hang")]))

    def said(text: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if text in r.getMessage()]

    await wait_for(lambda: said("has waited"))
    await asyncio.sleep(1.5)  # more rounds of the watch: no more lines before the cap
    (warning,) = said("has waited")
    assert warning.startswith("a batch of 1 message(s) has waited 1 s for the store;")
    assert not daemon.health.is_up("store")
    answer.set()
    stats = await batch
    assert stats.outcomes["recorded"] == 1
    await wait_for(lambda: said("and goes on"))
    assert said("and goes on")[-1].startswith("a batch of 1 message(s) waited about")
    assert daemon.health.is_up("store")
    stop.set()
    await watch
    await daemon.store.close()
