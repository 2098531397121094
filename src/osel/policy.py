"""The exposure policy: exceptions and rules that decide how an opening is handled.

A policy file (YAML, docs/policy.md) holds `exceptions` (accepted exposure, each
with an owner, a reason, a ticket and an expiry) and `rules` (triggers: scan at a
priority, or only record). Both match ONE permit of one address of a change
record: the project, security group, port, address, protocol, port range,
remote prefix and Internet exposure of what the change opened (or, for a rule
deletion that is confirmed by a scan, closed).

Evaluation, per permit: the exceptions in file order, skipping expired ones,
then the rules in file order; the first that matches decides; when none does,
the permit is scanned at normal priority. A record is only recorded (not
scanned) when EVERY permit it opened is decided `record_only`; one permit left
to scan scans the address, so an exception never hides other exposure opened
by the same change.

Pure: no I/O except `load_policy`, which reads and validates a file.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from osel.config import ConfigError, Problem
from osel.config_load import line_map, yaml_document
from osel.exposure import _PORTED, Permit, normalize_protocol, parse_network

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
Action = Literal["scan", "record_only"]
Priority = Literal["high", "normal", "low"]
EXPIRY_WARNING_DAYS = 14
# Neutron's protocol names (numbers 0-255 are accepted too)
PROTOCOL_NAMES = frozenset(
    {
        "ah",
        "dccp",
        "egp",
        "esp",
        "gre",
        "hopopt",
        "icmp",
        "igmp",
        "ipip",
        "ipv6-encap",
        "ipv6-frag",
        "ipv6-icmp",
        "ipv6-nonxt",
        "ipv6-opts",
        "ipv6-route",
        "ospf",
        "pgm",
        "rsvp",
        "sctp",
        "tcp",
        "udp",
        "udplite",
        "vrrp",
    }
)


class PolicyError(ConfigError):
    """The policy file cannot be used; every problem with its key, value and line."""


# --------------------------------------------------------------------------- value types


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str | int) else value


def _ids(value: Any) -> list[str] | None:
    if value is None:
        return None
    items = _as_list(value)
    if not isinstance(items, list) or not items:
        raise ValueError("expected an id or a non-empty list of ids")
    if not all(isinstance(i, str) and i.strip() for i in items):
        raise ValueError("expected ids as strings, e.g. 5a89c2e1... (quote numeric ids)")
    return [i.strip() for i in items]


def _nets(value: Any) -> list[IPNet] | None:
    if value is None:
        return None
    items = _as_list(value)
    if not isinstance(items, list) or not items:
        raise ValueError("expected a CIDR or a non-empty list of CIDRs, e.g. 0.0.0.0/0")
    out: list[IPNet] = []
    for item in items:
        text = str(item).strip()
        try:
            out.append(ipaddress.ip_network(text, strict=True))
        except ValueError:
            try:
                fixed = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(
                    f"{text!r} is not a CIDR; write e.g. 203.0.113.0/24, 0.0.0.0/0 or ::/0"
                ) from None
            raise ValueError(f"{text} has host bits set; did you mean {fixed}?") from None
    return out


def _protocol(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("any", ""):
        return None
    if text.isdigit():
        if int(text) > 255:
            raise ValueError("a protocol number is 0-255")
        return normalize_protocol(text)
    name = normalize_protocol(text)
    if name not in PROTOCOL_NAMES:
        raise ValueError(
            "unknown protocol; use tcp, udp, icmp, ipv6-icmp, sctp, ... (Neutron's names), "
            "a number 0-255, or any"
        )
    return name


def _one_range(item: Any) -> tuple[int, int]:
    text = str(item).strip()
    low_text, dash, high_text = text.partition("-")
    try:
        low = int(low_text)
        high = int(high_text) if dash else low
    except ValueError:
        raise ValueError(
            f"{text!r} is not a port or range; write 443, '8000-8080' or a list of them"
        ) from None
    if not 0 <= low <= high <= 65535:
        raise ValueError(f"{text!r}: ports run 0-65535 and a range is low-high")
    return (low, high)


def _ports(value: Any) -> list[tuple[int, int]] | None:
    if value is None:
        return None
    items = _as_list(value)
    if not isinstance(items, list) or not items:
        raise ValueError("expected a port, a range 'low-high' or a list of them")
    return sorted(_one_range(i) for i in items)


def _expiry(value: Any) -> datetime:
    """A date (the exception ends at 00:00 UTC that day) or a datetime (UTC if no zone)."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime.combine(value, time(0), UTC)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("not a date; write 2027-01-31 or 2027-01-31T18:00:00Z (UTC)") from None
    else:
        raise ValueError("expected a date such as 2027-01-31 or 2027-01-31T18:00:00Z")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


