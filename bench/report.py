"""docs/performance.md and docs/performance.png from the benchmark's results."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

TARGETS = {
    "vs_ceiling": 0.5,
    "vs_oslo": 5.0,
    "latency_p99_ms": 200.0,
    "neutron_calls_per_change": 0.2,
    "rss_peak_mib": 150.0,
    "rss_growth": 1.10,  # "flat": the last tenth's median within 10% of the first tenth's
}
LABELS = {
    "ceiling": "pika, decode only, 1 ack / 200 (ceiling)",
    "osel_sqlite": "osel (SQLite store, dry-run scanner)",
    "osel_postgresql": "osel (PostgreSQL store, dry-run scanner)",
    "oslo": "oslo.messaging notification listener",
    "osel_sqlite_window60": "osel (SQLite store, scan window 60 s)",
    "osel_postgresql_x2": "osel, two instances (one PostgreSQL store, one queue)",
    "osel_sqlite_split": "osel, intake and worker in two processes (one SQLite store)",
}


def _num(value: Any) -> float | None:
    if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
        return float(value)
    return None


def _rate(results: dict[str, Any], name: str) -> float | None:
    return _num(results.get("rates", {}).get(name, {}).get("sustained_rate"))


def _status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "FAIL")


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target with what was measured and pass / FAIL / n/a (not measured)."""
    out: dict[str, dict[str, Any]] = {}
    osel, ceiling, oslo = (_rate(results, n) for n in ("osel_sqlite", "ceiling", "oslo"))
    ratio = osel / ceiling if osel and ceiling else None
    out["osel >= 0.5x ceiling"] = {
        "measured": f"{ratio:.2f}x" if ratio else "not measured",
        "status": _status(None if ratio is None else ratio >= TARGETS["vs_ceiling"]),
    }
    ratio = osel / oslo if osel and oslo else None
    out["osel >= 5x oslo"] = {
        "measured": f"{ratio:.2f}x" if ratio else "not measured",
        "status": _status(None if ratio is None else ratio >= TARGETS["vs_oslo"]),
    }
    p99 = _num(results.get("latency", {}).get("p99_ms"))
    out["p99 <= 200 ms"] = {
        "measured": f"{p99:.0f} ms" if p99 is not None else "not measured",
        "status": _status(None if p99 is None else p99 <= TARGETS["latency_p99_ms"]),
    }
    calls = _num(results.get("burst", {}).get("neutron_calls_per_change"))
    out["<= 0.2 Neutron calls/change"] = {
        "measured": f"{calls:.3f}" if calls is not None else "not measured",
        "status": _status(None if calls is None else calls <= TARGETS["neutron_calls_per_change"]),
    }
    rss = results.get("rss", {})
    peak, growth = _num(rss.get("peak_rss_mib")), _num(rss.get("growth"))
    ok = None
    if peak is not None and growth is not None:
        ok = peak <= TARGETS["rss_peak_mib"] and growth <= TARGETS["rss_growth"]
    out["RSS flat, <= 150 MB"] = {
        "measured": (
            f"peak {peak:.0f} MiB, last/first tenth {growth:.2f}"
            if peak is not None and growth is not None
            else "not measured"
        ),
        "status": _status(ok),
    }
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name, label in LABELS.items():
        run = results.get("rates", {}).get(name)
        if not run or not run.get("series"):
            continue
        xs = [t for t, _r in run["series"]]
        ys = [r for _t, r in run["series"]]
        rate = run.get("sustained_rate") or 0
        left.plot(xs, ys, label=f"{label}: {rate:,.0f}/s")
    left.set_title(f"Draining {results.get('rates', {}).get('ceiling', {}).get('messages', 0):,} "
                   "pre-published messages (90% ignored types)")  # fmt: skip
    left.set_xlabel("seconds since the first delivery")
    left.set_ylabel("messages acknowledged / s (1 s window)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    rss = results.get("rss", {})
    if rss.get("series"):
        right.plot([t for t, _v in rss["series"]], [v for _t, v in rss["series"]], color="C3")
        right.axhline(TARGETS["rss_peak_mib"], color="grey", linestyle="--", label="150 MiB")
        right.set_title(f"osel resident memory over {rss.get('messages', 0):,} messages")
        right.legend(fontsize=8, loc="lower right")
        peak = _num(rss.get("peak_rss_mib")) or 0
        right.set_ylim(0, max(TARGETS["rss_peak_mib"], peak) * 1.15)
    right.set_xlabel("seconds")
    right.set_ylabel("VmRSS (MiB)")
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _f(value: Any, fmt: str = ",.0f", unit: str = "") -> str:
    number = _num(value)
    return "—" if number is None else f"{number:{fmt}}{unit}"


def markdown(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    rates = results.get("rates", {})
    lat = results.get("latency", {})
    burst = results.get("burst", {})
    rss = results.get("rss", {})
    args = results.get("arguments", {})
    lines = [
        "# Performance",
        "",
        "Written by `make bench` (`python -m bench`, sources in [bench/](../bench/)) from "
        f"its run of {results.get('started_at', '?')} to {results.get('finished_at', '?')}. "
        "Every figure below was measured in that one run, except in the closing section "
        "[What limits osel](#what-limits-osel), which says where its figures come from. "
        "The raw results are in `var/bench/results.json`.",
        "",
        "![throughput and memory](performance.png)",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    for name, target in results.get("targets", {}).items():
        lines.append(f"| {name} | {target['measured']} | {target['status']} |")
    lines += ["", *_summary(results)]
    lines += [
        "",
        "## Machine",
        "",
        f"{m.get('cpus', '?')} CPUs ({m.get('cpu_model', '?')}), "
        f"{m.get('memory_gib', '?')} GiB, Linux {m.get('kernel', '?')}, "
        f"Python {m.get('python', '?')}, RabbitMQ {m.get('rabbitmq', '?')}, "
        f"PostgreSQL {m.get('postgresql', '?')}, SQLite {m.get('sqlite', '?')}. "
        f"Load average when the run started: {m.get('load_average_at_start', '?')}. "
        "The machine is shared: other test suites may run beside the benchmark, so "
        "each throughput figure is the median of interleaved runs and the ratios compare "
        "runs made minutes apart.",
        "",
        "## Throughput on the mix",
        "",
        f"{_f(args.get('messages'))} messages are published to a queue with osel (or the "
        "other consumer) stopped, then the consumer is started and the queue's depth is "
        "sampled every 50 ms (passive declare). The rate is the slope between 10% and 90% "
        "of the queue drained (the steady part; the drain and the tail are in the plot). "
        f"Each consumer ran {args.get('repeat', '?')} time(s), interleaved; the median is kept.",
        "",
        "The mix is the real Neutron 29 notifications of `tests/data/neutron-29`: 90% "
        "event types osel ignores (network, subnet, router, `*.start`, ...) with their real "
        "bodies and sizes (1.2 to 2.0 kB), 10% security-group-rule creates and deletes, port "
        "creates, updates and deletes, and floating-IP attach/detach built from the sample "
        "bodies of their type, each a distinct valid change against a synthetic cloud of "
        f"{results.get('cloud', {}).get('groups', '?')} security groups of "
        f"{results.get('cloud', {}).get('ports_per_group', '?')} ports with floating IPs "
        "that is written into osel's store before it starts (warm inventory: no change "
        "needs Neutron; `inventory misses` below says whether one did).",
        "",
        "| consumer | messages/s | runs (messages/s) | notes |",
        "|---|---|---|---|",
    ]
    for name, label in LABELS.items():
        run = rates.get(name)
        if not run:
            continue
        all_rates = ", ".join(f"{r:,.0f}" for r in run.get("all_sustained_rates", []))
        notes = _cpu(run)
        if name.startswith("osel"):
            batches = _num(run.get("batches")) or 0
            busy = _num(run.get("batch_seconds_total")) or 0
            drain = _num(run.get("first_delivery_to_all_committed_seconds")) or 0
            outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(run.get("outcomes", {}).items()))
            notes = (
                f"{outcomes}; {batches:,.0f} batches, {busy / batches * 1000 if batches else 0:.0f}"
                f" ms each in process+commit ({busy / drain * 100 if drain else 0:.0f}% of the "
                f"drain); inventory misses {_f(run.get('inventory_misses'))}; peak RSS "
                f"{_f(run.get('peak_rss_mib'), '.0f', ' MiB')}; {notes}"
            )
        lines.append(f"| {label} | {_f(run.get('sustained_rate'))} | {all_rates} | {notes} |")
    lines += [
        "",
        "- **osel**: the real `osel run` process (`bench/oselproc.py` writes its "
        "configuration): its own durable queue, default batch size and prefetch, the store "
        "named, `scan.backend: dry-run`, `scan.window_seconds: 0` (so the scheduler forms and "
        "launches batches during the drain), a JSONL audit sink, `/metrics` on. The targets "
        "use the SQLite run; the run with the default window of 60 s (no scan batch is "
        "formed during the drain) shows what the scheduler's work at window 0 costs. "
        "The two-instance run starts two such processes on the same queue and the same "
        "PostgreSQL store (how osel scales out, [deploying](deploying.md)); its batch "
        "counts and times add up both instances (so their time can pass 100% of the "
        "drain), its peak RSS is the first instance's. On this machine both share its "
        "two cores with the broker and PostgreSQL, so it shows the overhead of sharing "
        "more than the gain of a second machine. The intake-and-worker run starts one "
        "process with `service.role: intake` (it consumes, handles and commits) and one "
        "with `service.role: worker` (it forms and launches the scan batches and delivers "
        "the audit trail, polling the store every 0.2 s at window 0) on the same SQLite "
        "file ([deploying](deploying.md#an-intake-and-a-worker)); its CPU counts both "
        "processes, its batches and peak RSS are the intake's.",
        "- **CPU**: the consumer's CPU time (every thread of its process, both "
        "processes for two instances, from `/proc`) per second of the steady part of the "
        "drain, in cores, and how busy the machine's CPUs were meanwhile, all of them and "
        "whoever used them (the broker, PostgreSQL, the benchmark's own sampling). A "
        "Python process runs one thread at a time: one that uses about one core is bound "
        "by its own interpreter, however idle the rest of the machine is.",
        "- **ceiling**: `bench/ceiling.py`, a blocking pika consumer, prefetch 1000, that "
        "decodes the envelope and the inner JSON and sends one `basic.ack(multiple)` per 200 "
        "messages: what one Python process can take from this broker.",
        "- **oslo.messaging**: `bench/oslo_listener.py`, as Ceilometer's notification agent "
        "consumes: `get_batch_notification_listener` with the threading executor, "
        "Ceilometer's default batch size (1) and pool (64 threads), and one endpoint whose "
        "`info` only counts, on the queue oslo.messaging declares for the topic. (The plain "
        "`get_notification_listener`, used here before, drained at the same rate; with a "
        "batch size of 100, about 1.3x faster.)",
        "",
        *_halves(results.get("halves")),
        "## Publish to scan request, window 0",
        "",
        f"{_f(lat.get('changes_published'))} changes (every kind of the mix) published at "
        f"{_f(lat.get('rate_per_second'), 'g')}/s to a running osel with "
        "`scan.window_seconds: 0` and no cool-down. For each change, from the moment it "
        "was published to the commit of the dry-run scan batch covering it in the state "
        "`launched` (`scan_batches.updated_at`; the backend's launch call is just before "
        f"that commit). {_f(lat.get('changes_scanned'))} changes led to a scan.",
        "",
        "| p50 | p90 | p99 | max |",
        "|---|---|---|---|",
        f"| {_f(lat.get('p50_ms'), '.0f', ' ms')} | {_f(lat.get('p90_ms'), '.0f', ' ms')} | "
        f"{_f(lat.get('p99_ms'), '.0f', ' ms')} | {_f(lat.get('max_ms'), '.0f', ' ms')} |",
        "",
        "With a window of 0 the scheduler is woken by every commit that queued scan targets "
        "(otherwise it polls every 0.2 s).",
        "",
        "## Neutron calls in a burst",
        "",
    ]
    if burst:
        lines += [
            "osel consumes its own queue bound to the real `neutron` exchange of the local "
            "Keystone + Neutron, with a fresh store (it loads the inventory from Neutron at "
            f"start: {_f(burst.get('initial_sync_calls'))} requests, not counted). A project "
            f"user then made {_f(burst.get('api_changes_made'))} changes as fast as the API "
            f"answered ({_f(burst.get('burst_seconds'), '.1f', ' s')}): a network, two "
            "security groups, ports, rule creates, port updates, rule deletes and the "
            "clean-up. Every HTTP request osel sent was counted (`bench/counted.py` wraps "
            "`requests.Session.send` and then runs the ordinary `osel` command line).",
            "",
            "| relevant changes processed | Neutron requests | Keystone requests | per change |",
            "|---|---|---|---|",
            f"| {_f(burst.get('relevant_changes_processed'))} | "
            f"{_f(burst.get('neutron_calls'))} | {_f(burst.get('keystone_calls'))} | "
            f"{_f(burst.get('neutron_calls_per_change'), '.3f')} |",
            "",
            "Changes made by other users of the same Neutron meanwhile are processed and "
            "counted too.",
        ]
    else:
        lines.append("Not measured in this run (the local Keystone + Neutron did not answer).")
    lines += [
        "",
        "## Memory over a long run",
        "",
    ]
    if rss:
        lines += [
            f"osel took {_f(rss.get('messages'))} messages of the mix "
            f"({_f(rss.get('seconds'), '.0f', ' s')}), published in chunks so that the "
            "queue stays under 150,000; its VmRSS was read every second. Right after it "
            f"started (libraries loaded, warm inventory of the cloud) it held "
            f"{_f((rss.get('series') or [(0, math.nan)])[0][1], '.0f', ' MiB')}.",
            "",
            "| peak | median, first tenth | median, last tenth | last / first |",
            "|---|---|---|---|",
            f"| {_f(rss.get('peak_rss_mib'), '.0f', ' MiB')} | "
            f"{_f(rss.get('first_tenth_median_mib'), '.0f', ' MiB')} | "
            f"{_f(rss.get('last_tenth_median_mib'), '.0f', ' MiB')} | "
            f"{_f(rss.get('growth'), '.2f')} |",
            "",
            '"Flat" means the median of the last tenth of the samples is within 10% of the '
            "first tenth's. VmRSS is counted in KiB; the 150 MB target is read as 150 MiB "
            f"(the peak is {_f((_num(rss.get('peak_rss_mib')) or math.nan) * 1.048576, '.0f')} "
            "MB in millions of bytes).",
        ]
    else:
        lines.append("Not measured in this run.")
    minutes = _minutes(results)
    running = [line.replace("{minutes}", minutes) for line in RUNNING]
    lines += ["", "## What limits osel", "", *LIMITS, "", "## Running it", "", *running, ""]
    return "\n".join(lines)


LIMITS = [
    "Unlike the sections above, this one is written by hand: its figures come from "
    "separate runs on machines of this kind (2 cores, November 2026) that took the "
    "process apart, and a new run of the benchmark does not update them. The machine "
    "is shared, and it is not always the same one: its CPU model and speed change "
    "from one day, or one hour, to the next (the ceiling consumer measured from about "
    "11,300 to 35,600 messages/s), so the comparisons below are between runs "
    "interleaved within the hour.",
    "",
    "The broker side is not the limit: the ceiling consumer takes the same messages "
    "several times faster, osel sends one `basic.ack(multiple)` per batch of up to "
    "`service.batch_size` (1,000) messages after its one commit, recognises bodies of "
    "ignored event types without decoding them, and a batch of only those never touches "
    "the store.",
    "",
    "osel is bound by CPU in one process. Sampled from `/proc` every second of a "
    "150,000-message drain of the mix, the process used 90-99% of one core throughout: "
    "Python runs one thread at a time, so the event loop and SQLite's worker threads "
    "share that core (in a 100,000-message drain sampled per thread, the event loop "
    "0.6-0.7 of a core and SQLite's three threads about 0.25 together, while RabbitMQ "
    "used 0.2-0.3 of the other core to deliver). [Each half of the mix "
    "alone](#each-half-of-the-mix-alone) shows the two costs, measured in the run: a "
    "relevant notification costs 13 to 16 times an ignored one (two runs of the day), "
    "and makes on average "
    "2.9 audit records of about 1.5 kB of JSON, 2.3 scan targets and 2.5 new "
    "exposure-window rows, each written, indexed and later updated or read back for the "
    "sinks; on the mix the relevant tenth is about two thirds of the time. Where the "
    "interpreter's time goes (py-spy `--gil` over a drain of the mix): pika reading "
    "frames about 14%, recognising and decoding messages about 10%, handling and the "
    "decision about 15%, the commit about 14% (the records' JSON 6%, the exposure "
    "windows 6%), the scan scheduler at window 0 about 8%, SQLAlchemy running the "
    "queries about 8%."
    " In the relevant half alone (15,000 changes, a day the machine ran at about half "
    "speed), the event loop's thread used 77% of the process's CPU and SQLite's three "
    "threads the rest (20.1 and 5.5 CPU-seconds, from `/proc/<pid>/task`); in that "
    "thread about 30% of the time (py-spy) was then the exposure-window bookkeeping: "
    "the decision emitted an open for every permit in effect on each address it "
    "touched, not only the new ones, and the commit read back every open window of "
    "those addresses to compare (see below).",
    "",
    "A rule change costs in proportion to the group it changes: it writes one audit "
    "record for every address of every port in the group. `python -m bench.groups` "
    "times rule creates on one group of the benchmark's cloud, in one process on "
    "SQLite, one change per batch (medians of 11; November 30, 15:18 UTC, a slow "
    "hour): with 4 ports and 2 ingress rules 10.4 ms a change, 100 ports and 22 "
    "rules 16.6 ms, 100 and 202 16.1 ms, 1,000 ports and 52 rules 76.9 ms, 1,000 and "
    "202 81.3 ms (1,001 records each). The code before the change below, run right "
    "after: 10.8, 43.1, 191.8, 619.1 and 1,792.2 ms. Each address was judged against "
    "every rule of its port's groups, twice, and every permit in effect was written "
    "as a window operation and read back, so the cost grew with ports times rules.",
    "",
    "What moved the rate, newest first. Exposure windows written only for what a "
    "change opens and closes, ports alike judged once per change, and the commit "
    "reading back only the open windows a change may name: in four interleaved pairs "
    "of 150,000 messages of the mix (a slow hour, 7,200-8,000 messages/s) new against "
    "old 1.06, 1.05, 1.03 and 1.00; in four pairs of the relevant half alone 1.23, "
    "1.42, 1.13 and 1.28; on a group of 1,000 ports and 202 rules, 1,792 ms a rule "
    "create before, 81 after. Python's garbage collector: with its default "
    "thresholds it ran about 13 full collections of some 100 ms each per 100,000 "
    "messages of the mix, each walking the whole inventory, which lives as long as the "
    "process (1.8 s of collection in 17.7 CPU-seconds); frozen out of the collections "
    "once loaded (`gc.freeze`) and with the youngest generation collected every 10,000 "
    "net allocations instead of 700, collection took 0.4 s and the rate went from "
    "6,692 to 7,913 messages/s (medians of three interleaved pairs); relevant messages "
    "alone took about 20% less CPU. SQLite's write lock: over the same drain it was "
    "held nearly all the time (the consumer's commits 3.7 s, the scan scheduler at "
    "window 0 6.5 s, the sinks' cursors 2.4 s, of about 13 s), and the commit had "
    "waited 2.4 s behind the others in all; the commit now goes first (+10% in the "
    "median of six interleaved pairs, +3% of seven more: small against the noise). "
    "Without the sinks and with nothing launched (`scan.window_seconds` 3600), the "
    "same drain ran at 10,700-12,000 messages/s against 7,900-8,800 with both, on one "
    "day: the scheduler and the sinks are about a third of the work on the mix at "
    "window 0, most of it the scheduler's. Less CPU per relevant change: addresses parsed "
    "with `inet_pton` (the cloud has more addresses than the old parse cache held), the "
    "records of a change built from one template, and the commit's bulk inserts sent "
    "through the driver's `executemany` without SQLAlchemy's per-row parameter "
    "processing; interleaved runs of the mix, 7,198 and 7,174 messages/s before, "
    "8,206 and 8,069 after. Encoding the records with orjson instead of the json "
    "module: relevant changes handled in one process took 458-511 microseconds each "
    "instead of 498-520 (three interleaved pairs); on the mix, within the noise. "
    "The AMQP client: aio-pika (aiormq underneath) runs a task "
    "and queue hand-offs for every frame it reads, pika's asyncio adapter calls one "
    "plain function per delivery; on a slow day, ignored messages drained alone went "
    "from 4,800-6,200 to about 11,200 messages/s and the mix from 2,900-3,100 to "
    "3,700-3,800. Before that, with the mix driven through the daemon's `process` in one "
    "process: writing the exposure windows of a commit in bulk, one UPDATE for the "
    "records of a launched scan batch, caching the permits of rules, and batches of "
    "1,000 instead of 200; the first run of this benchmark measured about 1,900 "
    "messages/s.",
    "",
    "Larger batches, measured on November 29 and not the default: batches of 3,000 with a"
    " prefetch of 6,000 drained 100,000 messages of the mix at 5,571, 5,378 and 5,135 "
    "messages/s against 4,579, 4,210 and 4,145 with the defaults (1,000 and 2,000), three"
    " interleaved pairs: 1.24x, about 0.48x the ceiling of that day's benchmark; a second"
    " set of three pairs an hour later gave 5,942, 4,944 and 4,948 against 4,283, 4,168 "
    "and 4,651 (pairwise median 1.19x). Batches of 2,000 with a prefetch of 4,000: 1.02x,"
    " within the noise. Each commit costs something of its own (the transaction, the "
    "scheduler's tick at window 0, the sinks reading what it wrote), and a batch of the "
    "mix holds about a hundred relevant changes. But the peak RSS over 1,000,000 messages"
    " went from 149 to 176 MiB (last/first tenth 1.15, with the development tools "
    "installed, see Memory below), past the memory target, so the "
    "defaults stay and "
    "[deploying](deploying.md#draining-a-backlog-batch-size-against-memory) gives the "
    "trade-off. (An earlier trial of batches of 3,000, on older code, had found no gain.)",
    "",
    "What did not: handling the next batch while the previous one commits, tried three "
    "times (with aio-pika, 5,400-5,900 messages/s either way; with pika, 6,054 and "
    "7,260 against 6,027 and 7,443 without; on November 29, with the prefetch raised "
    "to 4,000 so that the next batch is there, pairwise medians +0.8% and +6% over "
    "three pairs each). Over a 100,000-message drain (20.4 s) the event loop sat idle "
    "4.6 s, nearly all of it waiting for a worker thread (SQLite's, or the file sink's "
    "writes) and 0.1 s for RabbitMQ; handing it the next batch meanwhile did not turn "
    "that into rate. Nor did the consumer's commit run as one synchronous transaction "
    "in a worker thread, so that it does not come back to the event loop between its "
    "statements (+1%, three pairs), batches of 3,000 with the prefetch left at 2,000, "
    "the interpreter's thread switch interval (1, 5, 20 ms), or letting the event loop "
    "run other tasks every 50 or 200 messages while a batch is decoded and handled. "
    "Not writing a launched batch's id and state into the rows of its change records "
    "(two UPDATEs per batch, readers joining the scan tables instead) gained 8% "
    "(pairwise median of three): a change of schema and of what `osel` reads, not made. "
    "Queueing SQLite's writers in the process was kept: it removed busy-handler sleeps "
    "that delayed the sinks, without changing the rate. Two instances on one PostgreSQL "
    "store (the table above) share this machine's two cores with RabbitMQ and "
    "PostgreSQL; in a separate run of 100,000 messages (two pairs) they took 4,528 and "
    "4,251 messages/s against 3,876 and 3,532 for one: 1.19x. Reaching half the ceiling "
    "in one process at the default batch size needs the CPU per message of the mix "
    "nearly halved, most of it in the relevant tenth: fewer rows and index updates per "
    "change, or part of the work on the machine's other core (the sinks and the "
    "scheduler in a process of their own, which on SQLite means two processes sharing "
    "one writer, and here means taking CPU from the broker).",
    "",
    "On a fast day (November 29, the ceiling at about 29,300 messages/s) the ratio is "
    "lower than on a slow one (0.33x in two interleaved runs of 150,000 messages, "
    "against 0.39x the day before): the ceiling, C-accelerated decoding in one loop, "
    "gains more from a faster CPU than osel does. That day: ignored messages alone "
    "took 36-38 microseconds each, about the ceiling's 34, and relevant ones 401-434; "
    "without the scan scheduler at window 0 and without sinks (`scan.window_seconds` "
    "3600, `audit.sinks: []`) the mix drained 1.30x faster (pairwise 1.36 and 1.24), "
    "which is all of the difference between the mix and its halves, and still only "
    "about 0.45x that day's ceiling. Running the scheduler and the sinks in a second "
    "`osel run` on the same SQLite file (`amqp.enabled: false`), the first one "
    "consuming with neither, drained 1.16x faster than one process (pairwise 1.16, "
    "1.04 and 1.16) and had every record delivered and every target in a batch 1.17x "
    "sooner: the two processes share the machine's two cores with RabbitMQ and the "
    "SQLite writer between them. Waking the scheduler and the outbox at most once a "
    "second while the consumer is behind: 1.01x (three pairs); their cost comes with "
    "the records, not with how often they wake. `PRAGMA synchronous=NORMAL` on every "
    "connection, as an upper bound (it is not safe for the consumer's commits): 1.00x "
    "(four pairs); the commits' fsync is not what limits osel. Timing every SQLite "
    "call of a 100,000-message drain (11,041 messages/s) in its worker thread: the "
    "consumer's 3,700 calls executed 1.76 s and were waited for 3.93 s in all, the "
    "scheduler's 1,778 calls 1.86 s and 4.25 s, the outbox's 689 calls 1.48 s and "
    "3.31 s; the largest single items were the outbox reading records back (0.84 s), "
    "the scheduler's and the consumer's commits (0.59 and 0.55 s), and the UPDATE of "
    "the change records' learned columns (0.41 s). Batches of 3,000 sampled with "
    "py-spy (11,749 against 10,490 messages/s): the event loop's thread was busy as "
    "long as with 1,000 (1,039 and 1,069 samples) and idle less (403 against 627): "
    "larger batches gain by waiting less on SQLite's threads, not by computing less.",
    "",
    "On a slower machine (`make bench` of November 29, 10:21 UTC, on an AMD EPYC, "
    "where the fast run an hour before had an Intel Xeon; the ceiling at "
    "11,300-13,500 messages/s) the ratio is higher, "
    "0.41x, and the relevant tenth weighs less: ignored messages alone took 93 "
    "microseconds each (the ceiling 84), relevant ones 835, 9 times as much against "
    "12 on the fast machine. Record ids formatted from random bytes instead of "
    "building uuid4's UUID object, and store rows unpacked in the hot loops instead of "
    "read by attribute (a SQLAlchemy 2.1 row's attribute costs about 0.5 microseconds "
    "here, ten times an index), took 3% off the CPU time of relevant changes (0.967x, "
    "three interleaved pairs of 20,000) without moving the rate beyond the noise. "
    "Batches of 3,000 that hour, against the defaults, over three interleaved pairs of "
    "100,000 messages: with a prefetch of 6,000, rate 1.33x and CPU time 0.84x "
    "(pairwise 1.06 to 1.45: the machine's speed moved by a third between runs "
    "minutes apart); with a prefetch of 3,000, rate 1.05x and CPU time 0.98x. Over "
    "300,000 messages their peak RSS was 151-153 MiB with a prefetch of 6,000, "
    "144-147 with 3,000 and 139-141 with the defaults. Publish to scan request at 20 "
    "changes/s was p50 89 ms and p99 183 ms there (76 and 93 on the fast machine); "
    "at that rate a batch holds one or two changes, and after its first message it "
    "waits up to `service.batch_wait_ms` (50 ms) for more before it commits.",
    "",
    "Where a drain's time goes, timed inside the process on November 29 between 13:00 "
    "and 14:00 UTC (a machine that also reported an AMD EPYC, but where the ceiling "
    "took 27,300-28,000 messages/s and oslo.messaging 2,600-2,800; 100,000 messages of "
    "the mix, SQLite, window 0, about 100 batches of about 100 ms): handling a batch "
    "(recognising, decoding, deciding) took 38-42 ms, its commit 41-50 ms, 13-17 ms of "
    "them waiting for the write lock, and taking in the inventory log before handling "
    "(one query that finds nothing when osel runs alone) 16 ms. SQLite's write lock was "
    "held for the whole drain (11.1 of about 11 s): the consumer's commits 3.1 s, the "
    "scan scheduler's transactions at window 0 5.4 s (forming batches 1.4, taking them "
    "for launch 1.7, recording the launch 2.4), the sinks' cursor moves 2.5 s (27 ms "
    "each for a one-row UPDATE). Those holds are mostly waiting: each statement goes "
    "to SQLite's thread and comes back through the event loop, which meanwhile runs "
    "other steps (pika reading frames 2.6 s of its time, the consumer 4.1 s, the "
    "scheduler 0.6 s, the sinks 0.2 s). Yet the process stays at one core: after it "
    "connected it used 0.94-0.95 CPU-seconds per second (RabbitMQ 0.26-0.28, so most "
    "of the machine's second core was idle), the event loop's thread about 0.66 of a "
    "core and SQLite's three threads 0.27. Two structural changes were tried against "
    "the waiting, in three "
    "interleaved triples of 100,000 messages: handling the next batch while the "
    "previous one commits, 0.92x (8,681 against 9,440 messages/s, medians); that and "
    "the consumer's commit as one synchronous transaction on a thread of its own, "
    "through SQLite's own Python driver, so that it makes no trips through the event "
    "loop, 1.05x. Its thread took 0.23 of a core, the event loop 0.09 and SQLite's "
    "other threads 0.16 less (one run each), and the total stayed at about one core: "
    "the work moved between threads that take turns at the interpreter's lock instead "
    "of running beside each other. Neither was kept. Leaving out the inventory-log "
    "query altogether (not safe with several instances; only to bound what it costs): "
    "1.10x, pairwise 0.96 to 1.28. What did help: SQLite's write-ahead log copied back "
    "into the database every 10,000 pages instead of 1,000 "
    "([deploying](deploying.md#the-store)), 1.11x and 1.10x the rate and 0.95x and "
    "0.93x the CPU time in two sets of three interleaved pairs, every pair faster (in "
    "the second, 10,220-10,708 messages/s against 9,164-9,607): against that hour's "
    "ceiling and oslo.messaging, measured minutes apart and not in one run, about "
    "0.37x and 3.8x. What is left to gain is Python per message, or a second process.",
    "",
    "Two more, on November 29 between 15:30 and 16:00 UTC (the machine of the run "
    "above, where the ceiling took about 35,000 messages/s at 16:30), in three "
    "interleaved triples of 100,000 messages "
    "of the mix, neither kept: record ids cut from 4 KiB of `os.urandom` at a time "
    "instead of one call per id (an id took 6.7 microseconds inside the daemon "
    "against 1.7 in a loop, `os.urandom` alone 0.3 there; probably the call releases "
    "the interpreter's lock and waits to get it back), 12,645 messages/s against "
    "13,487 (median); and pika "
    "reading the socket "
    "16 KiB at a time instead of 4 (fewer reads, but each frame then copies more of "
    "the buffer), 12,176; the process's CPU time after it connected was 7.8 and "
    "7.8 seconds against 7.5, all within the noise. Batches of 3,000 with a prefetch "
    "of 6,000, again over "
    "1,000,000 messages that hour: peak RSS 166.5 MiB (first tenth 148.5, last "
    "165.1) against 141.5 with the defaults (130.6 and 140.0).",
    "",
    "On November 30 (a slower machine again: the ceiling at 12,200-14,600 "
    "messages/s, osel at about 5,300-6,400 in drains of 100,000 and 150,000 "
    "messages, about 0.42x), batches that count only the messages osel handles, "
    "so that a batch of the mix spans several times `service.batch_size` "
    "messages: with at most 3,000 and 5,000 messages in all and a prefetch of "
    "twice that, 1.14x and 1.19x the rate of batches of 1,000 (medians of three "
    "interleaved triples; that trial also took the inventory lock for batches of "
    "only ignored messages, which weighs more on smaller batches). But over "
    "1,000,000 messages the peak RSS was 163.1 MiB with 3,000, and not flat "
    "(first tenth 137.6, last 160.6), against 140.7 with the defaults: as with "
    "batches of 3,000 before, the memory goes with the changes a batch holds, "
    "not with the messages waiting for it. Not kept. Where that memory goes is "
    "still not found: in one process driving the daemon's `process` over 50,000 "
    "messages of the mix (no broker, no scheduler, no sinks), batches of 5,000 "
    "left the RSS 11 MiB above batches of 1,000 (+14 against +3 from the start), "
    "while Python's allocations at the peak of a commit of 500 changes were "
    "4.1 MiB (tracemalloc) and SQLite's own high-water mark 2.75 MiB "
    "(`sqlite3_memory_highwater`); the difference was in anonymous mappings of "
    "4 MiB or more, with `MALLOC_ARENA_MAX` 1 or 2, with `PYTHONMALLOC=malloc` "
    "as well, and `malloc_trim` after every batch did not lower the peak of the "
    "real daemon (152 against 150 MiB). Kept from that trial: the notifications "
    "osel ignores are recognised as they arrive and wait without their body "
    "(peak 3-6 MiB lower in seven interleaved pairs, the rate the same within "
    "the noise). At start, on that machine: the interpreter 20 MiB, osel's own "
    "imports 70 more (SQLAlchemy about 30, pydantic 13, httpx, FastAPI and the "
    "HTTP side about 13), openstacksdk 24, the benchmark's warm inventory 7 "
    "(Python's allocations) plus SQLite's caches.",
    "",
    "Later on November 30 (05:00-06:00 UTC, a fast machine again: the ceiling at "
    "26,400-27,600 messages/s), why doing more at once inside one process does not "
    "help. osel is bound by the interpreter's lock, not by a shortage of cores: over "
    "the steady part of each drain of the mix it used 0.91-0.94 CPU-seconds per "
    "second while the machine's two cores were 61-64% busy (the throughput table now "
    "gives both for every consumer; per thread, from `/proc`, the event loop 0.64-0.76 "
    "of a core and SQLite's threads about 0.25). The consumer's commit run beside the "
    "handling of the next batch, with the commit's bulk inserts made to run without "
    "the lock (one `INSERT ... SELECT ... FROM json_each(?)` per table, so that SQLite "
    "itself parses and inserts the rows): 1.05x and 1.00x in two interleaved pairs, the "
    "inserts alone 1.03x and 0.89x, the overlap alone 1.03x and 0.99x, and the process "
    "still at 0.94 of a core. That also explains the earlier trials of the overlap: "
    "Python's sqlite3 module gives up the lock around each row of an `executemany`, "
    "and while another thread runs Python the row waits for it to come back (the "
    "interpreter's switch interval, 5 ms): 3,000 audit rows took 67 ms alone and 13.8 "
    "s beside a thread running Python, against 94 and 112 ms through `json_each`. "
    "osel's serial order avoids that wait, and the SQLite work that runs without the "
    "lock is too small to gain from overlapping it. A switch interval of 0.2 ms: "
    "0.90x and 0.93x. Where the lock's time goes (py-spy `--gil`, 150,000 messages of "
    "the mix): pika reading frames 26%, the consumer's batches 34% (handling 23%, the "
    "commit 9%), the scan scheduler at window 0 5%, the sinks 3%. Kept from that hour, "
    "less Python per message: the notifications recognised as ignored counted in bulk "
    "and a batch's connection checked once (the ignored half 1.15x, three pairs, all "
    "faster); recognising a body from a set lookup after the event types' common "
    "ending and a compiled `\\u` check (2.8 instead of 4.0 microseconds per ignored "
    "body, 1.9 instead of 3.7 per handled one); deliveries and pipeline items as named "
    "tuples (0.6 instead of 1.4 microseconds each); handled notifications decoded with "
    "orjson, the json module for what it refuses (3.6 instead of 13.1 microseconds; "
    "the relevant half 1.08x, three pairs, all faster). Together, against the code of "
    "the morning, in three interleaved pairs of 150,000 messages of the mix: 1.10x "
    "(8,835 against 8,141 messages/s, pairwise 1.02-1.12); over 1,000,000 messages, "
    "two pairs, peak RSS 139.8-139.9 against 140.5-140.8 MiB and the last tenth "
    "1.074-1.084 times the first against 1.093-1.100. The flatness criterion (within "
    "10%) lies inside the spread between runs: the benchmark's own run of that hour "
    "read 1.11.",
    "",
    "Later on November 30 (08:40-10:10 UTC; osel at 6,000-8,400 messages/s on the "
    "mix, a slower hour than the run above), where a batch's time goes, from "
    "`python -m bench.steps` (the daemon's own objects driven batch after batch in "
    "one process, without the broker; medians over 30 batches, in three runs): per "
    "batch of 1,000 messages of the mix, the handling took 26-33 ms, the commit "
    "20-23, the scan scheduler's tick at window 0 19-25 and the delivery to the "
    "JSONL file 6-8; per batch of 1,000 changes of the relevant half, 165-225, "
    "205-228, 72-86 and 21-25 ms. Reading and acknowledging a message costs about "
    "36 microseconds (the ignored half's rate, above), 36 ms per 1,000. That adds "
    "up to the 100-110 ms per 1,000 messages of the mix the daemon takes on a fast "
    "machine; half the ceiling means about 75: a third off every step, not one step "
    "done away with. In the daemon the scheduler and the sinks run beside the "
    "consumer's batches, whose commits go first in the store's writer queue: on the "
    "relevant half alone they fall behind during the drain and catch up after it, "
    "which is why that half's rate is about its handling and commit alone. One "
    "cause of the growth in memory was found the same way (the RSS and Python's "
    "allocator statistics, `sys._debugmallocstats`, every 60 batches over 600,000 "
    "messages of the mix): two caches of 4,096 entries, of the permits of each rule "
    "judged and of whether a changed rule admits the Internet, were keyed by the "
    "rule itself, so they held on to deleted rules until they were full, after "
    "about 240,000 messages; that process grew from 114.3 to 121.8 MiB, and was "
    "flat only then. The inventory now keeps the permits beside each rule it holds, "
    "and a changed rule is judged once per change: 114.2 to 117.6 MiB, flat after "
    "60,000 messages. Over 1,000,000 messages in the benchmark's way, two "
    "interleaved pairs: peak 137.8 and 137.6 MiB against 141.9 and 142.8, the last "
    "tenth 1.052 and 1.069 times the first against 1.076 and 1.080. The rate, in "
    "nine interleaved pairs of 150,000 messages of the mix (orders new-old, old-new "
    "and ABBA, the machine slowing from 8,400 to 6,500 messages/s over the hour): "
    "new against old 0.83 to 1.07, median 0.96; in three pairs of 15,000 relevant "
    "messages 0.82, 0.85 and 0.98, while the steps above, timed in one process, "
    "show no difference between the two (the handling of 1,000 relevant changes 207 "
    "and 209 ms against 195 and 224). Kept for the memory; whether the daemon lost "
    "a few percent there is not settled.",
    "",
    "Memory: right after it starts, osel holds about 127 MiB (its libraries, "
    "SQLAlchemy about 40 and openstacksdk about 22 of them, and the warm inventory "
    "of the benchmark's cloud of 11,000 resources). Alembic was about 12 more of "
    "them: a start on a store whose schema is current now reads the revision "
    "itself and leaves Alembic unimported. Over the long run the resident size "
    "still grows, by about a tenth over 300,000 messages and slower after. Earlier "
    "attempts that did not find why: tracemalloc in the running daemon shows no "
    "Python allocation growing with the messages (the inventory's indexes did keep "
    "an empty entry for every port that ever had a floating IP: fixed, a few MiB "
    "per million messages); SQLite's page caches capped at 256 KiB per connection "
    "took 4-5 MiB off the peak but not the slope; capping glibc's malloc arenas "
    "(done) and fixing its thresholds (tried) neither; the change of AMQP client "
    "did not change it either. In separate runs of one day, over 500,000 messages "
    "of the mix (old and new interleaved): without Alembic the peak "
    "went from 164 and 166 MiB to 154 and 155 MiB. Where the rest grew, from "
    "`/proc/<pid>/smaps`: anonymous mappings (Python's object arenas and the "
    "malloc arena of SQLite's threads) from 77 to 92 MiB, glibc's main heap from "
    "34 to 40 MiB, the libraries flat at 22 MiB; with `PYTHONMALLOC=malloc` the "
    "heap grew from 104 to 120 MiB instead (peak 158 MiB, the drain 297 s instead "
    "of 220 s), so it is not particular to Python's allocator. Ignored messages "
    "alone (300,000) left the process flat at 120 MiB; only the relevant ones make "
    "it grow. One cause found: SQLite's prepared-statement cache, 128 statements "
    "per connection by default, where every length of an expanding IN list is a "
    "statement of its own; with 16 the same run peaked at 146 MiB with the last "
    "tenth 1.10 times the first (1.15-1.16 before), over 1,000,000 messages at 149 "
    "MiB (156 MB) with the last tenth 1.09 times the first, and 150,000-message "
    "drains of the mix took 3,516 and 3,270 messages/s against 3,274 and 3,509 "
    "before (interleaved, on a day the machine ran at less than half speed). The "
    "garbage collector's tuning (above) left the peak where it was: 137-139 MiB in "
    "each of the 100,000-message drains it was measured with, before and after. The "
    "benchmark runs osel in an environment with its own dependencies only, as an "
    "installation from the wheel has them (`uv run --no-dev --exact`): until November "
    "29 it also held the development tools, and structlog imports rich when it finds "
    "it. Over 1,000,000 messages, the same day, the peak was 150.2, 149.9 and 149.8 "
    "MiB with the tools installed, and 144.7, 143.9 and 142.6 MiB without them.",
    "",
    "On November 30 (12:10-12:30 UTC, the ceiling at about 27,000 messages/s), an "
    "intake and a worker in two processes (`service.role`, "
    "[deploying](deploying.md#an-intake-and-a-worker)), in five interleaved pairs of "
    "150,000 messages of the mix on SQLite at window 0: 13,410, 13,344, 13,746, 13,382 "
    "and 12,343 messages/s against 10,676, 10,995, 11,007, 11,413 and 10,933 for one "
    "process, 1.13x to 1.26x (median 1.21x), about 0.45x to 0.50x that hour's ceiling. "
    "The two processes together used 0.99 to 1.06 of a core, the worker about a tenth "
    "of one: the intake is still bound by the interpreter's lock, now with only "
    "reading, handling and committing to do. The worker, looking every 0.2 s, formed 86 "
    "to 88 scan batches where one process forms about 151 (one per commit), but forming "
    "fewer batches in one process (a tick at most every 0.2 s) gained nothing (10,581 "
    "and 11,277 against 11,413 and 10,933): the gain is the work moved off the "
    "consumer's core. The throughput table above has that deployment; the targets stay "
    "those of one process, as osel runs by default.",
    "",
    "Later on November 30 (20:50-21:50 UTC, the ceiling at 25,800-30,500 messages/s), "
    "two ways of running the same Python faster, neither kept. First, compiling osel "
    "with mypyc, the compiler that comes with mypy and turns annotated modules into C "
    "extensions. The six modules of the decision (model, decode, exposure, inventory, "
    "handlers, decide) compile as written and pass the unit tests but one. In `python "
    "-m bench.steps` the handling of a batch of 1,000 messages of the mix took 13.6-17.0 "
    "ms against 19.3-21.0, and of 1,000 relevant changes 77-91 ms against 101-121, the "
    "commit, the scheduler and the delivery unchanged; drains of 100,000 messages of the "
    "mix, five interleaved pairs: 1.07, 1.01, 1.08, 1.02 and 0.99 (median 1.02). The "
    "rest does not compile as written: the store (async generators, which mypyc does not "
    "implement), the policy (pydantic models: the generated C does not build), the AMQP "
    "adapter (an exception derived from `ConnectionError`), the outbox (a protocol "
    "checked at run time). The scheduler and the store's queries compile, but a compiled "
    "module checks its annotations as it runs, and SQLAlchemy returns `Row` objects where "
    "they say tuple: the scheduler failed on every tick, and a first measurement of "
    "1.16x was only that, the scheduler not running. A compiled module also checks a "
    "value taken from JSON where it is assigned, before the code's own check: a rule "
    "notification whose `security_group_rules` is not a list raised `TypeError` and was "
    "retried before quarantine, where osel as it is quarantines it at once as malformed. "
    "Were all of osel's own code a quarter faster, as the decision is, pika's frame reading, "
    "SQLAlchemy and SQLite would still take what they take now: about 1.1x at best. "
    "Second, newer interpreters, the standard builds on the machine, in three "
    "interleaved triples against CPython 3.11.7: 3.12.1 1.05, 1.04 and 0.89; 3.13.0 "
    "1.05, 1.14 and 1.00. A free-threaded build, in which SQLite's threads would run "
    "beside the event loop instead of taking turns with it, was not available there.",
    "",
    "The same evening (21:20-21:35 UTC, an Intel Xeon, the ceiling at 25,700-28,600 "
    "messages/s), the intake and the worker with the judging moved as well, as a trial "
    "patch: the intake only kept each relevant notification in the store, as osel keeps "
    "those deferred while Neutron is away, and acknowledged it; the worker judged them a "
    "thousand at a time, then formed and launched the scans and delivered the records. "
    "Three interleaved pairs of 150,000 messages of the mix, SQLite, window 0, against "
    "the intake and worker as they are: acknowledged 13,810, 13,925 and 14,999 "
    "messages/s against 13,647, 13,081 and 13,760; every change judged and every target "
    "in a scan batch 13,232, 13,235 and 14,297 against 13,234, 12,605 and 13,386 (44,000 "
    "change records and 39,000 targets in every run). The work moved and did not "
    "shrink: the intake used 6.9-7.5 CPU-seconds and the worker 10.2-11.1, against "
    "11.3-12.2 and 4.4-4.8, about 16.5 in all either way, which with RabbitMQ fills the "
    "machine's two cores. Not kept. In the same run one process took 10,685 messages/s "
    "(median of three), the ceiling 27,259 and oslo.messaging 2,503: the intake and "
    "worker as they are reached 0.50x the ceiling and 5.45x oslo.messaging, one process "
    "0.39x and 4.27x. oslo.messaging took about as much on the slower machine of the "
    "18:41 run (2,467 messages/s, where the ceiling took 19,852), so the ratio to it "
    "follows the speed of the machine.",
    "",
    "Then (22:15-22:19 UTC) two changes of schema together, as an upper bound: the "
    "change records' learned columns not written when a batch is formed or launched (8% "
    "alone, above), and the six secondary indexes of `audit_records` dropped (which the "
    "HTTP API's filters and the CLI's lookups use). Three interleaved pairs of 150,000 "
    "messages of the mix, one process: 12,043, 10,830 and "
    "11,304 messages/s against 11,381, 10,104 and 10,697, 1.06x, 1.07x and 1.06x, about "
    "0.43x that hour's ceiling (26,288, median). Not made.",
]

RUNNING = [
    "    make bench        # everything; writes this page, performance.png, var/bench/results.json",
    "",
    "    # parts, or smaller counts (the bench group lives in its own environment under var/)",
    "    export UV_PROJECT_ENVIRONMENT=var/bench/venv",
    "    uv run --frozen --no-dev --exact --group bench python -m bench --quick",
    "    uv run --frozen --no-dev --exact --group bench python -m bench \\",
    "        --skip rss,burst --messages 50000",
    "    # where a batch's time goes, step by step, without the broker (a minute)",
    "    uv run --frozen --no-dev --exact --group bench python -m bench.steps",
    "    # what one rule change costs on groups of many ports and rules (a minute)",
    "    uv run --frozen --no-dev --exact --group bench python -m bench.groups",
    "",
    "This run took {minutes} minutes. It needs RabbitMQ and PostgreSQL on 127.0.0.1 "
    "(guest/guest, trust) and, for the burst, the local Keystone + Neutron (`make bench` "
    "starts it with `bash scripts/openstack/stack.sh up`); every queue and exchange it "
    "declares is named `osel-bench-*` and deleted afterwards, and so is every PostgreSQL "
    "database it creates (`osel_bench_*`).",
]


def _cpu(run: dict[str, Any]) -> str:
    cores, busy = _num(run.get("cpu_cores")), _num(run.get("machine_busy"))
    if cores is None or busy is None:
        return "CPU not measured"
    return f"CPU {cores:.2f} core(s), machine {busy:.0%} busy"


def _halves(halves: dict[str, Any] | None) -> list[str]:
    """The section on osel draining each half of the mix alone (none if not measured)."""
    if not halves:
        return []
    lines = [
        "## Each half of the mix alone",
        "",
        "osel (SQLite, window 0) draining only the messages it ignores, then only the ones "
        "it acts on, once each, in the same way as above: where its time goes.",
        "",
        "| half | messages | messages/s | microseconds per message |",
        "|---|---|---|---|",
    ]
    for half in ("ignored", "relevant"):
        run = halves.get(half) or {}
        rate = run.get("sustained_rate")
        per = f"{1e6 / rate:,.0f}" if isinstance(rate, int | float) and rate > 0 else "n/a"
        lines.append(f"| {half} | {_f(run.get('messages'))} | {_f(rate)} | {per} |")
    return [*lines, ""]


def _summary(results: dict[str, Any]) -> list[str]:
    """The throughput figures behind the ratios, in one sentence."""
    osel, ceiling, oslo = (_rate(results, n) for n in ("osel_sqlite", "ceiling", "oslo"))
    if not (osel and ceiling and oslo):
        return []
    one, two = _rate(results, "osel_postgresql"), _rate(results, "osel_postgresql_x2")
    scaled = f" ({two / one:.2f}x one)" if one and two else ""
    split = _rate(results, "osel_sqlite_split")
    split_line = (
        f" An intake and a worker in two processes on SQLite took {split:,.0f} messages/s: "
        f"{split / osel:.2f}x one process, {split / ceiling:.2f}x the ceiling and "
        f"{split / oslo:.2f}x oslo.messaging."
        if split
        else ""
    )
    return [
        f"osel took {osel:,.0f} messages/s on SQLite "
        f"({_f(one)} on PostgreSQL, "
        f"{_f(_rate(results, 'osel_sqlite_window60'))} on SQLite with the default 60 s "
        f"scan window, {_f(two)} with two instances on PostgreSQL{scaled}), the bare pika "
        f"consumer {ceiling:,.0f}/s and the oslo.messaging listener {oslo:,.0f}/s."
        f"{split_line} See [What limits osel](#what-limits-osel).",
    ]


def _minutes(results: dict[str, Any]) -> str:
    try:
        fmt = "%Y-%m-%d %H:%M:%S UTC"
        began = datetime.strptime(results["started_at"], fmt)
        ended = datetime.strptime(results["finished_at"], fmt)
    except (KeyError, ValueError):
        return "?"
    return f"{(ended - began).total_seconds() / 60:.0f}"


def write(results: dict[str, Any], docs: Path) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    plot(results, docs / "performance.png")
    (docs / "performance.md").write_text(markdown(results))
