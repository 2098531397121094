"""The small interface osel needs from Neutron.

The decision logic only ever talks to `NeutronAPI`; the openstacksdk adapter
lives in `osel.neutron_sdk`, and tests may pass any object with these methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from osel.model import AddressGroup, FloatingIP, Port, Rule, SecurityGroup


class NeutronError(Exception):
    """Base class of errors from the Neutron adapter."""


class NeutronUnavailable(NeutronError):
    """Neutron (or Keystone in front of it) cannot be reached right now.

    The change that needed it is kept and resolved later; it is never dropped.
    """


@dataclass(slots=True)
class Snapshot:
    """Everything osel tracks, as Neutron reports it now (a full sync)."""

    security_groups: list[SecurityGroup] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    ports: list[Port] = field(default_factory=list)
    floating_ips: list[FloatingIP] = field(default_factory=list)
    address_groups: list[AddressGroup] = field(default_factory=list)


class NeutronAPI(Protocol):
    """Read-only Neutron queries. Every method raises `NeutronUnavailable`
    when Neutron or Keystone does not answer (timeouts, connection errors,
    5xx, authentication failures); a resource that does not exist is `None`
    or an empty list, never an exception."""

    async def get_security_group(self, sg_id: str) -> SecurityGroup | None: ...

    async def rules_of_group(self, sg_id: str) -> list[Rule]: ...

    async def get_rule(self, rule_id: str) -> Rule | None: ...

    async def ports_in_group(self, sg_id: str) -> list[Port]: ...

    async def get_port(self, port_id: str) -> Port | None: ...

    async def fips_of_port(self, port_id: str) -> list[FloatingIP]: ...

    async def get_floating_ip(self, fip_id: str) -> FloatingIP | None: ...

    async def get_address_group(self, ag_id: str) -> AddressGroup | None: ...

    async def snapshot(self) -> Snapshot: ...

    async def close(self) -> None: ...


class OfflineNeutron:
    """No Neutron at all (`osel replay --offline`): every miss is unavailable."""

    async def _no(self) -> None:
        raise NeutronUnavailable("running offline: Neutron is not asked")

    async def get_security_group(self, sg_id: str) -> SecurityGroup | None:
        await self._no()
        return None

    async def rules_of_group(self, sg_id: str) -> list[Rule]:
        await self._no()
        return []

    async def get_rule(self, rule_id: str) -> Rule | None:
        await self._no()
        return None

    async def ports_in_group(self, sg_id: str) -> list[Port]:
        await self._no()
        return []

    async def get_port(self, port_id: str) -> Port | None:
        await self._no()
        return None

    async def fips_of_port(self, port_id: str) -> list[FloatingIP]:
        await self._no()
        return []

    async def get_floating_ip(self, fip_id: str) -> FloatingIP | None:
        await self._no()
        return None

    async def get_address_group(self, ag_id: str) -> AddressGroup | None:
        await self._no()
        return None

    async def snapshot(self) -> Snapshot:
        await self._no()
        return Snapshot()

    async def close(self) -> None:
        return None
