"""The benchmark's message mix and arithmetic (no broker needed)."""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest

from bench import analysis, oselproc, report, runs
from bench.mix import CYCLE, Cloud, Mix, load_samples
from osel.decide import Rules
from osel.decode import decode
from osel.handlers import HANDLERS
from osel.pipeline import Item, Pipeline
from osel.resolver import Resolver
from osel.store.store import Batch, Store


def test_mix_is_distinct_valid_notifications() -> None:
    samples = load_samples()
    sizes = [len(s.body) for s in samples]
    messages = list(Mix(Cloud(20, 4)).stream(2000))
    assert len({x.message_id for x in messages}) == len(messages)
    uniques = set()
    relevant = 0
    for x in messages:
        n = decode(x.body)
        assert n.message_id == x.message_id and n.event_type == x.event_type
        assert (n.event_type in HANDLERS) == x.relevant
        relevant += x.relevant
        inner = json.loads(json.loads(x.body)["oslo.message"])
        uniques.add(inner["_unique_id"])
        assert min(sizes) * 0.8 <= len(x.body) <= max(sizes) * 1.2
    assert relevant == len(messages) // 10
    assert len(uniques) == len(messages)  # oslo.messaging drops repeated _unique_ids


async def test_every_change_is_recorded_from_the_warm_inventory(tmp_path: Path) -> None:
    cloud = Cloud(3, 3)
    store = Store(f"sqlite:///{tmp_path}/bench.db")
    await store.migrate()
    inventory = cloud.inventory()
    start = (len(inventory.rules), len(inventory.ports), len(inventory.fips))
    resolver = Resolver(inventory, None)  # any miss would defer the change
    pipeline = Pipeline(store, inventory, resolver, Rules(), instance="t")
    mix = Mix(cloud)
    outcomes: Counter[str] = Counter()
    steps = 2 * len(CYCLE) * cloud.groups  # two whole cycles of every group
    for chunk in range(0, steps, 10):
        batch = Batch()
        items = [Item(x.body) for x in mix.relevant_stream(10, chunk)]
        stats = await pipeline.process(items, batch)
        batch.dirty = inventory.take_dirty()
        await store.commit(batch)
        outcomes.update(stats.outcomes)
    await store.close()
    assert outcomes == {"recorded": steps}
    assert resolver.misses == 0 and resolver.revision_gaps == 0
    assert (len(inventory.rules), len(inventory.ports), len(inventory.fips)) == start


def test_rates_and_percentiles() -> None:
    # 1000 messages drained at 100/s after 2 s, sampled every 0.5 s
    samples = [(t / 2, max(0, min(1000, 1000 - int((t / 2 - 2) * 100)))) for t in range(30)]
    assert analysis.sustained_rate(samples, 1000) == 100
    assert analysis.drain_span(samples, 1000) == (2.5, 12.0)
    assert all(abs(r - 100) < 1e-9 for _t, r in analysis.rate_series(samples, 1000)[2:-2])
    assert analysis.percentile([float(i) for i in range(1, 101)], 99) == 99
    assert analysis.flatness([(float(i), 100) for i in range(20)])["growth"] == 1


def test_targets_and_document() -> None:
    results = {
        "rates": {
            "ceiling": {"sustained_rate": 20000.0, "messages": 100, "series": [(0, 1)]},
            "osel_sqlite": {"sustained_rate": 12000.0, "outcomes": {"ignored": 90}},
            "oslo": {"sustained_rate": 2000.0},
        },
        "latency": {"p99_ms": 250.0},
        "burst": {"neutron_calls_per_change": 0.0},
    }
    found = report.targets(results)
    assert [t["status"] for t in found.values()] == ["pass", "pass", "FAIL", "pass", "n/a"]
    results["targets"] = found
    text = report.markdown(results)
    assert "| osel >= 0.5x ceiling | 0.60x | pass |" in text


def test_each_half_of_the_mix_has_its_section_only_when_measured() -> None:
    halves = {
        "ignored": {"messages": 150_000, "sustained_rate": 12_500.0},
        "relevant": {"messages": 15_000, "sustained_rate": 1_600.0},
    }
    page = report.markdown({"halves": halves})
    assert "| ignored | 150,000 | 12,500 | 80 |" in page
    assert "| relevant | 15,000 | 1,600 | 625 |" in page
    assert "## Each half of the mix alone" not in report.markdown({})


def test_the_halves_are_what_their_names_say() -> None:
    from osel.decode import EventFilter

    mix = Mix(Cloud(20, 4), seed=5)
    wanted = EventFilter(HANDLERS)
    assert all(wanted.ignorable(mix.ignored_message(i).body) for i in range(300))
    assert not any(wanted.ignorable(m.body) for m in mix.relevant_stream(100))


def test_two_instances_are_reported_beside_one() -> None:
    rates = {
        "ceiling": {"sustained_rate": 20000.0},
        "osel_sqlite": {"sustained_rate": 8000.0},
        "oslo": {"sustained_rate": 2000.0},
        "osel_postgresql": {"sustained_rate": 5000.0},
        "osel_postgresql_x2": {"sustained_rate": 6000.0, "outcomes": {"ignored": 90}},
    }
    page = report.markdown({"rates": rates})
    assert "6,000 with two instances on PostgreSQL (1.20x one)" in page
    assert "| osel, two instances (one PostgreSQL store, one queue) | 6,000 |" in page
    del rates["osel_postgresql_x2"]
    page = report.markdown({"rates": rates})
    assert "— with two instances on PostgreSQL), " in page
    table = page.split("## Throughput")[1].split("- **osel**")[0]
    assert "two instances (one PostgreSQL store" not in table


