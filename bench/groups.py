"""`python -m bench.groups`: what one rule change costs on a large security group.

A rule created in a group reaches every address of every port in it, and each
of those addresses is judged against every rule of the port's groups, before
and after. Here, in one process and without the broker, the daemon's own
``process`` takes rule creates on one group of a synthetic cloud, one change
per batch, on a SQLite store holding the cloud as a warm inventory; the group
has the ports asked for and, beside the cloud's own, the rules asked for (each
admitting its own TCP port from its own /32). The median time per change is
reported with the audit records it wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.mix import CYCLE, EVENT_OF, PROJECT, Cloud, Mix, _uid
from bench.oselproc import warm_store
from bench.steps import NoNeutron, _settings
from osel.daemon import Daemon
from osel.model import Rule
from osel.pipeline import Item

SIZES = ("4x0", "100x20", "100x200", "1000x50", "1000x200")


@dataclass
class GroupCost:
    ports: int
    rules: int  # the group's ingress rules before the changes
    records_per_change: float
    median_ms: float
    neutron_calls: int


def extra_rules(cloud: Cloud, count: int) -> list[Rule]:
    sg = cloud.group_id(0)
    return [
        Rule(_uid("extra-rule", i), sg, "ingress", "IPv4", "tcp", 20000 + i, 20000 + i,
             f"203.0.{i // 250}.{i % 250}/32", project_id=PROJECT)
        for i in range(count)
    ]  # fmt: skip


def rule_creates(mix: Mix, count: int) -> list[Item]:
    """`count` rule creates on group 0 of the mix's cloud (`Mix.relevant` takes group
    n % groups and step n // groups of its cycle, whose first step creates a rule)."""
    groups = mix.cloud.groups
    items = []
    for cycle in range(count):
        message = mix.relevant(cycle * len(CYCLE) * groups)
        assert message.event_type == EVENT_OF[CYCLE[0]] == "security_group_rule.create.end"
        items.append(Item(message.body))
    return items


async def measure(ports: int, rules: int, changes: int = 12) -> GroupCost:
    cloud = Cloud(2, ports)
    with tempfile.TemporaryDirectory(prefix="osel-bench-groups-") as workdir:
        url = f"sqlite:///{workdir}/osel.db"
        await asyncio.to_thread(warm_store, url, cloud, extra_rules(cloud, rules))
        ingress = rules + sum(1 for r in cloud.base_rules(0) if r.direction == "ingress")
        neutron = NoNeutron()
        daemon = Daemon(_settings(Path(workdir), url), neutron=neutron)
        seconds, records = [], 0
        try:
            await daemon.prepare(initial_sync=False)
            for item in rule_creates(Mix(cloud), changes):
                started = time.perf_counter()
                stats = await daemon.process([item])
                seconds.append(time.perf_counter() - started)
                records += stats.records
        finally:
            await daemon.store.close()
    # the first change of a fresh process also warms its caches: not counted
    return GroupCost(
        ports, ingress, records / changes, statistics.median(seconds[1:]) * 1e3, neutron.calls
    )


def table(costs: list[GroupCost]) -> str:
    lines = [
        "| ports in the group | its ingress rules | audit records per change |"
        " ms per rule create (median) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {c.ports:,} | {c.rules:,} | {c.records_per_change:,.0f} | {c.median_ms:,.1f} |"
        for c in costs
    ]
    return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
    try:
        ports, rules = (int(part) for part in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not PORTSxRULES, such as 1000x200 (ports in the group x extra rules)"
        ) from None
    if ports < 3 or rules < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a group needs 3 ports or more")
    return ports, rules


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.groups", description=__doc__)
    p.add_argument(
        "sizes", nargs="*", type=_size, default=[_size(s) for s in SIZES],
        help=f"PORTSxRULES: ports in the group x extra rules (default {' '.join(SIZES)})",
    )  # fmt: skip
    p.add_argument("--changes", type=int, default=12, help="rule creates per size")
    args = p.parse_args(argv)
    costs = [asyncio.run(measure(ports, rules, args.changes)) for ports, rules in args.sizes]
    print(table(costs))
    if any(c.neutron_calls for c in costs):
        raise SystemExit("the inventory was not warm: Neutron was asked")


if __name__ == "__main__":
    main()
