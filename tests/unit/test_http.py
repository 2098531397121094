"""The HTTP endpoints on a store filled by the real pipeline."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from osel.health import Health
from osel.http.app import Context, create_app
from osel.http.metrics import Metrics
from osel.scan_backend import DryRunBackend
from osel.scheduler import Scheduler
from osel.store import queries
from tests import messages as m
from tests.unit.conftest import Harness
from tests.unit.test_pipeline import world


async def scenario(h: Harness, metrics: Metrics) -> None:
    world(h)
    bodies = [
        m.envelope(
            m.notification(
                "security_group_rule.create.end", {"security_group_rule": m.rule("sg1", rid="r1")}
            )
        ),
        m.envelope(m.notification("network.create.end", {"network": {}})),
        b"not json",
        m.envelope(
            m.notification(
                "security_group_rule.create.end",
                {"security_group_rule": m.rule("sg1", rid="r2", direction="egress")},
            )
        ),
    ]
    stats = await h.feed(*bodies)
    metrics.observe(stats, 0.01)
    await Scheduler(h.store, DryRunBackend(), window_seconds=0, max_targets=10, instance="t").tick()


@pytest.fixture
async def client(harness: Harness) -> Any:
    health = Health()
    health.report("neutron", True)
    health.report("amqp", False, "connection refused")
    metrics = Metrics(health)
    await scenario(harness, metrics)

    async def ready() -> dict[str, bool]:
        return {"neutron": health.is_up("neutron"), "amqp": health.is_up("amqp")}

    async def lag() -> dict[str, dict[str, float | int | None]]:
        return await queries.sink_lag(harness.store, ["file:/tmp/x.jsonl"])

    app = create_app(Context(harness.store, health, metrics, ready, lag, instance="t-1"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://osel") as c:
        yield c


async def test_health_and_readiness(client: httpx.AsyncClient):
    assert (await client.get("/healthz")).json() == {"status": "ok", "instance": "t-1"}
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"ready": False, "checks": {"neutron": True, "amqp": False}}


async def test_metrics_count_what_happened(client: httpx.AsyncClient):
    text = (await client.get("/metrics")).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    rule = "security_group_rule.create.end"
    assert value("osel_messages_total", event_type=rule, outcome="recorded") == 2
    assert value("osel_messages_total", event_type="network.create.end", outcome="ignored") == 1
    assert value("osel_messages_total", event_type="", outcome="quarantined") == 1
    assert value("osel_changes_total", change_type="sg_rule_add") == 2
    assert value("osel_addresses_affected_total", change_type="sg_rule_add") == 6
    assert value("osel_scan_targets_total") == 3
    assert value("osel_dependency_up", dependency="amqp") == 0
    assert value("osel_dependency_up", dependency="neutron") == 1
    assert value("osel_sink_lag_records", sink="file:/tmp/x.jsonl") == 8  # 6 changes + 2 scan


async def test_changes_filter_and_page(client: httpx.AsyncClient):
    everything = (await client.get("/v1/changes")).json()
    assert len(everything["items"]) == 6 and everything["next_after"] is None
    one = (await client.get("/v1/changes", params={"address": "203.0.113.10"})).json()["items"]
    assert {c["change_type"] for c in one} == {"sg_rule_add"} and len(one) == 2
    queued = next(c for c in one if c["scan_batch_id"])  # the one that was queued for a scan
    assert queued["scan_batch_state"] == "launched"  # the record learnt its batch
    assert queued["scan_state"] == "launched"
    first = (await client.get("/v1/changes", params={"limit": 4})).json()
    rest = (await client.get("/v1/changes", params={"after": first["next_after"]})).json()
    ids = [c["id"] for c in first["items"] + rest["items"]]
    assert len(ids) == 6 and ids == sorted(ids, reverse=True)
    assert (await client.get("/v1/changes", params={"project_id": "nobody"})).json()["items"] == []
    assert (await client.get("/v1/changes", params={"limit": 0})).status_code == 422


async def test_scans_and_status_page(client: httpx.AsyncClient):
    scans = (await client.get("/v1/scans")).json()["items"]
    assert len(scans) == 1 and sorted(scans[0]["addresses"]) == [
        "10.0.0.1",
        "10.0.0.2",
        "203.0.113.10",
    ]
    by_address = (await client.get("/v1/scans", params={"address": "10.0.0.2"})).json()
    assert len(by_address["items"]) == 1
    page = (await client.get("/status")).text
    for text in ("203.0.113.10", "sg_rule_add", "tcp/22 from 0.0.0.0/0", "launched", "amqp"):
        assert text in page
    openapi = (await client.get("/openapi.json")).json()
    assert {"/v1/changes", "/v1/scans", "/healthz", "/readyz"} <= set(openapi["paths"])


async def test_a_filter_with_a_nul_byte_is_refused_not_sent_to_the_store(
    client: httpx.AsyncClient,
):
    for path in ("/v1/changes?address=10.0.0.1%00", "/v1/scans?state=queued%00"):
        reply = await client.get(path)
        assert reply.status_code == 422, (path, reply.text)
