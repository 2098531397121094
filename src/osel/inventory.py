"""osel's picture of Neutron: security groups, rules, ports, floating IPs.

Kept current from the notifications themselves (so "before" and "after" of a
change are what osel last processed, not what Neutron says now), filled from
Neutron on a miss, and persisted in the store with the change that altered it.
Pure in-memory structure: loading and fetching live in `osel.resolver`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from osel.exposure import Permit, ip_version, plain_rule_permits, port_permits
from osel.model import AddressGroup, FloatingIP, Port, Rule, SecurityGroup


@dataclass(slots=True)
class Dirty:
    """What changed since the last commit, by kind: id -> record (None = deleted)."""

    groups: dict[str, SecurityGroup | None] = field(default_factory=dict)
    rules: dict[str, Rule | None] = field(default_factory=dict)
    ports: dict[str, Port | None] = field(default_factory=dict)
    fips: dict[str, FloatingIP | None] = field(default_factory=dict)
    address_groups: dict[str, AddressGroup | None] = field(default_factory=dict)
    loaded_groups: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(
            self.groups
            or self.rules
            or self.ports
            or self.fips
            or self.address_groups
            or self.loaded_groups
        )


@dataclass(frozen=True, slots=True)
class Address:
    """One address of a port: fixed, allowed-address-pair, or floating."""

    address: str
    port_id: str
    kind: str  # fixed | pair | floating
    floating_ip_id: str | None = None


class Inventory:
    def __init__(self) -> None:
        self.generation = 0  # how many times it was cleared: a reload since, if it moved
        self.clear()

    def clear(self) -> None:
        """Forget everything (before reloading from the store)."""
        self.generation += 1
        self.groups: dict[str, SecurityGroup] = {}
        self.rules: dict[str, Rule] = {}
        self.ports: dict[str, Port] = {}
        self.fips: dict[str, FloatingIP] = {}
        self.address_groups: dict[str, AddressGroup] = {}
        # groups whose rules and member ports are completely known
        self.loaded_groups: set[str] = set()
        self._rules_by_group: dict[str, set[str]] = defaultdict(set)
        self._ports_by_group: dict[str, set[str]] = defaultdict(set)
        self._fips_by_port: dict[str, set[str]] = defaultdict(set)
        # the permits of each rule that names no address group, computed when first
        # asked and kept with the rule they were computed from, as long as it is held
        self._permits: dict[str, tuple[Rule, tuple[Permit, ...]]] = {}
        self.dirty = Dirty()

    # --- queries -----------------------------------------------------------

    def rules_of(self, sg_id: str) -> list[Rule]:
        return [self.rules[r] for r in sorted(self._rules_by_group.get(sg_id, ()))]

    def ports_in(self, sg_id: str) -> list[Port]:
        return [self.ports[p] for p in sorted(self._ports_by_group.get(sg_id, ()))]

    def fips_of(self, port_id: str) -> list[FloatingIP]:
        return [self.fips[f] for f in sorted(self._fips_by_port.get(port_id, ()))]

    def address_group(self, ag_id: str) -> AddressGroup | None:
        return self.address_groups.get(ag_id)

    def addresses_of(self, port: Port) -> list[Address]:
        out = [Address(ip, port.id, "fixed") for ip in port.fixed_ips]
        out += [Address(ip, port.id, "pair") for ip in port.allowed_address_pairs]
        out += [
            Address(f.floating_ip_address, port.id, "floating", f.id) for f in self.fips_of(port.id)
        ]
        return out

    def permits(self, port: Port | None, address: str) -> list[Permit]:
        if port is None:
            return []
        version = ip_version(address)
        if version is None:
            return []
        return port_permits(port, version, self.rules_of, self.address_group, self._plain)

    def permits_of_alike(self) -> Callable[[Port | None, str], list[Permit]]:
        """`permits`, worked out once for ports that are alike: the same groups, port
        security and filtering, and an address of the same IP version. A rule change
        judges every address of its group against one state of the inventory; on a
        group of many ports and rules, most of them share one answer. Only for use
        while the inventory does not change."""
        held: dict[tuple[tuple[str, ...], bool, bool, int | None], list[Permit]] = {}

        def permits(port: Port | None, address: str) -> list[Permit]:
            if port is None:
                return []
            key = (
                port.security_groups,
                port.port_security_enabled,
                port.filtered,
                ip_version(address),
            )
            found = held.get(key)
            if found is None:
                found = held[key] = self.permits(port, address)
            return found

        return permits

    def _plain(self, rule: Rule, version: int) -> tuple[Permit, ...]:
        """The permits of a rule that names no address group: a function of the rule
        alone, asked for again and again as ports are judged. A rule applies to one IP
        version only (its ethertype), so the rule's id is key enough."""
        held = self._permits.get(rule.id)
        if held is None or held[0] is not rule:
            held = self._permits[rule.id] = (rule, plain_rule_permits(rule, version))
        return held[1]

    def group_ids(self) -> Iterator[str]:
        yield from self.groups

    # --- mutations ---------------------------------------------------------

    def put_group(self, group: SecurityGroup) -> None:
        self.groups[group.id] = group
        self.dirty.groups[group.id] = group

    def mark_loaded(self, sg_id: str) -> None:
        if sg_id not in self.loaded_groups:
            self.loaded_groups.add(sg_id)
            self.dirty.loaded_groups.add(sg_id)

    def delete_group(self, sg_id: str) -> None:
        for rule_id in list(self._rules_by_group.get(sg_id, ())):
            self.delete_rule(rule_id)
        self.groups.pop(sg_id, None)
        self.loaded_groups.discard(sg_id)
        self._rules_by_group.pop(sg_id, None)
        self.dirty.groups[sg_id] = None

    def put_rule(self, rule: Rule) -> None:
        old = self.rules.get(rule.id)
        if old is not None and old.security_group_id != rule.security_group_id:
            _unindex(self._rules_by_group, old.security_group_id, rule.id)
        self.rules[rule.id] = rule
        self._permits.pop(rule.id, None)
        self._rules_by_group[rule.security_group_id].add(rule.id)
        self.dirty.rules[rule.id] = rule

    def delete_rule(self, rule_id: str) -> Rule | None:
        rule = self.rules.pop(rule_id, None)
        self._permits.pop(rule_id, None)
        if rule is not None:
            _unindex(self._rules_by_group, rule.security_group_id, rule_id)
        self.dirty.rules[rule_id] = None
        return rule

    def put_port(self, port: Port) -> None:
        old = self.ports.get(port.id)
        if old is not None:
            for sg in old.security_groups:
                _unindex(self._ports_by_group, sg, port.id)
        self.ports[port.id] = port
        for sg in port.security_groups:
            self._ports_by_group[sg].add(port.id)
        self.dirty.ports[port.id] = port

    def delete_port(self, port_id: str) -> Port | None:
        port = self.ports.pop(port_id, None)
        if port is not None:
            for sg in port.security_groups:
                _unindex(self._ports_by_group, sg, port_id)
        self.dirty.ports[port_id] = None
        return port

    def put_fip(self, fip: FloatingIP) -> None:
        old = self.fips.get(fip.id)
        if old is not None and old.port_id:
            _unindex(self._fips_by_port, old.port_id, fip.id)
        self.fips[fip.id] = fip
        if fip.port_id:
            self._fips_by_port[fip.port_id].add(fip.id)
        self.dirty.fips[fip.id] = fip

    def delete_fip(self, fip_id: str) -> FloatingIP | None:
        fip = self.fips.pop(fip_id, None)
        if fip is not None and fip.port_id:
            _unindex(self._fips_by_port, fip.port_id, fip_id)
        self.dirty.fips[fip_id] = None
        return fip

    def put_address_group(self, group: AddressGroup) -> None:
        self.address_groups[group.id] = group
        self.dirty.address_groups[group.id] = group

    def apply(self, changes: Dirty) -> None:
        """Take in what another instance committed, without marking it dirty here."""
        kept, self.dirty = self.dirty, Dirty()
        for sg_id, group in changes.groups.items():
            if group is None:
                self.delete_group(sg_id)
            else:
                self.put_group(group)
                self.loaded_groups.discard(sg_id)
        self.loaded_groups.update(changes.loaded_groups)
        for rule_id, rule in changes.rules.items():
            if rule is None:
                self.delete_rule(rule_id)
            else:
                self.put_rule(rule)
        for port_id, port in changes.ports.items():
            if port is None:
                self.delete_port(port_id)
            else:
                self.put_port(port)
        for fip_id, fip in changes.fips.items():
            if fip is None:
                self.delete_fip(fip_id)
            else:
                self.put_fip(fip)
        for ag_id, ag in changes.address_groups.items():
            if ag is None:
                self.address_groups.pop(ag_id, None)
            else:
                self.put_address_group(ag)
        self.dirty = kept

    def take_dirty(self) -> Dirty:
        dirty, self.dirty = self.dirty, Dirty()
        return dirty

    def load(
        self,
        *,
        groups: Iterable[SecurityGroup] = (),
        rules: Iterable[Rule] = (),
        ports: Iterable[Port] = (),
        fips: Iterable[FloatingIP] = (),
        address_groups: Iterable[AddressGroup] = (),
        loaded_groups: Iterable[str] = (),
    ) -> None:
        """Fill from the store or a snapshot without marking anything dirty."""
        for g in groups:
            self.put_group(g)
        for r in rules:
            self.put_rule(r)
        for p in ports:
            self.put_port(p)
        for f in fips:
            self.put_fip(f)
        for a in address_groups:
            self.put_address_group(a)
        self.loaded_groups.update(loaded_groups)
        self.dirty = Dirty()


def _unindex(index: dict[str, set[str]], key: str, member: str) -> None:
    """Take `member` out of `index[key]`, and the key out with its last member: a
    cloud's ports and groups come and go, and an index must not keep them all."""
    members = index.get(key)
    if members is not None:
        members.discard(member)
        if not members:
            del index[key]
