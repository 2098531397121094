"""What an address is reachable on, and what a change opened or closed.

Pure functions over model records: no I/O. An address's exposure is the set of
`Permit`s that the ingress rules of its port's security groups grant to the
address's IP version (or everything, when port security is off). A change's
effect on an address is the diff of its exposure before and after, where a
permit only counts as opened (or closed) when no other permit already covers
it: a second rule that adds nothing is not an opening.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from osel.model import AddressGroup, IPNetwork, Port, Rule

ALL_PORTS = (0, 65535)
_PORTED = frozenset({"tcp", "udp", "sctp", "udplite", "dccp"})
_PROTOCOL_NUMBERS = {
    "1": "icmp",
    "6": "tcp",
    "17": "udp",
    "33": "dccp",
    "58": "ipv6-icmp",
    "132": "sctp",
    "136": "udplite",
}
_PROTOCOL_ALIASES = {"icmpv6": "ipv6-icmp", "any": None, "": None}

_PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
    )
)
ANY = {4: "0.0.0.0/0", 6: "::/0"}


def normalize_protocol(protocol: str | None) -> str | None:
    """Neutron accepts names and numbers; compare them as names."""
    if protocol is None:
        return None
    value = protocol.strip().lower()
    if value in _PROTOCOL_ALIASES:
        return _PROTOCOL_ALIASES[value]
    return _PROTOCOL_NUMBERS.get(value, value)


@lru_cache(maxsize=4096)
def parse_network(prefix: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(prefix, strict=False)
    except ValueError:
        return None


@lru_cache(maxsize=4096)
def is_internet_prefix(prefix: str) -> bool:
    """True unless the prefix lies wholly inside private address space.

    An unparseable prefix counts as exposed: osel errs towards scanning.
    """
    net = parse_network(prefix)
    if net is None:
        return True
    return not any(net.version == p.version and net.subnet_of(p) for p in _PRIVATE)  # type: ignore[arg-type]


def address_int(address: str) -> tuple[int, int] | None:
    """(IP version, the address as an integer) of a plain address, else None.

    The C parser of the socket module, not `ipaddress`: osel asks this for every
    address of every change, and a cloud has more addresses than a cache holds.
    Scoped IPv6 addresses (``fe80::1%eth0``) and prefixes are not plain: None.
    """
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, address), "big")
    except OSError:
        pass
    try:
        return 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, address), "big")
    except OSError:
        return None


def ip_version(address: str) -> int | None:
    """4 or 6 for an address or a prefix, None for anything else."""
    plain = address_int(address)
    if plain is not None:
        return plain[0]
    net = parse_network(address)
    return net.version if net is not None else None


@dataclass(frozen=True, slots=True)
class Permit:
    """Ingress allowed to one address: protocol, port range, from where."""

    protocol: str | None  # None: every protocol
    port_min: int
    port_max: int
    remote: str  # a prefix, "group:<id>" or "address_group:<id>"
    internet: bool
    rule_id: str | None = None
    security_group_id: str | None = None
    # what the permit admits, without where it comes from: compared millions of times
    # when a rule changes on a group of many ports and rules, so made once
    key: tuple[str | None, int, int, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.protocol, self.port_min, self.port_max, self.remote))

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol or "any",
            "port_range_min": self.port_min,
            "port_range_max": self.port_max,
            "remote": self.remote,
            "internet_exposed": self.internet,
            "security_group_rule_id": self.rule_id,
            "security_group_id": self.security_group_id,
        }


def _ports(rule: Rule, protocol: str | None) -> tuple[int, int]:
    if protocol not in _PORTED or (rule.port_range_min is None and rule.port_range_max is None):
        return ALL_PORTS
    low = rule.port_range_min if rule.port_range_min is not None else rule.port_range_max
    high = rule.port_range_max if rule.port_range_max is not None else rule.port_range_min
    assert low is not None and high is not None
    return (low, high)


def rule_remotes(
    rule: Rule, version: int, address_group: Callable[[str], AddressGroup | None]
) -> list[tuple[str, bool]]:
    """The remotes a rule admits, for one IP version, each with its internet flag."""
    if rule.remote_group_id:
        return [(f"group:{rule.remote_group_id}", False)]
    if rule.remote_address_group_id:
        group = address_group(rule.remote_address_group_id)
        if group is None:
            return [(f"address_group:{rule.remote_address_group_id}", True)]
        nets = [parse_network(a) for a in group.addresses]
        return [(str(n), is_internet_prefix(str(n))) for n in nets if n and n.version == version]
    prefix = rule.remote_ip_prefix or ANY[version]
    return [(prefix, is_internet_prefix(prefix))]


def rule_applies(rule: Rule, version: int) -> bool:
    return rule.direction == "ingress" and rule.ethertype == f"IPv{version}"


PlainPermits = Callable[[Rule, int], Sequence[Permit]]


def rule_permits(
    rule: Rule,
    version: int,
    address_group: Callable[[str], AddressGroup | None],
    plain: PlainPermits | None = None,
) -> Sequence[Permit]:
    """What one rule admits on addresses of one IP version.

    `plain` answers for a rule that names no address group (its permits are then a
    function of the rule alone), so that its holder can keep them: the inventory
    keeps them as long as it keeps the rule."""
    if not rule_applies(rule, version):
        return []
    if rule.remote_address_group_id:  # depends on the address group's current addresses
        return _rule_permits(rule, version, address_group)
    if plain is not None:
        return plain(rule, version)
    return _rule_permits(rule, version, _no_address_group)


def plain_rule_permits(rule: Rule, version: int) -> tuple[Permit, ...]:
    """The permits of a rule that names no address group."""
    return tuple(_rule_permits(rule, version, _no_address_group))


def _no_address_group(_ag_id: str) -> AddressGroup | None:
    return None


def _rule_permits(
    rule: Rule, version: int, address_group: Callable[[str], AddressGroup | None]
) -> list[Permit]:
    protocol = normalize_protocol(rule.protocol)
    low, high = _ports(rule, protocol)
    return [
        Permit(protocol, low, high, remote, internet, rule.id, rule.security_group_id)
        for remote, internet in rule_remotes(rule, version, address_group)
    ]


def port_permits(
    port: Port,
    version: int,
    rules_of: Callable[[str], Iterable[Rule]],
    address_group: Callable[[str], AddressGroup | None],
    plain: PlainPermits | None = None,
) -> list[Permit]:
    """Everything the port's security admits on addresses of one IP version."""
    if not port.filtered:
        return []
    if not port.port_security_enabled:
        return [Permit(None, *ALL_PORTS, ANY[version], True)]
    permits: list[Permit] = []
    for sg_id in port.security_groups:
        for rule in rules_of(sg_id):
            permits.extend(rule_permits(rule, version, address_group, plain))
    return permits