Ids = Annotated[list[str] | None, BeforeValidator(_ids)]
Nets = Annotated[list[IPNet] | None, BeforeValidator(_nets)]
Proto = Annotated[str | None, BeforeValidator(_protocol)]
Ports = Annotated[list[tuple[int, int]] | None, BeforeValidator(_ports)]
Expiry = Annotated[datetime, BeforeValidator(_expiry)]
Text = Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)]


# --------------------------------------------------------------------------- the file


class _PolicyModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


@dataclass(frozen=True, slots=True)
class Subject:
    """The record-level facts a match looks at (the permit carries the rest)."""

    project_id: str = ""
    security_group_id: str = ""
    port_id: str = ""
    address: str = ""


class Match(_PolicyModel):
    """What a rule or an exception applies to; every given key must hold (AND)."""

    project_id: Ids = None
    security_group_id: Ids = None
    port_id: Ids = None
    address: Nets = None
    protocol: Proto = None
    ports: Ports = None
    remote: Nets = None
    internet_exposed: bool | None = None

    @model_validator(mode="after")
    def _ports_need_a_ported_protocol(self) -> Match:
        if self.ports is not None and self.protocol is not None and self.protocol not in _PORTED:
            raise ValueError(
                f"ports apply to tcp, udp, sctp, udplite and dccp only, not {self.protocol}; "
                "remove ports or change protocol"
            )
        return self

    def matches(self, subject: Subject, permit: Permit) -> bool:
        checks = (
            _one_of(self.project_id, subject.project_id),
            _one_of(self.security_group_id, permit.security_group_id or subject.security_group_id),
            _one_of(self.port_id, subject.port_id),
            self.address is None or _address_in(subject.address, self.address),
            self.protocol is None or permit.protocol == self.protocol,
            self.ports is None or _ports_within(permit.port_min, permit.port_max, self.ports),
            self.remote is None or any(_remote_within(permit.remote, n) for n in self.remote),
            self.internet_exposed is None or permit.internet == self.internet_exposed,
        )
        return all(checks)

    def describe(self) -> str:
        parts: list[str] = []
        if self.protocol is not None or self.ports is not None:
            proto = self.protocol or "any protocol"
            ports = f" port(s) {_ports_text(self.ports)}" if self.ports is not None else ""
            parts.append(f"{proto}{ports}")
        if self.remote is not None:
            parts.append("from a remote within " + ", ".join(str(n) for n in self.remote))
        if self.internet_exposed is not None:
            parts.append(
                "when internet-exposed" if self.internet_exposed else "when not internet-exposed"
            )
        for key, label in (
            ("project_id", "project"),
            ("security_group_id", "security group"),
            ("port_id", "port"),
        ):
            values = getattr(self, key)
            if values is not None:
                parts.append(f"in {label} {' or '.join(values)}")
        if self.address is not None:
            parts.append("on addresses in " + ", ".join(str(n) for n in self.address))
        return " ".join(parts) or "every permit"

    def scoped(self) -> bool:
        return any(
            v is not None for v in (self.project_id, self.security_group_id, self.port_id)
        ) or (self.address is not None and all(n.prefixlen for n in self.address))


def _one_of(wanted: list[str] | None, value: str | None) -> bool:
    return wanted is None or (value or "") in wanted


def _address_in(address: str, nets: list[IPNet]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in nets)


