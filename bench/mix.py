"""The message mix: real Neutron 29 notification bodies, made distinct.

90% of the messages are event types osel ignores (network, subnet, router,
``*.start``, ...), taken from the samples with their real sizes and only the
message id changed. 10% are security-group-rule, port and floating-IP
changes, built from the sample bodies of their type with ids, addresses and
revisions substituted so that each one is a distinct, valid change against a
synthetic cloud (`Cloud`) that is written into osel's store beforehand: every
change finds what it needs in the inventory and none needs Neutron.

Each group of the cloud goes through the same cycle of ten changes (a rule
opened, a port joining a second group, a floating IP attached, the rule
removed, a port created, the port leaving the second group, the floating IP
detached, another rule, the new port deleted, that rule removed), so the
cloud returns to its first state after each cycle and stays the same size
however many messages are generated, and every port and floating-IP revision
moves by exactly one.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from osel.handlers import HANDLERS
from osel.inventory import Inventory
from osel.model import FloatingIP, Port, Rule, SecurityGroup

SAMPLES = Path(
    os.environ.get("OSEL_BENCH_SAMPLES")
    or Path(__file__).resolve().parents[1] / "tests" / "data" / "neutron-29" / "notifications.jsonl"
)
RELEVANT_EVERY = 10  # one message in ten is a change osel acts on
PROJECT = "bench-project"
_NS = uuid.UUID("6f0c1b8e-3a52-4c1e-9d0e-5b7c2f1a9e40")
CYCLE = (
    "rule_create",
    "port_join",
    "fip_attach",
    "rule_delete",
    "port_create",
    "port_leave",
    "fip_detach",
    "rule_create_2",
    "port_delete",
    "rule_delete_2",
)
EVENT_OF = {
    "rule_create": "security_group_rule.create.end",
    "rule_create_2": "security_group_rule.create.end",
    "rule_delete": "security_group_rule.delete.end",
    "rule_delete_2": "security_group_rule.delete.end",
    "port_join": "port.update.end",
    "port_leave": "port.update.end",
    "port_create": "port.create.end",
    "port_delete": "port.delete.end",
    "fip_attach": "floatingip.update.end",
    "fip_detach": "floatingip.update.end",
}


@dataclass(frozen=True, slots=True)
class Sample:
    event_type: str
    message: dict[str, Any]  # the inner oslo message
    body: bytes  # the AMQP body as captured


@dataclass(frozen=True, slots=True)
class Message:
    message_id: str
    event_type: str
    body: bytes
    relevant: bool


def load_samples(path: Path = SAMPLES) -> list[Sample]:
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        body = json.loads(line)["body"]
        inner = json.loads(json.loads(body)["oslo.message"])
        out.append(Sample(inner["event_type"], inner, body.encode()))
    return out


def _uid(*parts: object) -> str:
    return str(uuid.uuid5(_NS, "/".join(str(p) for p in parts)))


def _ip(base: str, index: int) -> str:
    return str(ipaddress.ip_address(base) + index)


def oslo_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class Cloud:
    """A synthetic cloud: `groups` security groups of `ports` ports each.

    Every group has an IPv4 and an IPv6 egress rule, HTTPS from anywhere and
    a port of its own (10000 + its number) from anywhere;
    port 0 of each group has a floating IP, and each group has one spare
    floating IP that its cycle attaches to port 1 and detaches again.
    """

    def __init__(self, groups: int = 1000, ports: int = 4) -> None:
        if groups < 2 or ports < 3:
            raise ValueError("a cloud needs at least 2 groups of 3 ports")
        self.groups = groups
        self.ports = ports

    def group_id(self, g: int) -> str:
        return _uid("sg", g % self.groups)

    def port_id(self, g: int, j: int) -> str:
        return _uid("port", g, j)

    def port_ip(self, g: int, j: int) -> str:
        return _ip("10.16.0.0", g * self.ports + j)

    def fip_id(self, g: int, which: str) -> str:
        return _uid("fip", g, which)

    def fip_ip(self, g: int, which: str) -> str:
        return _ip("198.18.0.0", 2 * g + (which == "spare"))

    def base_rules(self, g: int) -> list[Rule]:
        sg = self.group_id(g)
        return [
            Rule(_uid("rule", g, "egress4"), sg, "egress", "IPv4", project_id=PROJECT),
            Rule(_uid("rule", g, "egress6"), sg, "egress", "IPv6", project_id=PROJECT),
            Rule(_uid("rule", g, "https"), sg, "ingress", "IPv4", "tcp", 443, 443, "0.0.0.0/0",
                 project_id=PROJECT),
            Rule(_uid("rule", g, "app"), sg, "ingress", "IPv4", "tcp", 10000 + g, 10000 + g,
                 "0.0.0.0/0", project_id=PROJECT),
        ]  # fmt: skip

    def port(self, g: int, j: int, groups: tuple[str, ...], revision: int) -> Port:
        return Port(
            id=self.port_id(g, j),
            fixed_ips=(self.port_ip(g, j),),
            security_groups=groups,
            device_owner="compute:nova",
            network_id=_uid("net", g % 16),
            project_id=PROJECT,
            revision_number=revision,
        )

    def inventory(self) -> Inventory:
        """The cloud as osel's inventory holds it, every group completely known."""
        inv = Inventory()
        for g in range(self.groups):
            sg = self.group_id(g)
            inv.put_group(SecurityGroup(sg, PROJECT, f"bench-{g}", 1))
            for rule in self.base_rules(g):
                inv.put_rule(rule)
            for j in range(self.ports):
                inv.put_port(self.port(g, j, (sg,), 1))
            inv.put_fip(
                FloatingIP(
                    self.fip_id(g, "main"),
                    self.fip_ip(g, "main"),
                    self.port_id(g, 0),
                    self.port_ip(g, 0),
                    PROJECT,
                    0,
                )
            )
            inv.put_fip(
                FloatingIP(self.fip_id(g, "spare"), self.fip_ip(g, "spare"), None, None, PROJECT, 0)
            )
            inv.mark_loaded(sg)
        return inv