@lru_cache(maxsize=16384)
def _remote_covers(outer: str, inner: str) -> bool:
    if outer == inner:
        return True
    outer_net = parse_network(outer)
    if outer_net is None:
        return False
    if outer_net.prefixlen == 0:
        return True  # "from anywhere" covers groups and address groups too
    inner_net = parse_network(inner)
    if inner_net is None or inner_net.version != outer_net.version:
        return False
    return inner_net.subnet_of(outer_net)  # type: ignore[arg-type]


def covered(permit: Permit, others: Iterable[Permit]) -> bool:
    """Whether `others` together already admit everything `permit` admits."""
    spans = sorted(
        (o.port_min, o.port_max)
        for o in others
        if (o.protocol is None or o.protocol == permit.protocol)
        and _remote_covers(o.remote, permit.remote)
    )
    reach = permit.port_min
    for low, high in spans:
        if low > reach:
            break
        reach = max(reach, high + 1)
        if reach > permit.port_max:
            return True
    return False


def _dedupe(permits: Iterable[Permit]) -> list[Permit]:
    seen: dict[tuple[str | None, int, int, str], Permit] = {}
    for p in permits:
        seen.setdefault(p.key, p)
    return list(seen.values())


def diff(before: list[Permit], after: list[Permit]) -> tuple[list[Permit], list[Permit]]:
    """(opened, closed): permits that now admit something new, or no longer do."""
    before_keys = {p.key for p in before}
    after_keys = {p.key for p in after}
    opened = [p for p in _dedupe(after) if p.key not in before_keys and not covered(p, before)]
    closed = [p for p in _dedupe(before) if p.key not in after_keys and not covered(p, after)]
    return opened, closed