def _remote_within(remote: str, net: IPNet) -> bool:
    """A permit's remote lies within `net` (a group remote only within a /0 of any version)."""
    parsed = parse_network(remote)
    if parsed is None:
        return net.prefixlen == 0
    return parsed.version == net.version and parsed.subnet_of(net)  # type: ignore[arg-type]


def _ports_within(low: int, high: int, spans: Sequence[tuple[int, int]]) -> bool:
    """The whole range low-high lies within the union of `spans` (sorted)."""
    reach = low
    for span_low, span_high in spans:
        if span_low > reach:
            return False
        reach = max(reach, span_high + 1)
        if reach > high:
            return True
    return False


def _ports_text(spans: Iterable[tuple[int, int]] | None) -> str:
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans or ())


class PolicyRule(_PolicyModel):
    """A trigger: what to do with the permits it matches."""

    kind: ClassVar[str] = "rule"
    name: Text
    match: Match = Field(default_factory=Match)
    action: Action = "scan"
    priority: Priority = "normal"

    @model_validator(mode="after")
    def _priority_with_scan(self) -> PolicyRule:
        if self.action == "record_only" and self.priority != "normal":
            raise ValueError(
                "priority applies to action scan only; remove priority or set action: scan"
            )
        return self

    def verb(self) -> str:
        if self.action == "record_only":
            return "record only, do not scan"
        return f"scan at {self.priority} priority"


class PolicyException(PolicyRule):
    """Accepted exposure: an owner, a reason, a ticket and an expiry are required."""

    kind: ClassVar[str] = "exception"
    action: Action = "record_only"
    owner: Text
    reason: Text
    ticket: Text
    expires: Expiry

    @field_validator("match")
    @classmethod
    def _scoped(cls, match: Match) -> Match:
        if not match.scoped():
            raise ValueError(
                "an exception must say whose exposure it accepts: give project_id, "
                "security_group_id, port_id or an address CIDR narrower than /0"
            )
        return match

    def expired(self, now: datetime) -> bool:
        return now >= self.expires

    @property
    def expiry_key(self) -> str:
        return f"{self.name}@{iso(self.expires)}"


class PolicyFile(_PolicyModel):
    version: Literal[1] = 1
    exceptions: list[PolicyException] = Field(default_factory=list)
    rules: list[PolicyRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> PolicyFile:
        seen: set[str] = set()
        for entry in [*self.exceptions, *self.rules]:
            if entry.name in seen:
                raise ValueError(
                    f"the name {entry.name!r} is used twice; give every rule and exception "
                    "its own name (audit records carry it as policy_rule)"
                )
            seen.add(entry.name)
        return self


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True)
class Hit:
    """What decided one permit."""

    name: str  # "" when no rule matched
    kind: str  # exception | rule | default
    action: Action
    priority: Priority
    entry: PolicyRule | None = None

    def describe(self) -> str:
        if self.entry is None:
            return "no rule matches: scan at normal priority"
        return f"{self.kind} {self.name}: {self.entry.verb()}"


DEFAULT_HIT = Hit("", "default", "scan", "normal")


@dataclass(frozen=True, slots=True)
class Outcome:
    """The policy's decision on one record."""

    action: Action
    priority: Priority  # of the scanned permits (the highest); "normal" when not scanned
    rule: str  # the rule(s)/exception(s) that decided, comma-separated; "" for the default
    hits: tuple[tuple[Permit, Hit], ...]

    @property
    def scanned(self) -> bool:
        return self.action == "scan"

    def reason(self) -> str:
        """Why a record_only record is not scanned (qualys_scan_error)."""
        parts = []
        for name, entry in {h.name: h.entry for _, h in self.hits}.items():
            if isinstance(entry, PolicyException):
                parts.append(
                    f"exception {name} (owner {entry.owner}, ticket {entry.ticket}, "
                    f"expires {iso(entry.expires)}): {entry.reason}"
                )
            else:
                parts.append(f"rule {name}")
        return "record_only by policy: " + "; ".join(parts)

    def matches_json(self) -> list[dict[str, Any]]:
        return [
            {
                "protocol": p.protocol or "any",
                "port_range_min": p.port_min,
                "port_range_max": p.port_max,
                "remote": p.remote,
                "policy_rule": h.name,
                "policy_kind": h.kind,
                "policy_action": h.action,
                "priority": h.priority,
            }
            for p, h in self.hits
        ]


