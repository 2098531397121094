"""schemathesis against osel's OpenAPI document, over a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from osel.health import Health
from osel.http.app import Context, create_app
from osel.http.metrics import Metrics
from osel.http.server import HttpServer
from osel.inventory import Inventory
from osel.model import Port, SecurityGroup
from osel.pipeline import Item, Pipeline
from osel.resolver import Resolver
from osel.scan_backend import DryRunBackend
from osel.scheduler import Scheduler
from osel.store import queries
from osel.store.store import Batch, Store
from tests import messages as m
from tests.fakes import FakeNeutron
from tests.pg import postgres_database

pytestmark = pytest.mark.integration


async def _fill(store: Store) -> None:
    neutron = FakeNeutron()
    neutron.groups = {"sg1": SecurityGroup("sg1", "p1")}
    neutron.ports = {"p1": Port.from_neutron(m.port("p1", ["10.0.0.1", "2001:db8::1"], ["sg1"]))}
    inventory = Inventory()
    pipeline = Pipeline(
        store,
        inventory,
        Resolver(inventory, neutron),
        __import__("osel.decide", fromlist=["Rules"]).Rules(),
        instance="t",
    )
    batch = Batch()
    await pipeline.process(
        [
            Item(
                m.envelope(
                    m.notification(
                        "security_group_rule.create.end", {"security_group_rule": m.rule("sg1")}
                    )
                )
            )
        ],
        batch,
    )
    batch.dirty = inventory.take_dirty()
    await store.commit(batch)
    await Scheduler(store, DryRunBackend(), window_seconds=0, max_targets=5, instance="t").tick()


def _serve(url: str, started: threading.Event, stop_flag: threading.Event, port: list[int]) -> None:
    async def main() -> None:
        store = Store(url)
        await store.migrate()
        await _fill(store)
        health = Health()
        health.report("neutron", True)

        async def ready() -> dict[str, bool]:
            return {"neutron": True}

        async def lag() -> dict[str, dict[str, float | int | None]]:
            return await queries.sink_lag(store, ["file:x"])

        server = HttpServer(
            create_app(Context(store, health, Metrics(health), ready, lag)), "127.0.0.1", 0
        )
        stop = asyncio.Event()
        task = asyncio.create_task(server.run(stop))
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
            await asyncio.sleep(0.02)
        port.append(server.port)
        started.set()
        await asyncio.to_thread(stop_flag.wait)
        stop.set()
        await task
        await store.close()

    asyncio.run(main())


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('api') / 'osel.db'}"
        else:
            url = stack.enter_context(postgres_database())
        started, stop_flag = threading.Event(), threading.Event()
        port: list[int] = []
        thread = threading.Thread(target=_serve, args=(url, started, stop_flag, port), daemon=True)
        thread.start()
        assert started.wait(30), "the HTTP server did not start"
        yield f"http://127.0.0.1:{port[0]}"
        stop_flag.set()
        thread.join(10)


def test_api_conforms_to_its_openapi_document(api_url: str) -> None:
    """Every operation, with generated parameters, answers as its document says.

    (schemathesis's pytest plugin does not run on pytest 9 yet, so the
    operations are driven through hypothesis directly.)
    """
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert {op.path for op in operations} >= {"/v1/changes", "/v1/scans", "/readyz", "/metrics"}
    checked = 0
    for operation in operations:

        @settings(
            max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            case.call_and_validate()

        run()
        checked += 1
    assert checked == len(operations)
