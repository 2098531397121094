"""Fill the inventory from Neutron when a change touches something unknown."""

from __future__ import annotations

import asyncio
import logging

from osel.inventory import Inventory
from osel.model import Port, Rule
from osel.neutron import NeutronAPI, NeutronUnavailable

log = logging.getLogger(__name__)


class Resolver:
    """Makes sure the inventory knows what a change needs, asking Neutron on a miss.

    Raises `NeutronUnavailable` when something is missing and Neutron does
    not answer; the caller then keeps the change for later.
    """

    def __init__(self, inventory: Inventory, neutron: NeutronAPI | None) -> None:
        self.inventory = inventory
        self.neutron = neutron
        self.misses = 0
        self.revision_gaps = 0

    def _api(self, what: str) -> NeutronAPI:
        if self.neutron is None:
            raise NeutronUnavailable(f"{what} is not in the inventory and no Neutron is configured")
        self.misses += 1
        return self.neutron

    async def ensure_group(self, sg_id: str) -> None:
        """Rules and member ports of a group, with those ports' floating IPs."""
        inv = self.inventory
        if sg_id in inv.loaded_groups:
            return
        api = self._api(f"security group {sg_id}")
        group, rules, ports = await asyncio.gather(
            api.get_security_group(sg_id), api.rules_of_group(sg_id), api.ports_in_group(sg_id)
        )
        if group is not None:
            inv.put_group(group)
        for rule in rules:
            inv.put_rule(rule)
        new_ports = [p for p in ports if p.id not in inv.ports]
        fips = await asyncio.gather(*(api.fips_of_port(p.id) for p in new_ports))
        for port in ports:
            if port.id not in inv.ports:
                inv.put_port(port)
        for fip in (f for batch in fips for f in batch):
            inv.put_fip(fip)
        inv.mark_loaded(sg_id)
        await self.ensure_address_groups(rules)

    async def ensure_address_groups(self, rules: list[Rule]) -> None:
        inv = self.inventory
        for rule in rules:
            ag_id = rule.remote_address_group_id
            if ag_id and inv.address_group(ag_id) is None:
                group = await self._api(f"address group {ag_id}").get_address_group(ag_id)
                if group is not None:
                    inv.put_address_group(group)

    async def ensure_port_context(self, port: Port) -> None:
        """Everything needed to compute the exposure of a port's addresses."""
        for sg_id in port.security_groups:
            await self.ensure_group(sg_id)

    async def ensure_groups_ports(self, sg_id: str) -> list[Port]:
        """The group and the full context of every port in it."""
        await self.ensure_group(sg_id)
        ports = self.inventory.ports_in(sg_id)
        for port in ports:
            await self.ensure_port_context(port)
        return ports

    async def port(self, port_id: str) -> Port | None:
        port = self.inventory.ports.get(port_id)
        if port is None:
            port = await self._api(f"port {port_id}").get_port(port_id)
            if port is not None:
                fips = await self._api(f"floating IPs of port {port_id}").fips_of_port(port_id)
                self.inventory.put_port(port)
                for fip in fips:
                    self.inventory.put_fip(fip)
        if port is not None:
            await self.ensure_port_context(port)
        return port

    async def rule(self, rule_id: str) -> Rule | None:
        rule = self.inventory.rules.get(rule_id)
        if rule is None and self.neutron is not None:
            rule = await self._api(f"rule {rule_id}").get_rule(rule_id)
        return rule