_RANK = {"high": 0, "normal": 1, "low": 2}


@dataclass(frozen=True, slots=True)
class Policy:
    """A validated policy file, ready to evaluate."""

    exceptions: tuple[PolicyException, ...] = ()
    rules: tuple[PolicyRule, ...] = ()
    source: str = ""

    @classmethod
    def from_file(cls, model: PolicyFile, source: str = "") -> Policy:
        return cls(tuple(model.exceptions), tuple(model.rules), source)

    def hit(self, subject: Subject, permit: Permit, now: datetime) -> Hit:
        for exc in self.exceptions:
            if not exc.expired(now) and exc.match.matches(subject, permit):
                return Hit(exc.name, "exception", exc.action, exc.priority, exc)
        for rule in self.rules:
            if rule.match.matches(subject, permit):
                return Hit(rule.name, "rule", rule.action, rule.priority, rule)
        return DEFAULT_HIT

    def outcome(self, subject: Subject, permits: Sequence[Permit], now: datetime) -> Outcome:
        """Scan unless every permit is decided record_only (none at all: scan)."""
        hits = tuple((p, self.hit(subject, p, now)) for p in permits)
        scanning = [h for _, h in hits if h.action == "scan"]
        if hits and not scanning:
            names = dict.fromkeys(h.name for _, h in hits)
            return Outcome("record_only", "normal", ",".join(names), hits)
        chosen = scanning or [DEFAULT_HIT]
        priority = min((h.priority for h in chosen), key=_RANK.__getitem__)
        names = dict.fromkeys(h.name for h in chosen if h.name)
        return Outcome("scan", priority, ",".join(names), hits)

    def expired(self, now: datetime) -> list[PolicyException]:
        return [e for e in self.exceptions if e.expired(now)]

    def next_expiry(self, now: datetime) -> datetime | None:
        pending = [e.expires for e in self.exceptions if not e.expired(now)]
        return min(pending) if pending else None

    def summary(self) -> str:
        return f"{len(self.exceptions)} exception(s), {len(self.rules)} rule(s)"


def permits_of_record(record: dict[str, Any]) -> list[Permit]:
    """The permits a committed change record decided on: opened, else closed."""
    return [
        Permit(
            None if p.get("protocol") in (None, "any") else str(p["protocol"]),
            int(p["port_range_min"]),
            int(p["port_range_max"]),
            str(p["remote"]),
            bool(p.get("internet_exposed")),
            p.get("security_group_rule_id"),
            p.get("security_group_id"),
        )
        for p in (record.get("opened") or record.get("closed") or [])
    ]


def subject_of_record(record: dict[str, Any]) -> Subject:
    return Subject(
        str(record.get("project_id") or ""),
        str(record.get("security_group_id") or ""),
        str(record.get("port_id") or ""),
        str(record.get("affected_ip_address") or ""),
    )


# --------------------------------------------------------------------------- loading


