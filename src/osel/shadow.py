"""Shadow replay: the change records of a period under another policy, without scanning.

`osel replay --policy NEW.yaml --since 7d` reads the change records committed in
the period from the store, decides each again under the new policy (the same
pure evaluation as `osel.decide`), and reports every record whose outcome
would differ: scanned -> not scanned, not scanned -> scanned, or another scan
priority. Nothing is scanned and nothing is written.

The baseline is what each record actually got when it was committed (its
`scan_state`, `scan_priority`, `policy_rule`), not a recomputation under the
policy in force today: the report answers "what would have been different",
even after the old policy file was edited or its exceptions expired.
Exceptions of the new policy are judged at each change's own time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from osel.decide import policy_priority, risk_priority
from osel.policy import Policy, permits_of_record, subject_of_record
from osel.store import tables as t
from osel.store.store import Store

# scan_state values of a committed record the policy had a say in; the others were
# decided before it (out of scope, opens nothing new, egress, ...)
CANDIDATE_STATES = frozenset({"queued", "record_only"})
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_RELATIVE = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")


def parse_since(text: str, now: datetime) -> datetime:
    """`7d`, `12h`, `30m`, `2w` before now, or an ISO date/datetime (UTC without a zone)."""
    found = _RELATIVE.match(text)
    if found:
        return now - timedelta(**{_UNITS[found[2]]: int(found[1])})
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r}: write a period such as 7d, 12h, 30m or 2w, "
            "or a date such as 2026-11-21 or 2026-11-21T08:00:00Z"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def _moment(record: dict[str, Any]) -> datetime:
    """When the record was decided (observed_at, else timestamp), UTC."""
    for key in ("observed_at", "timestamp"):
        value = record.get(key)
        if isinstance(value, str) and value:
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Verdict:
    scanned: bool
    priority: int | None  # scan-target priority, 0 first; None when not scanned
    rule: str

    def text(self) -> str:
        if not self.scanned:
            return f"not scanned ({self.rule})" if self.rule else "not scanned"
        return f"scan p{self.priority}" + (f" ({self.rule})" if self.rule else "")


@dataclass(frozen=True, slots=True)
class Difference:
    record_id: str
    timestamp: str
    change_type: str
    project_id: str
    address: str
    permits: str
    kind: str  # not_scanned | scanned | priority
    before: Verdict
    after: Verdict

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["before"] = asdict(self.before)
        out["after"] = asdict(self.after)
        return out


@dataclass(slots=True)
class Report:
    policy: str
    since: str
    until: str
    considered: int = 0  # change records in the period
    candidates: int = 0  # of which the policy had a say in
    differences: list[Difference] | None = None

    def counts(self) -> dict[str, int]:
        kinds = [d.kind for d in self.differences or []]
        return {k: kinds.count(k) for k in ("not_scanned", "scanned", "priority")}

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "since": self.since,
            "until": self.until,
            "change_records": self.considered,
            "decided_by_policy": self.candidates,
            "differences": [d.to_json() for d in self.differences or []],
            "summary": self.counts(),
        }


def baseline(record: dict[str, Any]) -> Verdict:
    """What the record got when it was committed."""
    if record.get("scan_state") != "queued":
        return Verdict(False, None, str(record.get("policy_rule") or ""))
    rank = record.get("scan_priority")
    if not isinstance(rank, int):  # committed before scan_priority was recorded: no policy
        rank = risk_priority(permits_of_record(record), bool(record.get("internet_exposed")))
    return Verdict(True, rank, str(record.get("policy_rule") or ""))


def under(policy: Policy, record: dict[str, Any]) -> Verdict:
    """What the record would get under `policy`, judged at the record's own time."""
    permits = permits_of_record(record)
    outcome = policy.outcome(subject_of_record(record), permits, _moment(record))
    if not outcome.scanned:
        return Verdict(False, None, outcome.rule)
    risk = risk_priority(permits, bool(record.get("internet_exposed")))
    return Verdict(True, policy_priority(outcome.priority, risk), outcome.rule)


def _permits_text(record: dict[str, Any]) -> str:
    parts = []
    for p in record.get("opened") or record.get("closed") or []:
        low, high = p.get("port_range_min"), p.get("port_range_max")
        ports = "" if (low, high) == (0, 65535) else f"/{low}" if low == high else f"/{low}-{high}"
        parts.append(f"{p.get('protocol')}{ports} from {p.get('remote')}")
    return ", ".join(parts)


def compare(policy: Policy, records: Iterable[dict[str, Any]], report: Report) -> Report:
    """Fill `report` with the records whose outcome `policy` changes."""
    report.differences = []
    for record in records:
        report.considered += 1
        if record.get("scan_state") not in CANDIDATE_STATES:
            continue
        report.candidates += 1
        before, after = baseline(record), under(policy, record)
        if before.scanned != after.scanned:
            kind = "scanned" if after.scanned else "not_scanned"
        elif before.scanned and before.priority != after.priority:
            kind = "priority"
        else:
            continue
        report.differences.append(
            Difference(
                str(record.get("record_id") or ""),
                str(record.get("timestamp") or ""),
                str(record.get("change_type") or ""),
                str(record.get("project_id") or ""),
                str(record.get("affected_ip_address") or ""),
                _permits_text(record),
                kind,
                before,
                after,
            )
        )
    return report


async def committed_changes(
    store: Store, since: datetime, until: datetime | None = None
) -> list[dict[str, Any]]:
    """The change records committed in [since, until), as committed, oldest first."""
    r = t.audit_records
    query = select(r.c.body).where((r.c.record_type == "change") & (r.c.created_at >= since))
    if until is not None:
        query = query.where(r.c.created_at < until)
    async with store.engine.connect() as conn:
        rows = await conn.execute(query.order_by(r.c.id))
        return [json.loads(row.body) for row in rows]


_LABELS = {
    "not_scanned": "scanned -> not scanned",
    "scanned": "not scanned -> scanned",
    "priority": "priority changed",
}


def table(report: Report) -> list[str]:
    """The differences as an aligned text table, with a summary line."""
    diffs = report.differences or []
    counts = report.counts()
    lines = [
        f"policy {report.policy} over the change records committed from {report.since} to "
        f"{report.until}: {report.considered} record(s), {report.candidates} decided by policy, "
        f"{len(diffs)} would differ ({counts['not_scanned']} no longer scanned, "
        f"{counts['scanned']} newly scanned, {counts['priority']} with another priority)"
    ]
    if not diffs:
        return lines
    head = ("timestamp", "change", "address", "project", "opened", "difference", "recorded", "new")
    rows = [
        (
            d.timestamp,
            d.change_type,
            d.address,
            d.project_id,
            d.permits,
            _LABELS[d.kind],
            d.before.text(),
            d.after.text(),
        )
        for d in diffs
    ]
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip())
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return lines
