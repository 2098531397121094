"""Write the figures of the last test run (var/reports/*.json) into docs/reliability.md.

The resilience, crash and fuzz tests write their figures to var/reports/;
this fills the block between the `figures` markers of docs/reliability.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "var" / "reports"
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"


def load(name: str) -> dict[str, object]:
    path = REPORTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


class _Figures(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return "-"


ROWS = [
    (
        "broker outage (connections refused)",
        "broker_faults",
        "{outage_seconds} s with a backoff cap of {backoff_cap_seconds} s: {outage_log_lines} log "
        "lines; consuming again {reconnected_after_seconds} s after the broker returned",
    ),
    (
        "log lines per hour of outage",
        "broker_faults",
        "at most 2 + 3600 / cap: 62 at the default cap of 60 s",
    ),
    (
        "PostgreSQL outage at start and under traffic (connections refused)",
        "store_outage-postgresql",
        "waiting at start: {start_wait_log_lines} log lines; then {outage_seconds} s with a "
        "backoff cap of {backoff_cap_seconds} s: {outage_log_lines} log lines, no traceback, "
        "`/metrics` answering; processing again {processing_again_after_seconds} s after it "
        "returned; {relevant} relevant of {notifications} notifications: lost {records_lost}, "
        "duplicated {records_duplicated}",
    ),
    (
        "two instances on one PostgreSQL store, PostgreSQL refused longer than a lease",
        "store_outage_two_instances-postgresql",
        "{outage_seconds} s (lease {lease_seconds} s), {relevant} relevant of {notifications} "
        "notifications: every change recorded once, {records} records, delivered twice "
        "{records_delivered_twice}; log lines during the outage per instance "
        "{outage_log_lines_per_instance}",
    ),
    (
        "PostgreSQL restarted: every pooled connection ended while osel idled",
        "store_restart-postgresql",
        "{connections_ended} connections ended, {statements_cut_short} statement(s) in "
        "flight cut short and sent again; then {relevant} relevant of {notifications} "
        "notifications: {log_lines_after} log lines, lost {records_lost}, duplicated "
        "{records_duplicated}",
    ),
    (
        "PostgreSQL hangs: connections open, nothing answered",
        "store_hang-postgresql",
        "{hang_seconds} s: {log_lines} log lines, the slowest `/metrics` or `/readyz` answer "
        "{slowest_answer_seconds} s; {relevant} relevant of {notifications} notifications: "
        "lost {records_lost}, duplicated {records_duplicated}",
    ),
    (
        "connections cut while publishing",
        "broker_faults",
        "{connection_cuts} cuts, {relevant} relevant of {notifications} notifications: "
        "lost {records_lost}, duplicated {records_duplicated}",
    ),
    (
        "SIGKILL at random moments under traffic",
        "kills",
        "{sigkills} kills ({killed_with_work_queued} with work queued), {relevant} relevant of "
        "{notifications} notifications, {scan_batches} scan batches each launched once, records "
        "lost {records_lost}, duplicate lines in the JSONL file {duplicate_lines_in_file}, "
        "lines cut short by a kill and removed {cut_short_lines_removed}",
    ),
    (
        "the same on PostgreSQL",
        "kills-postgresql",
        "{sigkills} kills ({killed_with_work_queued} with work queued), {relevant} relevant of "
        "{notifications} notifications, {scan_batches} scan batches each launched once, records "
        "lost {records_lost}, duplicate lines in the JSONL file {duplicate_lines_in_file}, "
        "lines cut short by a kill and removed {cut_short_lines_removed}",
    ),
    (
        "three instances on one PostgreSQL store, the audit sink's holder SIGKILLed",
        "several_instances-postgresql",
        "{relevant} relevant of {notifications} notifications, {queued_when_killed} queued at the "
        "kill; changes per instance {changes_by_instance}; {scan_batches_launched} scan batches "
        "each launched once; records lost {records_lost}, duplicate lines in the shared JSONL "
        "file {duplicate_lines_in_file}; the sink taken over by {sink_taken_over_by}; drained in "
        "{seconds_to_drain} s",
    ),
    (
        "SIGTERM under load",
        "sigterm",
        "stopped in {stop_seconds} s with {messages} notifications queued; none lost",
    ),
    (
        "messages fuzzed",
        "fuzz",
        "{messages} generated and mutated messages, outcomes {outcomes}; no exception escaped",
    ),
]


def render() -> str:
    lines = ["| what | last run |", "|---|---|"]
    for what, report, text in ROWS:
        lines.append(f"| {what} | {text.format_map(_Figures(load(report)))} |")
    return "\n".join(lines)


def main() -> int:
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        print(f"{DOC}: the figures markers are missing", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{render()}\n{END}{tail}")
    print(f"figures written into {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
