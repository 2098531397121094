"""Prometheus metrics (prometheus-client), one registry per daemon."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from osel.health import Health
from osel.pipeline import Stats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _HealthCollector(Collector):
    def __init__(self, health: Health) -> None:
        self.health = health

    def collect(self) -> Iterable[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "osel_dependency_up", "1 when the dependency answers", labels=["dependency"]
        )
        for name, state in sorted(self.health.deps.items()):
            up.add_metric([name], 1.0 if state.up else 0.0)
        yield up


class _CallsCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[CounterMetricFamily]:
        calls = CounterMetricFamily(
            "osel_qualys_calls", "Qualys API calls osel made", labels=["action", "status"]
        )
        for (action, status), count in sorted(self.metrics.qualys_calls.items()):
            calls.add_metric([action, status], count)
        yield calls


class Metrics:
    def __init__(self, health: Health) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "osel_messages",
            "Notifications consumed, by event type and outcome",
            ["event_type", "outcome"],
            registry=r,
        )
        self.changes = Counter(
            "osel_changes", "Exposure changes recorded", ["change_type"], registry=r
        )
        self.records = Counter(
            "osel_records", "Audit records committed", ["record_type"], registry=r
        )
        self.addresses = Counter(
            "osel_addresses_affected",
            "Change records naming an address",
            ["change_type"],
            registry=r,
        )
        self.targets = Counter("osel_scan_targets", "Addresses queued for scanning", registry=r)
        self.scans = Gauge(
            "osel_scan_batches", "Scan batches by their current state", ["state"], registry=r
        )
        self.qualys_calls: dict[tuple[str, str], int] = {}  # filled from the Qualys client
        self.qualys_remaining = Gauge(
            "osel_qualys_budget_remaining",
            "Qualys API calls left in the window, as Qualys last said",
            ["api"],
            registry=r,
        )
        self.sink_lag = Gauge(
            "osel_sink_lag_records", "Committed records not yet delivered", ["sink"], registry=r
        )
        self.sink_age = Gauge(
            "osel_sink_oldest_undelivered_seconds",
            "Age of the oldest record not yet delivered",
            ["sink"],
            registry=r,
        )
        self.pruned = Counter(
            "osel_store_deleted_rows",
            "Rows deleted from the store past store.retention_days, by table",
            ["table"],
            registry=r,
        )
        self.deferred = Gauge("osel_deferred_messages", "Changes waiting for Neutron", registry=r)
        self.revision_gaps = Gauge(
            "osel_revision_gaps",
            "Missed notifications detected (revision jumps and re-sync differences)",
            registry=r,
        )
        self.neutron_misses = Gauge(
            "osel_inventory_misses", "Inventory misses sent to Neutron", registry=r
        )
        self.batch_seconds = Histogram(
            "osel_batch_seconds",
            "Time to process and commit a batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.message_latency = Histogram(
            "osel_change_latency_seconds",
            "From the notification's timestamp to its commit",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        r.register(_HealthCollector(health))
        r.register(_CallsCollector(self))

    def observe(self, stats: Stats, seconds: float) -> None:
        for (event_type, outcome), count in stats.by_event.items():
            self.messages.labels(event_type, outcome).inc(count)
        for change_type, count in stats.changes.items():
            self.changes.labels(change_type).inc(count)
        for change_type, count in stats.addresses.items():
            self.addresses.labels(change_type).inc(count)
        if stats.records:
            self.records.labels("change").inc(stats.records)
        if stats.targets:
            self.targets.inc(stats.targets)
        for latency in stats.latencies:
            self.message_latency.observe(latency)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