def test_an_intake_and_a_worker_are_reported_against_one_process() -> None:
    rates = {
        "ceiling": {"sustained_rate": 20000.0},
        "osel_sqlite": {"sustained_rate": 8000.0},
        "oslo": {"sustained_rate": 2000.0},
        "osel_sqlite_split": {"sustained_rate": 10000.0},
    }
    page = report.markdown({"rates": rates})
    assert (
        "An intake and a worker in two processes on SQLite took 10,000 messages/s: 1.25x one "
        "process, 0.50x the ceiling and 5.00x oslo.messaging." in page
    )
    assert "| osel, intake and worker in two processes (one SQLite store) | 10,000 |" in page
    # the targets stay those of one process, as deployed by default
    found = report.targets({"rates": rates})
    assert [t["measured"] for t in found.values()][:2] == ["0.40x", "4.00x"]


def test_several_instances_need_postgresql(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 instances need the postgresql store, not sqlite"):
        runs.osel_rate(Cloud(2, 4), 10, tmp_path, "sqlite", instances=2)


def test_cpu_use_is_taken_over_the_steady_part_of_the_drain() -> None:
    # 1000 messages drained at 100/s from t=2 (10% at t=3, 90% at t=11); the consumer
    # uses 0.9 s of CPU and the machine (2 cores) 1.2 s per second: 60% busy
    depth = [(t / 2, max(0, min(1000, 1000 - int((t / 2 - 2) * 100)))) for t in range(30)]
    cpu = [(t / 4, 0.9 * t / 4, 1.2 * t / 4, 2.0 * t / 4) for t in range(60)]
    cpu[2] = (0.5, 50.0, 50.0, 50.0)  # before the steady part: not counted
    span = analysis.steady_span(depth, 1000)
    assert span == (3.0, 11.0)
    use = analysis.cpu_use(cpu, span)
    assert use is not None
    assert use["cores"] == pytest.approx(0.9)
    assert use["machine_busy"] == pytest.approx(0.6)
    assert analysis.cpu_use(cpu[:13], span) is None  # one sample inside
    assert analysis.cpu_use(cpu, None) is None
    assert runs._drain_result(depth, 1000, cpu)["cpu_cores"] == pytest.approx(0.9)
    assert runs._drain_result(depth, 1000)["cpu_cores"] is None


def test_cpu_time_comes_from_proc() -> None:
    watch = oselproc.cpu_watch([os.getpid()], interval=0.01).start()
    deadline = time.monotonic() + 10
    while len(watch.samples) < 3 and time.monotonic() < deadline:
        sum(range(100_000))
    samples = watch.stop()
    assert len(samples) >= 3
    for (t0, own0, busy0, all0), (t1, own1, busy1, all1) in itertools.pairwise(samples):
        assert t1 > t0 and own1 >= own0 and busy1 >= busy0 and all1 >= all0
    assert samples[-1][1] > 0 and samples[-1][2] <= samples[-1][3]
    assert oselproc.cpu_seconds(2**22 + 12345) is None  # above the kernel's pid_max


def test_each_consumer_row_says_how_much_cpu_it_used() -> None:
    rates = {
        "ceiling": {"sustained_rate": 20000.0, "cpu_cores": 0.97, "machine_busy": 0.58},
        "osel_sqlite": {
            "sustained_rate": 8000.0,
            "outcomes": {"ignored": 90},
            "cpu_cores": 0.941,
            "machine_busy": 0.624,
        },
        "oslo": {"sustained_rate": 2000.0},
    }
    page = report.markdown({"rates": rates})
    assert "(ceiling) | 20,000 |  | CPU 0.97 core(s), machine 58% busy |" in page
    assert "peak RSS —; CPU 0.94 core(s), machine 62% busy |" in page
    assert "| 2,000 |  | CPU not measured |" in page


async def test_the_step_breakdown_times_every_step_of_each_batch(tmp_path: Path) -> None:
    from bench import steps

    results = await steps.measure(batches=3, batch_size=200, groups=20)
    assert set(results) == {"mix", "relevant"}
    for measured in results.values():
        assert measured.neutron_calls == 0  # the inventory is warm
        for step in steps.STEPS:  # one figure per batch for every step
            assert len(measured.seconds[step]) == 3 and min(measured.seconds[step]) > 0, step
    assert results["mix"].changes == 60 and results["relevant"].changes == 600
    text = steps.table(results, 200)
    assert "| mix | 60 in 3 batches |" in text and "| relevant | 600 in 3 batches |" in text


async def test_the_group_cost_counts_every_address_of_the_group() -> None:
    from bench import groups

    cost = await groups.measure(ports=5, rules=3, changes=3)
    # five ports and port 0's floating IP; the cloud's two ingress rules and three more
    assert (cost.ports, cost.rules, cost.records_per_change) == (5, 5, 6)
    assert cost.neutron_calls == 0 and cost.median_ms > 0
    assert "| 5 | 5 | 6 |" in groups.table([cost])


def test_the_group_sizes_are_read_or_refused_with_an_example() -> None:
    import argparse

    from bench import groups

    assert groups._size("1000x200") == (1000, 200)
    for bad in ("1000", "ax2", "2x1"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"PORTSxRULES|3 ports"):
            groups._size(bad)
