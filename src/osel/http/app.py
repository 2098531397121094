"""The daemon's HTTP endpoint: health, readiness, metrics, the JSON API, the status page.

Served by uvicorn inside the daemon's event loop (`osel.http.server`), bound to
loopback by default (`http.bind`). The OpenAPI document is at /openapi.json.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from osel import __version__
from osel.backoff import describe_error
from osel.health import Bounded, Health
from osel.http.metrics import Metrics
from osel.store import queries
from osel.store.store import Store, unavailable

log = logging.getLogger(__name__)

Lag = dict[str, dict[str, float | int | None]]


@dataclass
class Context:
    """What the endpoints read; the daemon fills it."""

    store: Store
    health: Health
    metrics: Metrics
    ready: Callable[[], Awaitable[dict[str, bool]]]
    lag: Callable[[], Awaitable[Lag]]
    instance: str = ""
    extra_routes: list[Callable[[FastAPI], None]] = field(default_factory=list)
    refresh: Callable[[], Awaitable[None]] | None = None  # before /metrics renders
    # False while the daemon waits for the store and loads its inventory: only the
    # probes and /metrics answer then (see create_app's while_starting)
    started: Callable[[], bool] = lambda: True


class ChangeRecord(BaseModel):
    """An audit record of one change on one address (docs/audit-records.md)."""

    model_config = ConfigDict(extra="allow")
    id: int
    record_id: str
    change_type: str
    event_type: str
    message_id: str
    timestamp: str
    project_id: str
    affected_ip_address: str
    internet_exposed: bool
    scan_state: str
    qualys_scan_id: str
    opened: list[dict[str, Any]]
    closed: list[dict[str, Any]]


class ChangePage(BaseModel):
    items: list[ChangeRecord]
    next_after: int | None = Field(None, description="Pass as `after` for the next page")


class ScanBatch(BaseModel):
    id: str
    state: str
    backend: str
    title: str
    reference: str
    priority: int
    addresses: list[str]
    error: str
    summary: dict[str, Any] | list[Any] | None
    created_at: str
    updated_at: str


class ScanPage(BaseModel):
    items: list[ScanBatch]
    next_offset: int | None = Field(None, description="Pass as `offset` for the next page")


class Ready(BaseModel):
    ready: bool
    checks: dict[str, bool]


Limit = Annotated[int, Query(ge=1, le=1000)]
# a filter value: what the store's columns can hold (PostgreSQL refuses NUL in text)
Text = Annotated[str | None, Query(max_length=255, pattern=r"^[^\x00]*$")]


RETRY_AFTER = {"Retry-After": "10"}
# how long /metrics waits for the gauges read from the store (Prometheus's default
# scrape timeout is 10 s)
METRICS_STORE_SECONDS = 3.0
# what answers while the daemon starts: the rest needs the store and the inventory
ANSWER_WHILE_STARTING = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"})


def _unavailable(request: Request, title: str, error: str) -> Response:
    """A 503 that says why, as a page for /status and as JSON elsewhere."""
    if request.url.path == "/status":
        page = (
            f"<!doctype html><title>osel: {title}</title><h1>osel: {title}</h1><p>This "
            "page needs the store; it comes back when the store does. /healthz, /readyz "
            "and /metrics still answer."
        )
        return HTMLResponse(page, status_code=503, headers=RETRY_AFTER)
    return JSONResponse({"error": error}, 503, RETRY_AFTER)


def _store_away(ctx: Context) -> Callable[[Request, Exception], Awaitable[Response]]:
    """The handler of store errors in requests."""

    async def store_away(request: Request, exc: Exception) -> Response:
        """503 while the store is out of reach, without a traceback per request: the
        daemon's loops log the outage in bounded lines. Other faults stay 500s."""
        if not unavailable(exc):
            raise exc
        error = describe_error(exc)
        ctx.health.report("store", False, error)
        return _unavailable(
            request, "the store does not answer", f"the store does not answer: {error}"
        )

    return store_away


async def _store_gauges(ctx: Context, bounded: Bounded) -> None:
    """Set the gauges read from the store. While it is out of reach, or hangs, they keep
    their last values: the counters and osel_dependency_up{dependency="store"} 0 are
    what matters, and a scrape must not time out waiting for the store."""
    if not ctx.started():
        return  # the store may not answer yet, or not have its tables

    async def read() -> None:
        if ctx.refresh is not None:
            await ctx.refresh()
        for sink, lag in (await ctx.lag()).items():
            ctx.metrics.sink_lag.labels(sink).set(lag["behind"] or 0)
            ctx.metrics.sink_age.labels(sink).set(lag["oldest_seconds"] or 0)

    try:
        await bounded(read)
    except Exception as exc:
        if not unavailable(exc):
            raise
        ctx.health.report("store", False, describe_error(exc))


def create_app(ctx: Context) -> FastAPI:
    app = FastAPI(
        title="osel",
        version=__version__,
        description="OpenStack Event Listener: exposure changes, scans and health.",
    )

    store_away = _store_away(ctx)
    refused_aodh: list[str] = []  # warned once: the first Aodh call refused while starting
    app.add_exception_handler(DBAPIError, store_away)
    app.add_exception_handler(PoolTimeout, store_away)

    @app.middleware("http")
    async def while_starting(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """503 with Retry-After for what needs the store until the daemon has started:
        an Aodh event judged against an inventory not loaded yet would be wrong."""
        path = request.url.path
        if ctx.started() or path in ANSWER_WHILE_STARTING:
            return await call_next(request)
        if path.startswith("/v1/aodh") and not refused_aodh:
            refused_aodh.append(path)
            log.warning(
                "Aodh webhook called while osel starts: answered 503 (Aodh does not retry); "
                "the next re-sync records the change (openstack.resync_minutes)"
            )
        return _unavailable(
            request,
            "starting",
            "osel is starting: it is waiting for the store, or loading its inventory",
        )

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "instance": ctx.instance}

    @app.get(
        "/readyz",
        response_model=Ready,
        responses={503: {"model": Ready}},
        summary="Broker connected, store writable, Neutron answered recently",
    )
    async def readyz() -> JSONResponse:
        checks = await ctx.ready()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    gauges = Bounded(METRICS_STORE_SECONDS)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        await _store_gauges(ctx, gauges)
        return Response(ctx.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/changes", response_model=ChangePage, summary="Change records, newest first")
    async def list_changes(
        since: datetime | None = None,
        until: datetime | None = None,
        project_id: Text = None,
        address: Text = None,
        after: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
        limit: Limit = 100,
    ) -> dict[str, Any]:
        page = await queries.changes(
            ctx.store, queries.ChangeFilter(since, until, project_id, address, after, limit)
        )
        return {"items": page.items, "next_after": page.next_after}

    @app.get("/v1/scans", response_model=ScanPage, summary="Scan batches, newest first")
    async def list_scans(
        since: datetime | None = None,
        until: datetime | None = None,
        state: Text = None,
        address: Text = None,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
        limit: Limit = 100,
    ) -> dict[str, Any]:
        page = await queries.scans(
            ctx.store, queries.ScanFilter(since, until, state, address, offset, limit)
        )
        return {"items": page.items, "next_offset": page.next_after}

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/status")

    @app.get("/status", response_class=HTMLResponse, summary="The status page")
    async def status(request: Request) -> HTMLResponse:
        from osel.http.status import render_status

        return HTMLResponse(await render_status(ctx))

    for add in ctx.extra_routes:
        add(app)
    return app