class Mix:
    """Deterministic message stream for a seed; see the module docstring."""

    def __init__(self, cloud: Cloud, samples: list[Sample] | None = None, seed: int = 1) -> None:
        self.cloud = cloud
        samples = samples if samples is not None else load_samples()
        self.ignored = [s for s in samples if s.event_type not in HANDLERS]
        self.templates = {s.event_type: s.message for s in samples if s.event_type in HANDLERS}
        missing = {e for e in EVENT_OF.values() if e not in self.templates} - {"port.delete.end"}
        if missing or not self.ignored:
            raise ValueError(f"the samples lack {sorted(missing)} or any ignored event type")
        self._ignored_parts = [self._split(s) for s in self.ignored]
        self._random = random.Random(seed)

    @staticmethod
    def _split(sample: Sample) -> tuple[list[bytes], list[str]]:
        """The body cut around its message id and its `_unique_id` (which oslo.messaging
        uses to drop duplicates): the fixed parts, and which id goes between them."""
        olds = {"message_id": sample.message["message_id"], "unique": sample.message["_unique_id"]}
        found = []
        for slot, value in olds.items():
            if sample.body.count(value.encode()) != 1:
                raise ValueError(f"the {slot} of a {sample.event_type} sample is not unique in it")
            found.append((sample.body.index(value.encode()), slot, len(value)))
        parts, slots, at = [], [], 0
        for start, slot, size in sorted(found):
            parts.append(sample.body[at:start])
            slots.append(slot)
            at = start + size
        parts.append(sample.body[at:])
        return parts, slots

    def _new_id(self) -> str:
        return str(uuid.UUID(int=self._random.getrandbits(128), version=4))

    def _new_unique(self) -> str:
        return uuid.UUID(int=self._random.getrandbits(128)).hex

    def stream(self, count: int, start: int = 0) -> Iterator[Message]:
        """Messages `start` .. `start + count - 1` of the mix (one in ten relevant)."""
        for i in range(start, start + count):
            if i % RELEVANT_EVERY == RELEVANT_EVERY - 1:
                yield self.relevant(i // RELEVANT_EVERY)
            else:
                yield self.ignored_message(i)

    def ignored_message(self, i: int) -> Message:
        sample = self.ignored[i % len(self.ignored)]
        parts, slots = self._ignored_parts[i % len(self.ignored)]
        ids = {"message_id": self._new_id(), "unique": self._new_unique()}
        body = parts[0]
        for slot, part in zip(slots, parts[1:], strict=True):
            body += ids[slot].encode() + part
        return Message(ids["message_id"], sample.event_type, body, False)

    def relevant_stream(self, count: int, start: int = 0) -> Iterator[Message]:
        for n in range(start, start + count):
            yield self.relevant(n)

    def relevant(self, n: int) -> Message:
        """The n-th change: group n % groups, step (n // groups) of that group's cycle."""
        c = self.cloud
        g = n % c.groups
        k = n // c.groups
        step = CYCLE[k % len(CYCLE)]
        cycle = k // len(CYCLE)
        payload = self._payload(step, g, cycle)
        event_type = EVENT_OF[step]
        mid = self._new_id()
        template = self.templates.get(event_type) or self.templates["port.update.end"]
        message = {
            **template,
            "message_id": mid,
            "event_type": event_type,
            "payload": payload,
            "timestamp": oslo_now(),
            "_unique_id": self._new_unique(),
            "_context_project_id": PROJECT,
            "_context_project": PROJECT,
        }
        body = json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(message)})
        return Message(mid, event_type, body.encode(), True)

    # -- payloads -------------------------------------------------------------

    @cached_property
    def _rule_template(self) -> dict[str, Any]:
        return dict(
            self.templates["security_group_rule.create.end"]["payload"]["security_group_rule"]
        )

    @cached_property
    def _port_template(self) -> dict[str, Any]:
        return dict(self.templates["port.update.end"]["payload"]["port"])

    @cached_property
    def _fip_template(self) -> dict[str, Any]:
        return dict(self.templates["floatingip.update.end"]["payload"]["floatingip"])

    def _rule(self, g: int, cycle: int, second: bool) -> dict[str, Any]:
        c = self.cloud
        protocol, port = ("udp", 5000 + cycle % 1000) if second else ("tcp", 8000 + cycle % 1000)
        return {
            **self._rule_template,
            "id": _uid("rule", g, cycle, second),
            "project_id": PROJECT,
            "tenant_id": PROJECT,
            "security_group_id": c.group_id(g),
            "direction": "ingress",
            "ethertype": "IPv4",
            "protocol": protocol,
            "port_range_min": port,
            "port_range_max": port,
            "remote_ip_prefix": "0.0.0.0/0",
            "normalized_cidr": "0.0.0.0/0",
        }

    def _port(self, port: Port) -> dict[str, Any]:
        return {
            **self._port_template,
            "id": port.id,
            "network_id": port.network_id,
            "project_id": PROJECT,
            "tenant_id": PROJECT,
            "device_owner": port.device_owner,
            "fixed_ips": [
                {"subnet_id": _uid("subnet", 0), "ip_address": ip} for ip in port.fixed_ips
            ],
            "security_groups": list(port.security_groups),
            "port_security_enabled": True,
            "allowed_address_pairs": [],
            "revision_number": port.revision_number,
        }

    def _fip(self, g: int, cycle: int, attached: bool) -> dict[str, Any]:
        c = self.cloud
        return {
            **self._fip_template,
            "id": c.fip_id(g, "spare"),
            "project_id": PROJECT,
            "tenant_id": PROJECT,
            "floating_ip_address": c.fip_ip(g, "spare"),
            "port_id": c.port_id(g, 1) if attached else None,
            "fixed_ip_address": c.port_ip(g, 1) if attached else None,
            "status": "ACTIVE" if attached else "DOWN",
            "revision_number": 2 * cycle + (1 if attached else 2),
        }

    def _payload(self, step: str, g: int, cycle: int) -> dict[str, Any]:
        c = self.cloud
        own = c.group_id(g)
        last = c.ports - 1
        if step in ("rule_create", "rule_create_2"):
            return {"security_group_rule": self._rule(g, cycle, step.endswith("_2"))}
        if step in ("rule_delete", "rule_delete_2"):
            rule = self._rule(g, cycle, step.endswith("_2"))
            return {"security_group_rule_id": rule["id"], "security_group_rule": rule}
        if step == "port_join":
            groups = (own, c.group_id(g + 1))
            return {"port": self._port(c.port(g, last, groups, 2 * cycle + 2))}
        if step == "port_leave":
            return {"port": self._port(c.port(g, last, (own,), 2 * cycle + 3))}
        if step in ("port_create", "port_delete"):
            new = Port(
                id=_uid("new-port", g, cycle),
                fixed_ips=(_ip("10.200.0.0", g),),
                security_groups=(own,),
                device_owner="compute:nova",
                network_id=_uid("net", g % 16),
                project_id=PROJECT,
                revision_number=1,
            )
            if step == "port_create":
                return {"port": self._port(new)}
            return {"port_id": new.id, "port": self._port(new)}
        return {"floatingip": self._fip(g, cycle, step == "fip_attach")}
