"""`python -m bench.steps`: where a batch's time goes, without the broker.

In one process, the daemon's own objects (``Daemon.process``, the scan
scheduler's ``tick``, the outbox's delivery to a JSONL file) are driven batch
after batch over the benchmark's mix, then over its relevant half alone, on a
SQLite store holding the warm inventory, with a dry-run scanner at window 0.
Each step is timed per batch (median over the batches); the handling and the
commit inside ``process`` are timed too. What the broker costs (reading and
acknowledging frames) is not in these figures: the throughput table has it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.mix import Cloud, Mix
from bench.oselproc import warm_store
from osel.config import Settings
from osel.daemon import Daemon
from osel.neutron import OfflineNeutron
from osel.pipeline import Item

STEPS = ("process", "handling", "commit", "scheduler", "outbox")


class NoNeutron(OfflineNeutron):
    """osel's offline Neutron, counting what is asked of it: with a warm inventory no
    change should ask anything."""

    def __init__(self) -> None:
        self.calls = 0

    async def _no(self) -> None:
        self.calls += 1
        await super()._no()


@dataclass
class Steps:
    """Seconds each step took, one entry per batch."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})
    changes: int = 0
    neutron_calls: int = 0

    def median_ms(self) -> dict[str, float]:
        return {s: statistics.median(v) * 1e3 for s, v in self.seconds.items() if v}


def _timing(into: list[float], call: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await call(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - started)

    return timed


def _settings(workdir: Path, url: str) -> Settings:
    return Settings.model_validate(
        {
            "scan": {"backend": "dry-run", "window_seconds": 0},
            "store": {"url": url},
            "audit": {"sinks": [{"type": "file", "path": str(workdir / "audit.jsonl")}]},
            "openstack": {"resync_minutes": 0},
            "http": {"enabled": False},
        }
    )


async def drive(workdir: Path, cloud: Cloud, items: list[Item], batch_size: int) -> Steps:
    """Run `items` through a fresh daemon, batch by batch, timing each step."""
    url = f"sqlite:///{workdir}/osel.db"
    await asyncio.to_thread(warm_store, url, cloud)
    neutron = NoNeutron()
    daemon = Daemon(_settings(workdir, url), neutron=neutron)
    steps = Steps()
    try:
        await daemon.prepare(initial_sync=False)
        # the handling and the commit, timed where Daemon.process calls them
        pipeline_process = daemon.pipeline.process
        store_commit = daemon.store.commit
        daemon.pipeline.process = _timing(steps.seconds["handling"], pipeline_process)  # type: ignore[method-assign]
        daemon.store.commit = _timing(steps.seconds["commit"], store_commit)  # type: ignore[method-assign]
        sink = daemon.outbox.sinks[0]
        for start in range(0, len(items), batch_size):
            t0 = time.perf_counter()
            stats = await daemon.process(items[start : start + batch_size])
            t1 = time.perf_counter()
            await daemon.scheduler.tick()
            t2 = time.perf_counter()
            await daemon.outbox.drain_once(sink)
            t3 = time.perf_counter()
            steps.seconds["process"].append(t1 - t0)
            steps.seconds["scheduler"].append(t2 - t1)
            steps.seconds["outbox"].append(t3 - t2)
            steps.changes += stats.outcomes["recorded"]
    finally:
        await daemon.store.close()
    steps.neutron_calls = neutron.calls
    return steps


async def measure(batches: int, batch_size: int, groups: int) -> dict[str, Steps]:
    cloud = Cloud(groups)
    mix = Mix(cloud)
    count = batches * batch_size
    streams = {
        "mix": [Item(m.body) for m in mix.stream(count)],
        "relevant": [Item(m.body) for m in mix.relevant_stream(count)],
    }
    out = {}
    for name, items in streams.items():
        with tempfile.TemporaryDirectory(prefix="osel-bench-steps-") as workdir:
            out[name] = await drive(Path(workdir), cloud, items, batch_size)
    return out


def table(results: dict[str, Steps], batch_size: int) -> str:
    lines = [
        f"| stream | changes | {' | '.join(STEPS)} (ms per batch of {batch_size:,}) |"
        " microseconds per change, all steps |",
        "|---|---|" + "---|" * len(STEPS) + "---|",
    ]
    for name, steps in results.items():
        ms = steps.median_ms()
        batches = len(steps.seconds["process"])
        total = sum(sum(steps.seconds[s]) for s in ("process", "scheduler", "outbox"))
        per_change = total / steps.changes * 1e6 if steps.changes else float("nan")
        lines.append(
            f"| {name} | {steps.changes:,} in {batches} batches | "
            + " | ".join(f"{ms.get(s, float('nan')):.1f}" for s in STEPS)
            + f" | {per_change:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.steps", description=__doc__)
    p.add_argument("--batches", type=int, default=30, help="batches per stream (default 30)")
    p.add_argument("--batch-size", type=int, default=1000, help="messages per batch")
    p.add_argument("--groups", type=int, default=1000, help="security groups of the cloud")
    args = p.parse_args(argv)
    results = asyncio.run(measure(args.batches, args.batch_size, args.groups))
    print(table(results, args.batch_size))
    calls = {name: s.neutron_calls for name, s in results.items()}
    if any(calls.values()):
        raise SystemExit(f"the inventory was not warm: Neutron was asked {calls}")


if __name__ == "__main__":
    main()
