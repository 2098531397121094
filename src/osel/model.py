"""Neutron resources as osel sees them: small immutable records.

Only the fields that decide reachability are kept. Each record is built from
the dict Neutron puts in a notification payload or returns from its API
(`from_neutron`) and round-trips through plain JSON (`to_json`/`from_json`) so
the inventory can be persisted in the store.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _opt_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    return int(value)


def _opt_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


@dataclass(frozen=True, slots=True)
class Rule:
    """One security-group rule."""

    id: str
    security_group_id: str
    direction: str = "ingress"
    ethertype: str = "IPv4"
    protocol: str | None = None
    port_range_min: int | None = None
    port_range_max: int | None = None
    remote_ip_prefix: str | None = None
    remote_group_id: str | None = None
    remote_address_group_id: str | None = None
    project_id: str | None = None

    @classmethod
    def from_neutron(cls, data: dict[str, Any]) -> Rule:
        protocol = _opt_str(data.get("protocol"))
        return cls(
            id=str(data["id"]),
            security_group_id=str(data["security_group_id"]),
            direction=str(data.get("direction") or "ingress"),
            ethertype=str(data.get("ethertype") or "IPv4"),
            protocol=protocol.lower() if protocol else None,
            port_range_min=_opt_int(data.get("port_range_min")),
            port_range_max=_opt_int(data.get("port_range_max")),
            remote_ip_prefix=_opt_str(data.get("remote_ip_prefix")),
            remote_group_id=_opt_str(data.get("remote_group_id")),
            remote_address_group_id=_opt_str(data.get("remote_address_group_id")),
            project_id=_opt_str(data.get("project_id") or data.get("tenant_id")),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rule:
        return cls(**data)

    def audit_view(self) -> dict[str, Any]:
        """The `security_group_rule` object of an audit record."""
        return {
            "id": self.id,
            "direction": self.direction,
            "ethertype": self.ethertype,
            "protocol": self.protocol,
            "port_range_min": self.port_range_min,
            "port_range_max": self.port_range_max,
            "remote_ip_prefix": self.remote_ip_prefix,
            "remote_group_id": self.remote_group_id,
            "remote_address_group_id": self.remote_address_group_id,
        }


@dataclass(frozen=True, slots=True)
class SecurityGroup:
    id: str
    project_id: str | None = None
    name: str = ""
    revision_number: int | None = None

    @classmethod
    def from_neutron(cls, data: dict[str, Any]) -> SecurityGroup:
        return cls(
            id=str(data["id"]),
            project_id=_opt_str(data.get("project_id") or data.get("tenant_id")),
            name=str(data.get("name") or ""),
            revision_number=_opt_int(data.get("revision_number")),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SecurityGroup:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Port:
    """A Neutron port: its addresses and the groups that filter them."""

    id: str
    fixed_ips: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    port_security_enabled: bool = True
    allowed_address_pairs: tuple[str, ...] = ()
    device_owner: str = ""
    network_id: str | None = None
    project_id: str | None = None
    revision_number: int | None = None

    @classmethod
    def from_neutron(cls, data: dict[str, Any]) -> Port:
        fixed = tuple(
            str(ip["ip_address"]) for ip in data.get("fixed_ips") or () if ip.get("ip_address")
        )
        pairs = tuple(
            str(p["ip_address"])
            for p in data.get("allowed_address_pairs") or ()
            if p.get("ip_address")
        )
        pse = data.get("port_security_enabled")
        return cls(
            id=str(data["id"]),
            fixed_ips=fixed,
            security_groups=tuple(str(s) for s in data.get("security_groups") or ()),
            port_security_enabled=True if pse is None else bool(pse),
            allowed_address_pairs=pairs,
            device_owner=str(data.get("device_owner") or ""),
            network_id=_opt_str(data.get("network_id")),
            project_id=_opt_str(data.get("project_id") or data.get("tenant_id")),
            revision_number=_opt_int(data.get("revision_number")),
        )

    @property
    def filtered(self) -> bool:
        """Whether security groups apply to this port at all.

        Neutron applies no security groups to its own infrastructure ports
        (router interfaces and gateways, DHCP, floating-IP holders).
        """
        return not self.device_owner.startswith("network:")

    def exposure_key(self) -> tuple[object, ...]:
        """The fields whose change can change what the port exposes."""
        return (
            frozenset(self.fixed_ips),
            frozenset(self.security_groups),
            self.port_security_enabled,
            frozenset(self.allowed_address_pairs),
            self.device_owner.startswith("network:"),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Port:
        return cls(
            **{
                **data,
                "fixed_ips": tuple(data.get("fixed_ips", ())),
                "security_groups": tuple(data.get("security_groups", ())),
                "allowed_address_pairs": tuple(data.get("allowed_address_pairs", ())),
            }
        )


@dataclass(frozen=True, slots=True)
class FloatingIP:
    id: str
    floating_ip_address: str
    port_id: str | None = None
    fixed_ip_address: str | None = None
    project_id: str | None = None
    revision_number: int | None = None

    @classmethod
    def from_neutron(cls, data: dict[str, Any]) -> FloatingIP:
        return cls(
            id=str(data["id"]),
            floating_ip_address=str(data["floating_ip_address"]),
            port_id=_opt_str(data.get("port_id")),
            fixed_ip_address=_opt_str(data.get("fixed_ip_address")),
            project_id=_opt_str(data.get("project_id") or data.get("tenant_id")),
            revision_number=_opt_int(data.get("revision_number")),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FloatingIP:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class AddressGroup:
    id: str
    addresses: tuple[str, ...] = ()

    @classmethod
    def from_neutron(cls, data: dict[str, Any]) -> AddressGroup:
        return cls(id=str(data["id"]), addresses=tuple(str(a) for a in data.get("addresses") or ()))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AddressGroup:
        return cls(id=data["id"], addresses=tuple(data.get("addresses", ())))


@dataclass(frozen=True, slots=True)
class Context:
    """Who made a change, from the notification's `_context_*` keys."""

    project_id: str | None = None
    user_id: str | None = None
    user_name: str | None = None
    project_name: str | None = None
    request_id: str | None = None
    global_request_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Notification:
    """One decoded OpenStack notification."""

    message_id: str
    event_type: str
    payload: dict[str, Any]
    timestamp: str
    publisher_id: str = ""
    context: Context = field(default_factory=Context)
    envelope: str = "2.0"
