"""Neutron resources as osel sees them: small immutable records.

Only the fields that decide reachability are kept. Each record is built from
the dict Neutron puts in a notification payload or returns from its API
(`from_neutron`) and round-trips through plain JSON (`to_json`/`from_json`) so
the inventory can be persisted in the store.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _opt_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    return int(value)


def _port(value: Any) -> int | None:
    port = _opt_int(value)
    if port is not None and not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return port


def _opt_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return str(value)


def _id(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} is missing or not a non-empty string")
    return value


def _list(value: Any, key: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{key} is a {type(value).__name__}, expected a list")
    return value


def _addresses(value: Any, key: str) -> tuple[str, ...]:
    out = []
    for entry in _list(value, key):
        if not isinstance(entry, dict):
            raise ValueError(f"an entry of {key} is not an object")
        address = _opt_str(entry.get("ip_address"))
        if address:
            out.append(address)
    return tuple(out)


def _choice(value: Any, key: str, allowed: tuple[str, ...], default: str) -> str:
    if value is None or value == "":
        return default
    if value not in allowed:
        raise ValueError(f"{key} is {value!r}, expected one of {', '.join(allowed)}")
    return str(value)


def _flat(record: Any) -> dict[str, Any]:
    """`dataclasses.asdict` for the flat records here (strings, numbers, tuples of
    strings), without its deep copy: the inventory writes one per changed resource."""
    names = _FIELDS.get(type(record))
    if names is None:
        names = _FIELDS[type(record)] = tuple(f.name for f in fields(record))
    return {name: getattr(record, name) for name in names}


_FIELDS: dict[type, tuple[str, ...]] = {}


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
            id=_id(data.get("id"), "id"),
            security_group_id=_id(data.get("security_group_id"), "security_group_id"),
            direction=_choice(data.get("direction"), "direction", ("ingress", "egress"), "ingress"),
            ethertype=_choice(data.get("ethertype"), "ethertype", ("IPv4", "IPv6"), "IPv4"),
            protocol=protocol.lower() if protocol else None,
            port_range_min=_port(data.get("port_range_min")),
            port_range_max=_port(data.get("port_range_max")),
            remote_ip_prefix=_opt_str(data.get("remote_ip_prefix")),
            remote_group_id=_opt_str(data.get("remote_group_id")),
            remote_address_group_id=_opt_str(data.get("remote_address_group_id")),
            project_id=_opt_str(data.get("project_id") or data.get("tenant_id")),
        )

    def to_json(self) -> dict[str, Any]:
        return _flat(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rule:
        return cls(**data)

    def to_neutron(self) -> dict[str, Any]:
        """The rule as Neutron's API and notifications show it (the fields osel keeps)."""
        return {**_flat(self), "tenant_id": self.project_id}

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
            id=_id(data.get("id"), "id"),
            project_id=_opt_str(data.get("project_id") or data.get("tenant_id")),
            name=_opt_str(data.get("name")) or "",
            revision_number=_opt_int(data.get("revision_number")),
        )

    def to_json(self) -> dict[str, Any]:
        return _flat(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SecurityGroup:
        return cls(**data)

    def to_neutron(self, rules: list[Rule] | None = None) -> dict[str, Any]:
        """The group as Neutron shows it; with `rules`, its `security_group_rules` too."""
        data: dict[str, Any] = {**_flat(self), "tenant_id": self.project_id}
        if rules is not None:
            data["security_group_rules"] = [r.to_neutron() for r in rules]
        return data


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
        pse = data.get("port_security_enabled")
        if pse is not None and not isinstance(pse, bool):
            raise ValueError("port_security_enabled is not a boolean")
        return cls(
            id=_id(data.get("id"), "id"),
            fixed_ips=_addresses(data.get("fixed_ips"), "fixed_ips"),
            security_groups=tuple(
                _id(sg, "security_groups[]")
                for sg in _list(data.get("security_groups"), "security_groups")
            ),
            port_security_enabled=True if pse is None else pse,
            allowed_address_pairs=_addresses(
                data.get("allowed_address_pairs"), "allowed_address_pairs"
            ),
            device_owner=_opt_str(data.get("device_owner")) or "",
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
        return _flat(self)

    def to_neutron(self) -> dict[str, Any]:
        """The port as Neutron shows it (the fields osel keeps; `from_neutron` reads it back)."""
        return {
            "id": self.id,
            "fixed_ips": [{"ip_address": ip} for ip in self.fixed_ips],
            "security_groups": list(self.security_groups),
            "port_security_enabled": self.port_security_enabled,
            "allowed_address_pairs": [{"ip_address": ip} for ip in self.allowed_address_pairs],
            "device_owner": self.device_owner,
            "network_id": self.network_id,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "revision_number": self.revision_number,
        }

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
            id=_id(data.get("id"), "id"),
            floating_ip_address=_id(data.get("floating_ip_address"), "floating_ip_address"),
            port_id=_opt_str(data.get("port_id")),
            fixed_ip_address=_opt_str(data.get("fixed_ip_address")),
            project_id=_opt_str(data.get("project_id") or data.get("tenant_id")),
            revision_number=_opt_int(data.get("revision_number")),
        )

    def to_json(self) -> dict[str, Any]:
        return _flat(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FloatingIP:
        return cls(**data)

    def to_neutron(self) -> dict[str, Any]:
        """The floating IP as Neutron shows it (the fields osel keeps)."""
        return {**_flat(self), "tenant_id": self.project_id}


@dataclass(frozen=True, slots=True)
class AddressGroup:
    id: str
    addresses: tuple[str, ...] = ()

    @classmethod
    def from_neutron(cls, data: dict[str, Any]) -> AddressGroup:
        addresses = _list(data.get("addresses"), "addresses")
        return cls(id=_id(data.get("id"), "id"), addresses=tuple(str(a) for a in addresses))

    def to_json(self) -> dict[str, Any]:
        return _flat(self)

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
        return _flat(self)


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
