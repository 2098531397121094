"""The parts of the benchmark; each returns a JSON-ready dict of what it measured."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import analysis, broker
from bench.mix import Cloud, Mix
from bench.oselproc import (
    OselProcess,
    cpu_watch,
    postgres_database,
    rss_watch,
    wait_processed,
    warm_store,
)

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]


def _publish_mix(
    mix: Mix, exchange: str, routing_key: str, count: int, start: int = 0, half: str | None = None
) -> float:
    """Publish messages `start`.. of the mix, or `count` of one half of it (`ignored`,
    `relevant`); returns seconds taken."""
    began = time.monotonic()
    if half == "relevant":
        messages = mix.relevant_stream(count, start)
    elif half == "ignored":
        messages = (mix.ignored_message(i) for i in range(start, start + count))
    else:
        messages = mix.stream(count, start)
    broker.publish(exchange, routing_key, (m.body for m in messages))
    return time.monotonic() - began


def _drain_result(
    samples: list[tuple[float, int]],
    total: int,
    cpu: analysis.CpuSamples | None = None,
) -> dict[str, Any]:
    """The figures of a drain from its queue-depth samples, and with `cpu` (a
    `cpu_watch`'s samples of the consumer) its CPU use over the steady part."""
    span = analysis.drain_span(samples, total)
    use = analysis.cpu_use(cpu or [], analysis.steady_span(samples, total))
    return {
        "messages": total,
        "sustained_rate": analysis.sustained_rate(samples, total),
        "drain_seconds": (span[1] - span[0]) if span else None,
        "drain_rate": total / (span[1] - span[0]) if span and span[1] > span[0] else None,
        "cpu_cores": use["cores"] if use else None,
        "machine_busy": use["machine_busy"] if use else None,
        "series": [(round(t, 3), round(r, 1)) for t, r in analysis.rate_series(samples, total)],
    }


# --------------------------------------------------------------------------- throughput


def osel_rate(
    cloud: Cloud,
    count: int,
    workdir: Path,
    store: str = "sqlite",
    seed: int = 1,
    profile: Path | None = None,
    window: float = 0,
    half: str | None = None,
    instances: int = 1,
    split: bool = False,
) -> dict[str, Any]:
    """osel draining `count` pre-published messages of the mix (or of one half of it,
    `ignored` or `relevant`), warm inventory; `instances` of it on one queue and one
    store (PostgreSQL only: several instances share a PostgreSQL store). With `split`,
    each instance takes in and commits (`service.role: intake`) and one more process,
    a worker, forms and launches the scans and delivers the audit trail.
    With `profile`, py-spy samples the first instance and writes collapsed stacks there."""
    if instances > 1 and store != "postgresql":
        raise ValueError(f"{instances} instances need the postgresql store, not {store}")
    if store == "postgresql":
        with postgres_database() as url:
            return _osel_rate(
                cloud, count, workdir, url, seed, profile, window, half, instances, split
            )
    return _osel_rate(cloud, count, workdir, None, seed, profile, window, half, 1, split)


def _osel_rate(
    cloud: Cloud,
    count: int,
    workdir: Path,
    store_url: str | None,
    seed: int,
    profile: Path | None,
    window: float,
    half: str | None = None,
    instances: int = 1,
    split: bool = False,
) -> dict[str, Any]:
    exchange, topic, queue = broker.unique("ex"), broker.unique("topic"), broker.unique("queue")
    several = instances > 1 or split  # processes of their own names and directories

    def process_for(name: str, role: str) -> OselProcess:
        return OselProcess(
            workdir / f"instance-{name}" if several else workdir,
            store_url=store_url or (f"sqlite:///{workdir}/osel.db" if split else None),
            exchanges=[exchange],
            topics=[topic],
            queue=queue,
            window_seconds=window,
            extra=(
                {"service": {"instance_name": f"osel-bench-{name}", "role": role}}
                if several
                else None
            ),
        )

    fleet = [process_for(f"{i}", "intake" if split else "all") for i in range(instances)]
    workers = [process_for("worker", "worker")] if split else []
    osel = fleet[0]
    broker.declare(exchange, queue, f"{topic}.info")
    try:
        resources = warm_store(osel.store_url, cloud)
        published = _publish_mix(Mix(cloud, seed=seed), exchange, f"{topic}.info", count, half=half)
        broker.wait_depth(queue, count)
        for worker in workers:  # consumes nothing: it may start before the clock does
            worker.start(wait_for="running")
        watch = broker.DepthWatch(queue).start()
        started = time.monotonic()
        for member in fleet:
            member.start()
        rss = rss_watch(osel.pid, interval=0.5).start()
        cpu = cpu_watch([member.pid for member in fleet + workers]).start()
        spy = _py_spy(osel.pid, profile) if profile is not None else None
        if not watch.wait_empty(timeout=max(600, count / 100)):
            raise RuntimeError(f"osel did not drain its queue:\n{osel.tail()}")
        done_at = wait_processed(fleet, count)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        watch.stop()
        rss_samples = rss.stop()
        cpu_samples = cpu.stop()
        outcomes: dict[str, int] = {}
        metrics: dict[str, list[tuple[dict[str, str], float]]] = {}
        for member in fleet:
            for outcome, n in member.outcomes().items():
                outcomes[outcome] = outcomes.get(outcome, 0) + n
            for name, values in member.metrics().items():
                metrics.setdefault(name, []).extend(values)
    finally:
        for member in fleet + workers:
            member.stop()
        broker.delete([queue], [exchange])
    result = _drain_result(watch.samples, count, cpu_samples)
    span = analysis.drain_span(watch.samples, count)
    result.update(
        {
            "store": osel.store_url.split(":", 1)[0],
            "instances": instances,
            "split": split,
            "window_seconds": window,
            "half": half or "mix",
            "inventory_resources": resources,
            "publish_seconds": published,
            "start_to_all_committed_seconds": done_at - started,
            "first_delivery_to_all_committed_seconds": (done_at - span[0]) if span else None,
            "outcomes": outcomes,
            "inventory_misses": _metric(metrics, "osel_inventory_misses"),
            "batches": _metric(metrics, "osel_batch_seconds_count"),
            "batch_seconds_total": _metric(metrics, "osel_batch_seconds_sum"),
            "peak_rss_mib": max((v for _t, v in rss_samples), default=0) / 1024,
        }
    )
    return result


def _metric(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return sum(value for _labels, value in metrics.get(name, []))


def _py_spy(pid: int, output: Path) -> subprocess.Popen[bytes]:
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [str(spy), "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
         "--nonblocking", "--threads", "--idle", "--output", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def ceiling_rate(cloud: Cloud, count: int, seed: int = 1) -> dict[str, Any]:
    """A bare pika consumer (decode only, one ack per 200) on the same pre-published load."""
    exchange, queue = broker.unique("ex"), broker.unique("queue")
    broker.declare(exchange, queue, "ceiling.info")
    try:
        published = _publish_mix(Mix(cloud, seed=seed), exchange, "ceiling.info", count)
        broker.wait_depth(queue, count)
        watch = broker.DepthWatch(queue).start()
        own, cpu = _run_json([sys.executable, "-m", "bench.ceiling", "--queue", queue,
                              "--count", str(count)])  # fmt: skip
        watch.wait_empty(timeout=30)
        watch.stop()
    finally:
        broker.delete([queue], [exchange])
    result = _drain_result(watch.samples, count, cpu)
    result.update({"publish_seconds": published, "own_timing": own})
    return result


def oslo_rate(cloud: Cloud, count: int, seed: int = 1) -> dict[str, Any]:
    """oslo.messaging's notification listener, as Ceilometer's agent runs it, on the
    same load."""
    exchange, topic = broker.unique("ex"), broker.unique("topic")
    queue = f"{topic}.info"
    command = [sys.executable, "-m", "bench.oslo_listener", "--exchange", exchange,
               "--topic", topic]  # fmt: skip
    try:
        subprocess.run([*command, "--declare"], check=True, cwd=ROOT, timeout=120)
        published = _publish_mix(Mix(cloud, seed=seed), exchange, queue, count)
        broker.wait_depth(queue, count)
        watch = broker.DepthWatch(queue).start()
        own, cpu = _run_json([*command, "--count", str(count)])
        watch.wait_empty(timeout=30)
        watch.stop()
    finally:
        broker.delete([queue], [exchange])
    result = _drain_result(watch.samples, count, cpu)
    result.update({"publish_seconds": published, "own_timing": own})
    return result


def _run_json(command: list[str]) -> tuple[dict[str, Any], analysis.CpuSamples]:
    """Run a consumer that prints one JSON line last: that line, and its CPU samples."""
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        cpu = cpu_watch([proc.pid]).start()
        try:
            out, err = proc.communicate(timeout=3600)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            samples = cpu.stop()
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, command, out, err)
    data: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return data, samples


# --------------------------------------------------------------------------- latency


def latency(cloud: Cloud, workdir: Path, rate: float, seconds: float) -> dict[str, Any]:
    """Publish changes at a steady `rate`; per change, from its publish to its scan request
    (the dry-run batch committed as launched), at scan.window_seconds 0."""
    exchange, topic, queue = broker.unique("ex"), broker.unique("topic"), broker.unique("queue")
    osel = OselProcess(
        workdir,
        exchanges=[exchange],
        topics=[topic],
        queue=queue,
        extra={"scan": {"cooldown_minutes": 0}},
    )
    broker.declare(exchange, queue, f"{topic}.info")
    published: dict[str, float] = {}
    try:
        warm_store(osel.store_url, cloud)
        osel.start()
        time.sleep(1.0)
        mix = Mix(cloud, seed=7)
        publisher = broker.Publisher()
        count = int(rate * seconds)
        began = time.monotonic()
        try:
            for i, message in enumerate(mix.relevant_stream(count)):
                pause = began + i / rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                published[message.message_id] = time.time()
                publisher.publish(exchange, f"{topic}.info", [message.body])
        finally:
            publisher.close()
        osel.wait_processed(count, timeout=120)
        time.sleep(2.0)  # let the scheduler launch what the last commits queued
    finally:
        osel.stop()
        broker.delete([queue], [exchange])
    requested = _scan_requests(Path(osel.store_url.split("///", 1)[1]))
    latencies = [(requested[mid] - at) * 1000 for mid, at in published.items() if mid in requested]
    return {
        "rate_per_second": rate,
        "changes_published": len(published),
        "changes_scanned": len(latencies),
        "p50_ms": analysis.percentile(latencies, 50),
        "p90_ms": analysis.percentile(latencies, 90),
        "p99_ms": analysis.percentile(latencies, 99),
        "max_ms": max(latencies, default=float("nan")),
    }


def _utc(text: str) -> float:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _scan_requests(db: Path) -> dict[str, float]:
    """message id -> when the first launched scan batch covering it was committed."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT st.message_id, sb.updated_at FROM scan_targets st "
            "JOIN scan_batches sb ON sb.id = st.batch_id WHERE sb.state = 'launched'"
        ).fetchall()
    out: dict[str, float] = {}
    for mid, at in rows:
        when = _utc(at)
        out[mid] = min(out.get(mid, when), when)
    return out


# --------------------------------------------------------------------------- memory


def rss(
    cloud: Cloud,
    count: int,
    workdir: Path,
    chunk: int = 50_000,
    high_water: int = 150_000,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """VmRSS of osel, every second, while it takes `count` messages of the mix, published
    in chunks so that the queue stays below `high_water`."""
    exchange, topic, queue = broker.unique("ex"), broker.unique("topic"), broker.unique("queue")
    osel = OselProcess(workdir, exchanges=[exchange], topics=[topic], queue=queue)
    broker.declare(exchange, queue, f"{topic}.info")
    mix = Mix(cloud, seed=3)
    try:
        warm_store(osel.store_url, cloud)
        osel.start()
        watch = rss_watch(osel.pid, interval=1.0).start()
        began = time.monotonic()
        publisher = broker.Publisher()
        conn = broker.connect()
        channel = conn.channel()
        sent = 0
        try:
            while sent < count:
                if broker.depth(queue, channel) > high_water - chunk:
                    time.sleep(0.5)
                    continue
                size = min(chunk, count - sent)
                publisher.publish(
                    exchange, f"{topic}.info", (m.body for m in mix.stream(size, sent))
                )
                sent += size
                progress(f"rss: {sent:,} of {count:,} published")
        finally:
            publisher.close()
            conn.close()
        done_at = osel.wait_processed(count, timeout=3600)
        samples = watch.stop()
        outcomes = osel.outcomes()
    finally:
        osel.stop()
        broker.delete([queue], [exchange])
    series = [(t - began, kib / 1024) for t, kib in samples if t <= done_at]
    flat = analysis.flatness([(t, int(v * 1024)) for t, v in series])
    return {
        "messages": count,
        "seconds": done_at - began,
        "peak_rss_mib": max((v for _t, v in series), default=float("nan")),
        "first_tenth_median_mib": flat["first_tenth_median"] / 1024,
        "last_tenth_median_mib": flat["last_tenth_median"] / 1024,
        "growth": flat["growth"],
        "outcomes": outcomes,
        "series": [(round(t, 1), round(v, 1)) for t, v in series],
    }


def workdir(base: Path | None, name: str) -> Path:
    root = base or Path(tempfile.mkdtemp(prefix="osel-bench-"))
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path
