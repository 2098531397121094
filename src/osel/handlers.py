"""Notification -> `Change`s: what each event did to the addresses it touches.

A handler resolves what it needs (the inventory, Neutron on a miss), takes the
exposure of every touched address, applies the event to the inventory, takes
the exposure again, and returns the difference. Nothing here decides about
scans or writes records: that is `osel.decide`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from osel.decode import BadMessage
from osel.exposure import Permit, diff, ip_version
from osel.inventory import Address, Inventory
from osel.model import FloatingIP, Notification, Port, Rule, SecurityGroup
from osel.resolver import Resolver

log = logging.getLogger(__name__)

RULE_CHANGES = frozenset({"sg_rule_add", "sg_rule_del"})
AUDIT_ONLY = frozenset({"sg_delete", "port_delete", "fip_disassociate", "fip_delete"})


@dataclass(slots=True)
class Effect:
    """What one change did to one address."""

    address: Address
    opened: list[Permit]
    closed: list[Permit]
    after: list[Permit]
    before: list[Permit] = field(default_factory=list)


@dataclass(slots=True)
class Change:
    change_type: str
    notification: Notification
    effects: list[Effect] = field(default_factory=list)
    rule: Rule | None = None
    security_group_id: str | None = None
    port_id: str | None = None
    floating_ip_id: str | None = None
    project_id: str | None = None
    note: str = ""  # why there are no effects, when there are none


class Snap:
    """Exposure of a set of addresses, taken before and after a mutation."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.before: dict[str, tuple[Address, list[Permit]]] = {}

    def take(self, addresses: list[Address], port: Port | None) -> None:
        for a in addresses:
            self.before[a.address] = (a, self.inventory.permits(port, a.address))

    def effects(self, addresses: list[Address], port: Port | None) -> list[Effect]:
        after = {a.address: (a, self.inventory.permits(port, a.address)) for a in addresses}
        out = []
        for key in dict.fromkeys([*self.before, *after]):
            addr, before = self.before.get(key, (None, []))
            new_addr, now = after.get(key, (addr, []))
            assert new_addr is not None
            opened, closed = diff(before, now)
            out.append(Effect(new_addr, opened, closed, now, before))
        return out


