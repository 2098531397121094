"""Full re-sync: compare Neutron's state with the inventory, and record what was missed.

Every difference is a notification osel never saw (lost before it reached
the queue, or sent while Neutron's notifier was off). Each becomes a change
with `event_type: osel.resync`, goes through the same decision as a
notification (so a missed opening is scanned), and is counted. Run it only
when the queue is drained: a message still waiting would otherwise look like
a gap.
"""

from __future__ import annotations

import logging
import uuid

from osel.handlers import (
    Change,
    apply_fip,
    apply_port,
    apply_port_delete,
    apply_rule_add,
    apply_rule_del,
)
from osel.inventory import Inventory
from osel.model import Notification, Port
from osel.neutron import Snapshot
from osel.resolver import Resolver

log = logging.getLogger(__name__)

RESYNC_EVENT = "osel.resync"


def _synthetic(now: str) -> Notification:
    return Notification(f"resync:{uuid.uuid4()}", RESYNC_EVENT, {}, now, "osel")


async def reconcile(snap: Snapshot, inv: Inventory, res: Resolver, *, now: str) -> list[Change]:
    """Bring the inventory to `snap`; return the changes that were missed."""
    n = _synthetic(now)
    for group in snap.security_groups:
        inv.put_group(group)
    for ag in snap.address_groups:
        inv.put_address_group(ag)
    known_ports = set(inv.ports)
    # ports osel knows first: group membership must be current before rules are diffed
    changes = await _ports(n, [p for p in snap.ports if p.id in known_ports], False, inv, res)
    changes += await _rules(n, snap, inv, res)
    changes += await _ports(n, [p for p in snap.ports if p.id not in known_ports], True, inv, res)
    live_ports = {p.id for p in snap.ports}
    changes += [
        apply_port_delete(n, p, inv) for p in list(inv.ports.values()) if p.id not in live_ports
    ]
    changes += await _fips(n, snap, inv, res)
    live_groups = {g.id for g in snap.security_groups}
    for sg_id in [g for g in inv.groups if g not in live_groups]:
        inv.delete_group(sg_id)
    for group in snap.security_groups:
        inv.mark_loaded(group.id)
    if changes:
        log.warning(
            "re-sync found %d change(s) that no notification reported; recorded them "
            "with event_type %s",
            len(changes),
            RESYNC_EVENT,
        )
    return changes


async def _ports(
    n: Notification, ports: list[Port], creating: bool, inv: Inventory, res: Resolver
) -> list[Change]:
    changes = [await apply_port(n, port, creating, inv, res) for port in ports]
    return [c for c in changes if c is not None]


async def _rules(n: Notification, snap: Snapshot, inv: Inventory, res: Resolver) -> list[Change]:
    changes = [await apply_rule_add(n, r, inv, res) for r in snap.rules if r.id not in inv.rules]
    live = {r.id for r in snap.rules}
    for rule in [r for r in inv.rules.values() if r.id not in live]:
        changes.append(await apply_rule_del(n, rule, inv, res))
    return changes


async def _fips(n: Notification, snap: Snapshot, inv: Inventory, res: Resolver) -> list[Change]:
    changes = [await apply_fip(n, f, f.id not in inv.fips, inv, res) for f in snap.floating_ips]
    live = {f.id for f in snap.floating_ips}
    for fip_id in [f for f in inv.fips if f not in live]:
        inv.delete_fip(fip_id)
    return [c for c in changes if c is not None]


def load_snapshot(snap: Snapshot, inv: Inventory) -> None:
    """First start with an empty store: take Neutron's state as it is, no records."""
    inv.load(
        groups=snap.security_groups,
        rules=snap.rules,
        ports=snap.ports,
        fips=snap.floating_ips,
        address_groups=snap.address_groups,
        loaded_groups=[g.id for g in snap.security_groups],
    )
