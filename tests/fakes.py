"""A Neutron stand-in for unit tests of the decision logic (no sockets)."""

from __future__ import annotations

from osel.model import AddressGroup, FloatingIP, Port, Rule, SecurityGroup
from osel.neutron import NeutronUnavailable, Snapshot


class FakeNeutron:
    def __init__(self) -> None:
        self.groups: dict[str, SecurityGroup] = {}
        self.rules: dict[str, Rule] = {}
        self.ports: dict[str, Port] = {}
        self.fips: dict[str, FloatingIP] = {}
        self.address_groups: dict[str, AddressGroup] = {}
        self.calls = 0
        self.down = False

    def _call(self) -> None:
        self.calls += 1
        if self.down:
            raise NeutronUnavailable("fake Neutron is down")

    async def get_security_group(self, sg_id: str) -> SecurityGroup | None:
        self._call()
        return self.groups.get(sg_id)

    async def rules_of_group(self, sg_id: str) -> list[Rule]:
        self._call()
        return [r for r in self.rules.values() if r.security_group_id == sg_id]

    async def get_rule(self, rule_id: str) -> Rule | None:
        self._call()
        return self.rules.get(rule_id)

    async def ports_in_group(self, sg_id: str) -> list[Port]:
        self._call()
        return [p for p in self.ports.values() if sg_id in p.security_groups]

    async def get_port(self, port_id: str) -> Port | None:
        self._call()
        return self.ports.get(port_id)

    async def fips_of_port(self, port_id: str) -> list[FloatingIP]:
        self._call()
        return [f for f in self.fips.values() if f.port_id == port_id]

    async def get_floating_ip(self, fip_id: str) -> FloatingIP | None:
        self._call()
        return self.fips.get(fip_id)

    async def get_address_group(self, ag_id: str) -> AddressGroup | None:
        self._call()
        return self.address_groups.get(ag_id)

    async def snapshot(self) -> Snapshot:
        self._call()
        return Snapshot(
            list(self.groups.values()),
            list(self.rules.values()),
            list(self.ports.values()),
            list(self.fips.values()),
            list(self.address_groups.values()),
        )

    async def close(self) -> None:
        return None


class FakeDelivery:
    def __init__(self, body: bytes, tag: int) -> None:
        self.body = body
        self.delivery_tag = tag
        self.broker = "fake-broker"
        self.ignored: str | None = None


class FakeSource:
    """An in-memory message source with the AmqpSource interface."""

    def __init__(self) -> None:
        import asyncio

        self.queue: asyncio.Queue[FakeDelivery] = asyncio.Queue()
        self.tag = 0
        self.acked = 0
        self.nacked: list[int] = []

    def publish(self, body: bytes) -> None:
        self.tag += 1
        self.queue.put_nowait(FakeDelivery(body, self.tag))

    async def start(self) -> None:
        return None

    async def get_batch(self, max_messages: int, max_wait: float) -> list[FakeDelivery]:
        import asyncio

        try:
            first = await asyncio.wait_for(self.queue.get(), timeout=max_wait or 0.01)
        except TimeoutError:
            return []
        out = [first]
        while len(out) < max_messages and not self.queue.empty():
            out.append(self.queue.get_nowait())
        return out

    async def ack(self, deliveries: list[FakeDelivery]) -> None:
        self.acked = max(self.acked, *(d.delivery_tag for d in deliveries))

    async def nack(self, delivery: FakeDelivery, requeue: bool = True) -> None:
        self.nacked.append(delivery.delivery_tag)
        if requeue:
            self.tag += 1
            self.queue.put_nowait(FakeDelivery(delivery.body, self.tag))

    async def close(self) -> None:
        return None
