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
        assert [p.rule_id for p in inv.permits(port, "10.0.0.5")] == [f"rule-{cycle}"]
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
    assert inv._permits == {}  # nor the permits of rules long gone
    assert inv.rules_of("sg2") == [] and inv.ports_in("sg1") == []


def test_a_rules_permits_are_kept_while_it_is_and_follow_its_replacement():
    inv = Inventory()
    inv.put_group(SecurityGroup("sg1", "p1"))
    port = Port.from_neutron(m.port("port-1", ["10.0.0.5", "fd00::5"], ["sg1"]))
    inv.put_port(port)
    inv.put_rule(Rule("r1", "sg1", protocol="tcp", port_range_min=22, port_range_max=22))
    inv.put_rule(Rule("r6", "sg1", ethertype="IPv6", protocol="udp"))
    first = inv.permits(port, "10.0.0.5")
    assert [(p.protocol, p.port_min, p.port_max) for p in first] == [("tcp", 22, 22)]
    held = inv._permits["r1"][1]
    assert inv.permits(port, "10.0.0.5") == first
    assert inv._permits["r1"][1] is held  # computed once, then kept
    assert [p.protocol for p in inv.permits(port, "fd00::5")] == ["udp"]
    # the same id with other content (as a reload from Neutron could bring): new permits
    inv.put_rule(Rule("r1", "sg1", protocol="tcp", port_range_min=443, port_range_max=443))
    assert [(p.port_min, p.port_max) for p in inv.permits(port, "10.0.0.5")] == [(443, 443)]
    inv.rules["r1"] = Rule("r1", "sg1", protocol="tcp", port_range_min=80, port_range_max=80)
    assert [p.port_min for p in inv.permits(port, "10.0.0.5")] == [80]  # not by id alone
    inv.clear()
    assert inv._permits == {}


def test_alike_ports_share_one_answer_and_every_port_gets_its_own_permits():
    inv = Inventory()
    for sg in ("sg1", "sg2"):
        inv.put_group(SecurityGroup(sg, "p1"))
    inv.put_rule(Rule("r1", "sg1", protocol="tcp", port_range_min=22, port_range_max=22))
    inv.put_rule(Rule("r2", "sg2", protocol="tcp", port_range_min=80, port_range_max=80))
    inv.put_rule(Rule("r6", "sg1", ethertype="IPv6", protocol="udp"))
    ports = [
        Port.from_neutron(m.port("a1", ["10.0.0.1"], ["sg1"])),
        Port.from_neutron(m.port("a2", ["10.0.0.2"], ["sg1"])),
        Port.from_neutron(m.port("both", ["10.0.0.3"], ["sg1", "sg2"])),
        Port.from_neutron(m.port("open", ["10.0.0.4"], ["sg1"], port_security_enabled=False)),
        Port.from_neutron(m.port("v6", ["10.0.0.5", "fd00::5"], ["sg1"])),
        Port.from_neutron(m.port("router", ["10.0.0.6"], ["sg1"], device_owner="network:dhcp")),
    ]
    for port in ports:
        inv.put_port(port)
    alike = inv.permits_of_alike()
    answers = {}
    for port in ports:
        for address in port.fixed_ips:
            answers[address] = alike(port, address)
            assert answers[address] == inv.permits(port, address), (port.id, address)
    assert answers["10.0.0.1"] is answers["10.0.0.2"]  # alike: worked out once
    assert answers["10.0.0.5"] is answers["10.0.0.1"]
    assert [p.protocol for p in answers["fd00::5"]] == ["udp"]
    assert [p.port_min for p in answers["10.0.0.3"]] == [22, 80]
    assert answers["10.0.0.4"][0].internet and answers["10.0.0.6"] == []
    assert alike(None, "10.0.0.1") == []
