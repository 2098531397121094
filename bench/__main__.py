"""`python -m bench`: run the benchmark, write var/bench/results.json and docs/performance.*"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import burst, machine, report, runs
from bench.mix import Cloud

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]
PARTS = ("rates", "postgresql", "halves", "latency", "burst", "rss")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--messages",
        type=int,
        default=150_000,
        help="messages per throughput run (default 150,000)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="throughput runs per consumer, interleaved; the median is kept",
    )
    p.add_argument(
        "--rss-messages",
        type=int,
        default=1_000_000,
        help="messages osel takes while its memory is sampled (default 1,000,000)",
    )
    p.add_argument("--latency-rate", type=float, default=20.0, help="changes per second")
    p.add_argument("--latency-seconds", type=float, default=60.0)
    p.add_argument("--groups", type=int, default=1000, help="security groups of the cloud")
    p.add_argument(
        "--quick",
        action="store_true",
        help="small counts for development (20,000 / 100,000 messages, one repeat)",
    )
    p.add_argument("--skip", default="", help=f"comma-separated parts to skip: {','.join(PARTS)}")
    p.add_argument("--profile", type=Path, help="py-spy osel's first throughput run into this file")
    p.add_argument("--results", type=Path, default=ROOT / "var" / "bench" / "results.json")
    p.add_argument(
        "--docs",
        type=Path,
        default=ROOT / "docs",
        help="where performance.md and performance.png are written",
    )
    p.add_argument("--no-docs", action="store_true", help="write only the results file")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: write the docs again from the results file",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.messages, args.rss_messages, args.repeat = 20_000, 100_000, 1
        args.latency_seconds = 10.0
    unknown = {s for s in args.skip.split(",") if s} - set(PARTS)
    if unknown:
        p.error(f"--skip: unknown part(s) {', '.join(sorted(unknown))}")
    return args


def _median_run(runs_: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose sustained rate is the median one, with every rate attached."""
    rates = [r["sustained_rate"] for r in runs_ if r.get("sustained_rate")]
    if not rates:
        return runs_[0]
    median = statistics.median_low(rates)
    chosen = dict(next(r for r in runs_ if r.get("sustained_rate") == median))
    chosen["all_sustained_rates"] = rates
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.report_only:
        saved: dict[str, Any] = json.loads(args.results.read_text())
        saved["targets"] = report.targets(saved)
        report.write(saved, args.docs)
        log.info("wrote %s and %s", args.docs / "performance.md", args.docs / "performance.png")
        return 0
    logging.getLogger("pika").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    skip = {s for s in args.skip.split(",") if s}
    base = Path(tempfile.mkdtemp(prefix="osel-bench-"))
    cloud = Cloud(args.groups, 4)
    results: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "arguments": {
            k: v if isinstance(v, int | float | str | bool) else str(v)
            for k, v in vars(args).items()
        },
        "machine": machine.describe(),
        "cloud": {"groups": cloud.groups, "ports_per_group": cloud.ports},
    }
    try:
        if "rates" not in skip:
            results["rates"] = rates(args, cloud, base, skip)
        if "halves" not in skip:
            results["halves"] = halves(args, cloud, base)
        if "latency" not in skip:
            log.info("latency: %g changes/s for %gs at window 0", args.latency_rate,
                     args.latency_seconds)  # fmt: skip
            results["latency"] = runs.latency(
                Cloud(20, 4), runs.workdir(base, "latency"), args.latency_rate,
                args.latency_seconds,
            )  # fmt: skip
            log.info("latency: %s", _short(results["latency"]))
        if "burst" not in skip:
            if burst.stack_answers():
                log.info("burst: real changes on the local Neutron")
                results["burst"] = burst.burst(runs.workdir(base, "burst"))
                log.info("burst: %s", _short(results["burst"]))
            else:
                log.warning("burst skipped: the local Keystone + Neutron does not answer "
                            "(bash scripts/openstack/stack.sh up)")  # fmt: skip
        if "rss" not in skip:
            log.info("rss: %d messages", args.rss_messages)
            results["rss"] = runs.rss(cloud, args.rss_messages, runs.workdir(base, "rss"))
            log.info("rss: %s", _short(results["rss"]))
    finally:
        results["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        results["targets"] = report.targets(results)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(_clean(results), indent=1, default=str))
        shutil.rmtree(base, ignore_errors=True)
    log.info("results: %s", args.results)
    if not args.no_docs:
        report.write(results, args.docs)
        log.info("wrote %s and %s", args.docs / "performance.md", args.docs / "performance.png")
    for name, target in results["targets"].items():
        log.info("%-22s %-8s %s", name, target["status"], target["measured"])
    return 0


OSEL_VARIANTS = {  # name: (store, scan.window_seconds, instances, intake + worker)
    "osel_sqlite": ("sqlite", 0.0, 1, False),
    "osel_postgresql": ("postgresql", 0.0, 1, False),
    "osel_sqlite_window60": ("sqlite", 60.0, 1, False),
    "osel_postgresql_x2": ("postgresql", 0.0, 2, False),
    "osel_sqlite_split": ("sqlite", 0.0, 1, True),
}


def rates(args: argparse.Namespace, cloud: Cloud, base: Path, skip: set[str]) -> dict[str, Any]:
    """The consumers on the same pre-published load, interleaved, `repeat` times."""
    names = [
        "ceiling",
        "osel_sqlite",
        "oslo",
        "osel_postgresql",
        "osel_sqlite_window60",
        "osel_postgresql_x2",
        "osel_sqlite_split",
    ]
    if "postgresql" in skip:
        names = [name for name in names if "postgresql" not in name]
    found: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for i in range(args.repeat):
        for name in names:
            log.info("throughput %d/%d: %s, %d messages", i + 1, args.repeat, name, args.messages)
            if name == "ceiling":
                result = runs.ceiling_rate(cloud, args.messages)
            elif name == "oslo":
                result = runs.oslo_rate(cloud, args.messages)
            else:
                store, window, instances, split = OSEL_VARIANTS[name]
                profile = args.profile if (i == 0 and name == "osel_sqlite") else None
                result = runs.osel_rate(
                    cloud,
                    args.messages,
                    runs.workdir(base, f"{name}-{i}"),
                    store,
                    profile=profile,
                    window=window,
                    instances=instances,
                    split=split,
                )
            log.info("  %s", _short(result))
            found[name].append(result)
    return {name: _median_run(found_runs) for name, found_runs in found.items()}


def halves(args: argparse.Namespace, cloud: Cloud, base: Path) -> dict[str, Any]:
    """osel (SQLite, window 0) on each half of the mix alone, once each: where its
    time goes, the messages it ignores or the ones it acts on."""
    found: dict[str, Any] = {}
    for half, count in (("ignored", args.messages), ("relevant", max(1, args.messages // 10))):
        log.info("half of the mix: osel on %d %s messages alone", count, half)
        found[half] = runs.osel_rate(
            cloud, count, runs.workdir(base, f"half-{half}"), "sqlite", half=half
        )
        log.info("  %s", _short(found[half]))
    return found


def _short(result: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in result.items()
        if not isinstance(v, list | dict)
    )


def _clean(value: Any) -> Any:
    """NaN (a figure that could not be measured) as null: the file stays valid JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
