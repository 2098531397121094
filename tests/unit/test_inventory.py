"""The in-memory inventory's indexes follow the resources in it."""

from __future__ import annotations

from osel.inventory import Inventory
from osel.model import FloatingIP, Port, Rule, SecurityGroup
from tests import messages as m


def test_resources_that_come_and_go_leave_nothing_behind_in_the_indexes():
    inv = Inventory()
    inv.put_group(SecurityGroup("sg1", "p1"))
    inv.put_group(SecurityGroup("sg2", "p1"))
    for cycle in range(100):  # what a busy cloud does all day, with fresh ids each time
        port = Port.from_neutron(m.port(f"port-{cycle}", ["10.0.0.5"], ["sg1", "sg2"]))
        inv.put_port(port)
        inv.put_rule(Rule(f"rule-{cycle}", "sg2", protocol="tcp", port_range_min=22))
        inv.put_fip(FloatingIP("fip-1", "203.0.113.7", port.id, "10.0.0.5"))
        assert [f.id for f in inv.fips_of(port.id)] == ["fip-1"]
        assert [p.id for p in inv.ports_in("sg2")] == [port.id]
        inv.put_fip(FloatingIP("fip-1", "203.0.113.7", None))  # detached
        inv.put_port(Port.from_neutron(m.port(port.id, ["10.0.0.5"], ["sg1"])))  # left sg2
        inv.delete_rule(f"rule-{cycle}")
        inv.delete_port(port.id)
    assert inv._fips_by_port == {}
    assert inv._ports_by_group == {}
    assert inv._rules_by_group == {}
    assert inv.rules_of("sg2") == [] and inv.ports_in("sg1") == []