def _key(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_VALID_KEYS = {
    (): ("version", "exceptions", "rules"),
    ("rules",): tuple(PolicyRule.model_fields),
    ("exceptions",): tuple(PolicyException.model_fields),
    ("match",): tuple(Match.model_fields),
}


def _valid_keys(loc: tuple[str | int, ...]) -> tuple[str, ...]:
    names = tuple(p for p in loc[:-1] if isinstance(p, str))
    if not names:
        return _VALID_KEYS[()]
    if names[-1] == "match":
        return _VALID_KEYS[("match",)]
    return _VALID_KEYS.get((names[0],), ())


def _message(err: Any, loc: tuple[str | int, ...]) -> str:
    kind, msg = err["type"], str(err["msg"])
    if kind == "extra_forbidden":
        import difflib

        valid = _valid_keys(loc)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        return "unknown key; " + (
            f"did you mean {close[0]!r}?" if close else "valid keys: " + ", ".join(valid)
        )
    if kind == "missing" and loc and loc[0] == "exceptions":
        return (
            "required key is missing; every exception needs name, match, owner, reason, "
            "ticket and expires"
        )
    fixed = {
        "missing": "required key is missing",
        "model_type": "expected a mapping (key: value)",
        "dict_type": "expected a mapping (key: value)",
        "list_type": "expected a list, e.g. [a, b]",
        "literal_error": msg.replace("Input should be ", "must be ", 1),
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "string_too_short": "must not be empty",
        "string_type": "expected a text value",
    }
    if kind in fixed:
        return fixed[kind]
    if loc and loc[-1] == "version":
        return "must be 1 (the only policy format so far)"
    return msg.removeprefix("Value error, ").replace("Input should be ", "must be ", 1)


def _walk(data: Any, loc: Sequence[str | int]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _show(value: Any) -> str:
    if value is None:
        return ""
    text = repr(value.isoformat() if isinstance(value, date) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def _problems(exc: ValidationError, data: Any, path: str, lines: dict[Any, int]) -> list[Problem]:
    out: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
        where = f"{path}:{line}" if line else path
        value = "" if err["type"] == "missing" else _show(_walk(data, loc))
        out.append(Problem(_key(loc), value, _message(err, loc), where))
    return out


def parse_policy(text: str, path: str = "<policy>") -> Policy:
    """Validate a policy document; PolicyError names every problem by key, value and line."""
    node, data = yaml_document(text, path, PolicyError)
    if node is None or data is None:
        raise PolicyError([Problem("", "", "the policy is empty; give at least version: 1", path)])
    if not isinstance(data, dict):
        raise PolicyError(
            [Problem("", "", "the top level must be a mapping (version, exceptions, rules)", path)]
        )
    lines: dict[Any, int] = {}
    duplicates: list[Any] = []
    line_map(node, (), lines, duplicates)
    problems = [
        Problem(_key(d.loc), "", d.message, f"{path}:{lines.get(d.loc, 1)}") for d in duplicates
    ]
    try:
        model = PolicyFile.model_validate(data)
    except ValidationError as exc:
        problems += _problems(exc, data, path, lines)
    if problems:
        raise PolicyError(problems)
    return Policy.from_file(model, path)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PolicyError(
            [
                Problem(
                    "",
                    "",
                    f"cannot read the policy file: {reason}; check the path (policy.file) "
                    "and that osel may read it",
                    str(path),
                )
            ]
        ) from None
    return parse_policy(text, str(path))


# --------------------------------------------------------------------------- explaining


def explain(policy: Policy, now: datetime) -> list[str]:
    """The policy in plain words, one entry a line (`osel policy check`)."""
    lines = [
        f"policy {policy.source}: {policy.summary()}.",
        "For each permit a change opens (or a confirmed deletion closes): the exceptions "
        "are tried first, then the rules, in file order; the first that matches decides. "
        "Unmatched permits are scanned at normal priority. An address is only recorded, "
        "not scanned, when every permit it gained is decided record_only.",
    ]
    for exc in policy.exceptions:
        lines.append(
            f"exception {exc.name}: {exc.verb()}: {exc.match.describe()}; "
            f"owner {exc.owner}, ticket {exc.ticket}, expires {iso(exc.expires)}; "
            f"reason: {exc.reason}"
        )
        warning = expiry_warning(exc, now)
        if warning:
            lines.append(f"  {warning}")
    for rule in policy.rules:
        lines.append(f"rule {rule.name}: {rule.verb()}: {rule.match.describe()}")
    return lines


def expiry_warning(exc: PolicyException, now: datetime) -> str:
    if exc.expired(now):
        return (
            f"warning: expired on {iso(exc.expires)}: it no longer applies (what it matches is "
            "scanned again); renew it with a new expires or remove it"
        )
    if exc.expires - now <= timedelta(days=EXPIRY_WARNING_DAYS):
        days = (exc.expires - now).total_seconds() / 86400
        return (
            f"warning: expires in {days:.1f} day(s), on {iso(exc.expires)}; renew it (with "
            "the ticket) or let what it matches be scanned again"
        )
    return ""
