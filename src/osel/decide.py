"""`Change` -> audit records, scan targets and exposure-window operations.

Pure: the same change and the same rules always give the same records (bar
`observed_at` and the record ids, which the caller supplies).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from osel.exposure import Permit, rule_remotes
from osel.handlers import AUDIT_ONLY, Change, Effect

SOURCE_TYPE = "osel2.0"
ADMIN_PORTS = frozenset(
    {22, 23, 135, 139, 445, 1433, 2375, 3306, 3389, 5432, 5900, 6379, 9200, 11211, 27017}
)


@dataclass(frozen=True, slots=True)
class Rules:
    """The knobs of the decision, taken from the configuration."""

    out_of_scope: Callable[[str], str | None] = lambda _address: None
    trigger: str = "all_ingress"  # all_ingress | internet_exposed
    scan_on_rule_delete: bool = True
    scan_enabled: bool = True


@dataclass(frozen=True, slots=True)
class Target:
    """An address to scan, born from one record."""

    address: str
    record_uuid: str
    message_id: str
    priority: int  # lower first
    internet_exposed: bool


@dataclass(frozen=True, slots=True)
class WindowOp:
    """Open or close an exposure window of one (address, permit)."""

    action: str  # open | close
    address: str
    permit: Permit
    record_uuid: str
    at: str


@dataclass(slots=True)
class Decision:
    records: list[dict[str, Any]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    windows: list[WindowOp] = field(default_factory=list)


def iso_timestamp(oslo_time: str) -> str:
    """oslo's `2016-10-03 18:10:59.112712` (UTC, no zone) -> ISO 8601 with Z."""
    if not oslo_time:
        return ""
    text = oslo_time.strip().replace(" ", "T")
    try:
        parsed = datetime.fromisoformat(text.removesuffix("Z"))
    except ValueError:
        return oslo_time
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _internet(change: Change, effect: Effect | None) -> bool:
    rule = change.rule
    if rule is not None and change.change_type in ("sg_rule_add", "sg_rule_del"):
        if rule.direction != "ingress" or not rule.security_group_id:
            return False
        version = 6 if rule.ethertype == "IPv6" else 4
        return any(internet for _, internet in rule_remotes(rule, version, lambda _i: None))
    if effect is None:
        return False
    changed = effect.opened + effect.closed
    return any(p.internet for p in (changed or effect.after))


def _scan_verdict(change: Change, effect: Effect, internet: bool, rules: Rules) -> str | None:
    """None: scan it. Otherwise the reason it is not scanned."""
    kind = change.change_type
    if kind in AUDIT_ONLY:
        return f"{kind} is recorded for audit; nothing is newly reachable"
    if change.rule is not None and change.rule.direction != "ingress":
        return "egress rule: exposes nothing"
    if kind == "sg_rule_del":
        if not rules.scan_on_rule_delete:
            return "rule deleted and scan.scan_on_rule_delete is false"
        if not effect.closed:
            return "the deletion closes nothing: other rules still admit the same traffic"
        return None
    if not effect.opened and not effect.after:
        return "nothing is reachable: no ingress rule admits traffic to this address"
    if not effect.opened:
        return "opens nothing new: already reachable through other rules"
    if rules.trigger == "internet_exposed" and not any(p.internet for p in effect.opened):
        return "not internet-exposed and scope.trigger is internet_exposed"
    return None


def priority(effect: Effect, internet: bool) -> int:
    """Risk order: internet-exposed administrative ports first."""
    permits = effect.opened or effect.closed
    admin = any(
        p.protocol in (None, "tcp", "udp")
        and any(p.port_min <= port <= p.port_max for port in ADMIN_PORTS)
        for p in permits
    )
    return (0 if internet else 2) + (0 if admin else 1)


def _base(change: Change, observed_at: str, instance: str, broker: str) -> dict[str, Any]:
    n = change.notification
    rule = change.rule
    return {
        "source_type": SOURCE_TYPE,
        "record_type": "change",
        "record_id": str(uuid.uuid4()),
        "change_type": change.change_type,
        "event_type": n.event_type,
        "message_id": n.message_id,
        "timestamp": iso_timestamp(n.timestamp),
        "observed_at": observed_at,
        "project_id": change.project_id or "",
        "user_id": n.context.user_id or "",
        "user_name": n.context.user_name or "",
        "request_id": n.context.request_id or "",
        "security_group_id": change.security_group_id or "",
        "port_id": change.port_id or "",
        "floating_ip_id": change.floating_ip_id or "",
        "security_group_rule": rule.audit_view() if rule is not None else None,
        "affected_ip_address": "",
        "address_kind": "",
        "internet_exposed": False,
        "opened": [],
        "closed": [],
        "qualys_scan_id": "",
        "qualys_scan_error": "",
        "scan_state": "skipped",
        "scan_batch_id": "",
        "source_message_bus": broker,
        "osel_instance": instance,
    }


def _unique(permits: list[Permit]) -> list[Permit]:
    return list({p.key: p for p in permits}.values())


def decide(
    change: Change, rules: Rules, *, instance: str, broker: str, observed_at: str | None = None
) -> Decision:
    observed = observed_at or now_iso()
    out = Decision()
    if not change.effects:
        record = _base(change, observed, instance, broker)
        record["internet_exposed"] = _internet(change, None)
        record["qualys_scan_error"] = change.note or "no address is affected"
        out.records.append(record)
        return out
    for effect in change.effects:
        record = _base(change, observed, instance, broker)
        internet = _internet(change, effect)
        address = effect.address.address
        record.update(
            affected_ip_address=address,
            address_kind=effect.address.kind,
            internet_exposed=internet,
            opened=[p.to_json() for p in effect.opened],
            closed=[p.to_json() for p in effect.closed],
        )
        if not record["port_id"]:
            record["port_id"] = effect.address.port_id
        if effect.address.floating_ip_id and not record["floating_ip_id"]:
            record["floating_ip_id"] = effect.address.floating_ip_id
        reason = rules.out_of_scope(address)
        verdict = _scan_verdict(change, effect, internet, rules)
        if reason is not None:
            record.update(scan_state="out_of_scope", qualys_scan_error=reason)
        elif verdict is not None:
            record.update(scan_state="skipped", qualys_scan_error=verdict)
        elif not rules.scan_enabled:
            record.update(scan_state="skipped", qualys_scan_error="scanning is disabled")
        else:
            record["scan_state"] = "queued"
            out.targets.append(
                Target(
                    address,
                    record["record_id"],
                    change.notification.message_id,
                    priority(effect, internet),
                    internet,
                )
            )
        ts = record["timestamp"] or observed
        after_keys = {p.key for p in effect.after}
        out.windows += [
            WindowOp("open", address, p, record["record_id"], ts) for p in _unique(effect.after)
        ]
        out.windows += [
            WindowOp("close", address, p, record["record_id"], ts)
            for p in _unique(effect.before)
            if p.key not in after_keys
        ]
        out.records.append(record)
    return out
