"""The core acceptance scenario: real Neutron, real RabbitMQ, a real osel process."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration import neutron_fixtures as nf
from tests.integration.osel_process import OselProcess, Record

pytestmark = pytest.mark.integration


def rule_records(change_type: str, rule_id: str) -> Callable[[Record], bool]:
    def match(r: Record) -> bool:
        return (
            r["record_type"] == "change"
            and r["change_type"] == change_type
            and (r.get("security_group_rule") or {}).get("id") == rule_id
        )

    return match


def addresses(records: list[Record]) -> list[str]:
    return sorted(r["affected_ip_address"] for r in records)


def port_ips(port: nf.Resource) -> list[str]:
    return [ip["ip_address"] for ip in port.fixed_ips]


def test_exposure_changes_become_exact_records(admin, cleanup, osel: OselProcess):
    osel.start()
    ext, _ = nf.create_external_network(admin, cleanup)
    net, subnet = nf.create_private_network(admin, cleanup)
    nf.create_router(admin, cleanup, external_network=ext, subnet=subnet)
    group = nf.create_security_group(admin, cleanup)
    other = nf.create_security_group(admin, cleanup)
    quiet = nf.create_security_group(admin, cleanup)
    p1, p2, p3 = (
        nf.create_port(admin, cleanup, network=net, security_groups=[group.id]) for _ in range(3)
    )
    stranger = nf.create_port(admin, cleanup, network=net, security_groups=[other.id])
    fip1 = nf.create_floating_ip(admin, cleanup, external_network=ext, port=p1)
    # SSH open on the other group first, scanned in a batch of its own
    other_ssh = nf.add_rule(admin, cleanup, other)
    (first,) = osel.wait_records(rule_records("sg_rule_add", other_ssh.id), 1)
    osel.wait_records(
        lambda r: (
            r["record_type"] == "scan"
            and r["scan_state"] == "launched"
            and first["record_id"] in r["change_record_ids"]
        ),
        1,
    )

    # an ingress tcp/22 rule from anywhere: one record per address, one dry-run batch
    ssh = nf.add_rule(admin, cleanup, group)
    expected = sorted([*port_ips(p1), *port_ips(p2), *port_ips(p3), fip1.floating_ip_address])
    added = osel.wait_records(rule_records("sg_rule_add", ssh.id), len(expected))
    assert addresses(added) == expected
    assert all(r["internet_exposed"] and r["scan_state"] == "queued" for r in added)
    assert all(r["security_group_rule"]["port_range_min"] == 22 for r in added)
    uuids = {r["record_id"] for r in added}
    (batch,) = osel.wait_records(
        lambda r: (
            r["record_type"] == "scan"
            and r["scan_state"] == "launched"
            and bool(set(r["change_record_ids"]) & uuids)
        ),
        1,
    )
    assert sorted(batch["target_addresses"]) == expected

    # egress: records, no scan
    egress = nf.add_rule(admin, cleanup, group, direction="egress", port_range=(25, 25))
    out = osel.wait_records(rule_records("sg_rule_add", egress.id), len(expected))
    assert all(r["scan_state"] == "skipped" and not r["internet_exposed"] for r in out)

    # a rule that opens nothing new: recorded, not rescanned
    narrower = nf.add_rule(admin, cleanup, group, remote_ip_prefix="198.51.100.0/24")
    same = osel.wait_records(rule_records("sg_rule_add", narrower.id), len(expected))
    assert all(r["scan_state"] == "skipped" and r["opened"] == [] for r in same)

    # delete the SSH rule: the same addresses, their window closed
    admin.network.delete_security_group_rule(ssh.id)
    gone = osel.wait_records(rule_records("sg_rule_del", ssh.id), len(expected))
    assert addresses(gone) == expected
    for r in gone:
        (closed,) = [c for c in r["closed"] if c["remote"] == "0.0.0.0/0"]
        assert closed["window_opened_at"] and closed["window_closed_at"]

    # put SSH back, then a floating IP on the third port: fip_associate for that address
    nf.add_rule(admin, cleanup, group, port_range=(22, 22))
    fip3 = nf.create_floating_ip(admin, cleanup, external_network=ext, port=p3)
    (assoc,) = osel.wait_records(
        lambda r: r["change_type"] == "fip_associate" and r["floating_ip_id"] == fip3.id, 1
    )
    assert assoc["affected_ip_address"] == fip3.floating_ip_address
    assert assoc["scan_state"] == "queued" and assoc["internet_exposed"]

    # a fourth port, so far in a group with no ingress rule, joins the group
    p4 = nf.create_port(admin, cleanup, network=net, security_groups=[quiet.id])
    admin.network.update_port(p4, security_groups=[quiet.id, group.id])
    joined = osel.wait_records(
        lambda r: r["change_type"] == "port_update" and r["port_id"] == p4.id, 1
    )
    assert addresses(joined) == port_ips(p4)
    assert any(o["port_range_min"] == 22 for o in joined[0]["opened"])

    # the port in the other group only ever appears in that group's own records
    seen = {
        r["security_group_id"]
        for r in osel.records()
        if r.get("affected_ip_address") in port_ips(stranger)
    }
    assert seen == {other.id}