def _obj(payload: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadMessage(f"payload.{key} is a {type(value).__name__}, expected an object")
    return value


def _build(factory: Callable[[dict[str, Any]], Any], data: dict[str, Any], key: str) -> Any:
    try:
        return factory(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadMessage(f"payload.{key} has a missing or malformed field: {exc}") from exc


def _id(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key) or payload.get("id")
    if value is not None and not isinstance(value, str):
        raise BadMessage(f"payload.{key} is not a string")
    return value


def _rule_addresses(inv: Inventory, sg_id: str, rule: Rule) -> list[tuple[Address, Port]]:
    version = 6 if rule.ethertype == "IPv6" else 4
    return [
        (a, port)
        for port in inv.ports_in(sg_id)
        if port.filtered
        for a in inv.addresses_of(port)
        if ip_version(a.address) == version
    ]


def _rule_change(n: Notification, change_type: str, rule: Rule) -> Change:
    return Change(
        change_type,
        n,
        rule=rule,
        security_group_id=rule.security_group_id,
        project_id=rule.project_id or n.context.project_id,
    )


def _rule_effects(
    inv: Inventory,
    rule: Rule,
    mutate_before: Callable[[], object],
    mutate_after: Callable[[], object],
) -> list[Effect]:
    mutate_before()
    pairs = _rule_addresses(inv, rule.security_group_id, rule)
    permits = inv.permits_of_alike()
    before = {a.address: permits(p, a.address) for a, p in pairs}
    mutate_after()
    permits = inv.permits_of_alike()
    # alike ports share their permit lists, and so their difference
    diffs: dict[tuple[int, int], tuple[list[Permit], list[Permit]]] = {}
    effects = []
    for a, p in pairs:
        was, now = before[a.address], permits(p, a.address)
        pair = diffs.get((id(was), id(now)))
        if pair is None:
            pair = diffs[(id(was), id(now))] = diff(was, now)
        effects.append(Effect(a, pair[0], pair[1], now, was))
    return effects


async def rule_created(n: Notification, inv: Inventory, res: Resolver) -> list[Change]:
    payload = n.payload
    raw: list[Any]
    if "security_group_rules" in payload:
        raw = payload["security_group_rules"]
        if not isinstance(raw, list):
            raise BadMessage("payload.security_group_rules is not a list")
    else:
        one = _obj(payload, "security_group_rule")
        if one is None:
            raise BadMessage("payload.security_group_rule is missing")
        raw = [one]
    rules: list[Rule] = []
    for item in raw:
        if not isinstance(item, dict):
            raise BadMessage("a security_group_rules entry is not an object")
        rules.append(_build(Rule.from_neutron, item, "security_group_rule"))
    return [await apply_rule_add(n, rule, inv, res) for rule in rules]


async def apply_rule_add(n: Notification, rule: Rule, inv: Inventory, res: Resolver) -> Change:
    await res.ensure_groups_ports(rule.security_group_id)
    await res.ensure_address_groups([rule])
    change = _rule_change(n, "sg_rule_add", rule)
    change.effects = _rule_effects(
        inv, rule, lambda: inv.delete_rule(rule.id), lambda: inv.put_rule(rule)
    )
    return change


async def rule_deleted(n: Notification, inv: Inventory, res: Resolver) -> list[Change]:
    payload = n.payload
    data = _obj(payload, "security_group_rule")
    rule_id = _id(payload, "security_group_rule_id")
    rule: Rule | None = None
    if data is not None:
        rule = _build(Rule.from_neutron, data, "security_group_rule")
    elif rule_id:
        rule = await res.rule(rule_id)
    if rule is None:
        if not rule_id:
            raise BadMessage("payload.security_group_rule_id is missing")
        log.warning(
            "rule %s deleted, but its details are in neither the payload nor the "
            "inventory: recorded without addresses",
            rule_id,
        )
        return [
            Change(
                "sg_rule_del",
                n,
                rule=Rule(id=rule_id, security_group_id=""),
                project_id=n.context.project_id,
                note="rule details unknown: not in the payload nor the inventory",
            )
        ]
    return [await apply_rule_del(n, rule, inv, res)]


async def apply_rule_del(n: Notification, rule: Rule, inv: Inventory, res: Resolver) -> Change:
    await res.ensure_groups_ports(rule.security_group_id)
    await res.ensure_address_groups([rule])
    change = _rule_change(n, "sg_rule_del", rule)
    change.effects = _rule_effects(
        inv, rule, lambda: inv.put_rule(rule), lambda: inv.delete_rule(rule.id)
    )
    return change


async def group_created(n: Notification, inv: Inventory, res: Resolver) -> list[Change]:
    data = _obj(n.payload, "security_group")
    if data is None:
        raise BadMessage("payload.security_group is missing")
    group = _build(SecurityGroup.from_neutron, data, "security_group")
    inv.put_group(group)
    rules = data.get("security_group_rules") or []
    if isinstance(rules, list):
        for item in rules:
            if isinstance(item, dict):
                inv.put_rule(_build(Rule.from_neutron, item, "security_group_rules"))
        if n.event_type.startswith("security_group.create"):
            inv.mark_loaded(group.id)  # a new group has every rule in the payload, no ports
    return []


async def group_deleted(n: Notification, inv: Inventory, res: Resolver) -> list[Change]:
    sg_id = _id(n.payload, "security_group_id")
    data = _obj(n.payload, "security_group")
    if not sg_id and data is not None:
        sg_id = str(data.get("id") or "")
    if not sg_id:
        raise BadMessage("payload.security_group_id is missing")
    group = inv.groups.get(sg_id)
    project = (data or {}).get("project_id") or (group.project_id if group else None)
    inv.delete_group(sg_id)
    return [
        Change(
            "sg_delete",
            n,
            security_group_id=sg_id,
            project_id=project or n.context.project_id,
            note="security group deleted (a group in use cannot be deleted)",
        )
    ]


def _port_change(n: Notification, change_type: str, port: Port) -> Change:
    return Change(
        change_type, n, port_id=port.id, project_id=port.project_id or n.context.project_id
    )


async def port_created_or_updated(n: Notification, inv: Inventory, res: Resolver) -> list[Change]:
    data = _obj(n.payload, "port")
    if data is None:
        raise BadMessage("payload.port is missing")
    port = _build(Port.from_neutron, data, "port")
    change = await apply_port(n, port, ".create." in n.event_type, inv, res)
    return [change] if change is not None else []


def _revision_gap(kind: str, old_rev: int | None, new_rev: int | None, rid: str) -> bool:
    if old_rev is None or new_rev is None or new_rev <= old_rev + 1:
        return False
    log.info(
        "%s %s went from revision %d to %d: a notification may have been missed; "
        "re-reading what it depends on from Neutron",
        kind,
        rid,
        old_rev,
        new_rev,
    )
    return True


async def apply_port(
    n: Notification, port: Port, creating: bool, inv: Inventory, res: Resolver
) -> Change | None:
    old = None if creating else inv.ports.get(port.id)
    if old is not None and _revision_gap(
        "port", old.revision_number, port.revision_number, port.id
    ):
        res.revision_gaps += 1
        for sg_id in port.security_groups:
            inv.loaded_groups.discard(sg_id)
    if old is not None and old.exposure_key() == port.exposure_key():
        inv.put_port(port)  # keep revision current; nothing that decides reachability changed
        return None
    await res.ensure_port_context(port)
    if not creating and old is None:
        log.info("port %s updated but not in the inventory: treating all of it as new", port.id)
    snap = Snap(inv)
    if old is not None:
        snap.take(inv.addresses_of(old), old)
    inv.put_port(port)
    effects = snap.effects(inv.addresses_of(port), port)
    effects = [e for e in effects if e.opened or e.closed]
    if not effects:
        return None
    change = _port_change(n, "port_create" if creating else "port_update", port)
    change.effects = effects
    return change


async def port_deleted(n: Notification, inv: Inventory, res: Resolver) -> list[Change]:
    data = _obj(n.payload, "port")
    port_id = _id(n.payload, "port_id")
    port = _build(Port.from_neutron, data, "port") if data is not None else None
    if port is None and port_id:
        port = inv.ports.get(port_id)
    if port is None:
        if not port_id:
            raise BadMessage("payload.port_id is missing")
        return [
            Change(
                "port_delete",
                n,
                port_id=port_id,
                project_id=n.context.project_id,
                note="port details unknown: not in the payload nor the inventory",
            )
        ]
    return [apply_port_delete(n, port, inv)]


def apply_port_delete(n: Notification, port: Port, inv: Inventory) -> Change:
    known = inv.ports.get(port.id, port)
    snap = Snap(inv)
    snap.take(inv.addresses_of(known), known)
    for fip in inv.fips_of(port.id):  # Neutron disassociates them silently
        inv.put_fip(
            FloatingIP(
                fip.id, fip.floating_ip_address, None, None, fip.project_id, fip.revision_number
            )
        )
    inv.delete_port(port.id)
    change = _port_change(n, "port_delete", port)
    change.effects = snap.effects([], None)
    return change


async def fip_created_or_updated(n: Notification, inv: Inventory, res: Resolver) -> list[Change]:
    data = _obj(n.payload, "floatingip")
    if data is None:
        raise BadMessage("payload.floatingip is missing")
    fip = _build(FloatingIP.from_neutron, data, "floatingip")
    change = await apply_fip(n, fip, ".create." in n.event_type, inv, res)
    return [change] if change is not None else []


async def apply_fip(
    n: Notification, fip: FloatingIP, creating: bool, inv: Inventory, res: Resolver
) -> Change | None:
    old = None if creating else inv.fips.get(fip.id)
    old_port_id = old.port_id if old else None
    if old is not None and _revision_gap(
        "floating IP", old.revision_number, fip.revision_number, fip.id
    ):
        res.revision_gaps += 1
    if old_port_id == fip.port_id:
        inv.put_fip(fip)
        return None
    old_port = await res.port(old_port_id) if old_port_id else None
    new_port = await res.port(fip.port_id) if fip.port_id else None
    snap = Snap(inv)
    if old_port is not None:
        snap.take([Address(fip.floating_ip_address, old_port.id, "floating", fip.id)], old_port)
    inv.put_fip(fip)
    addr = Address(fip.floating_ip_address, fip.port_id or old_port_id or "", "floating", fip.id)
    change = Change(
        "fip_associate" if fip.port_id else "fip_disassociate",
        n,
        port_id=fip.port_id or old_port_id,
        floating_ip_id=fip.id,
        project_id=fip.project_id or n.context.project_id,
    )
    change.effects = snap.effects([addr], new_port)
    return change


async def fip_deleted(n: Notification, inv: Inventory, res: Resolver) -> list[Change]:
    data = _obj(n.payload, "floatingip")
    fip_id = _id(n.payload, "floatingip_id")
    fip = _build(FloatingIP.from_neutron, data, "floatingip") if data is not None else None
    if fip is None and fip_id:
        fip = inv.fips.get(fip_id)
    if fip is None:
        if not fip_id:
            raise BadMessage("payload.floatingip_id is missing")
        return [
            Change(
                "fip_delete",
                n,
                floating_ip_id=fip_id,
                project_id=n.context.project_id,
                note="floating IP details unknown: not in the payload nor the inventory",
            )
        ]
    known = inv.fips.get(fip.id, fip)
    port = inv.ports.get(known.port_id) if known.port_id else None
    snap = Snap(inv)
    if port is not None:
        snap.take([Address(fip.floating_ip_address, port.id, "floating", fip.id)], port)
    inv.delete_fip(fip.id)
    change = Change(
        "fip_delete",
        n,
        port_id=known.port_id,
        floating_ip_id=fip.id,
        project_id=fip.project_id or n.context.project_id,
    )
    change.effects = snap.effects([], None)
    if not change.effects:
        change.effects = [
            Effect(Address(fip.floating_ip_address, "", "floating", fip.id), [], [], [])
        ]
    return [change]


Handler = Callable[[Notification, Inventory, Resolver], Awaitable[list[Change]]]

HANDLERS: dict[str, Handler] = {
    "security_group_rule.create.end": rule_created,
    "security_group_rule.delete.end": rule_deleted,
    "security_group.create.end": group_created,
    "security_group.update.end": group_created,
    "security_group.delete.end": group_deleted,
    "port.create.end": port_created_or_updated,
    "port.update.end": port_created_or_updated,
    "port.delete.end": port_deleted,
    "floatingip.create.end": fip_created_or_updated,
    "floatingip.update.end": fip_created_or_updated,
    "floatingip.delete.end": fip_deleted,
}
