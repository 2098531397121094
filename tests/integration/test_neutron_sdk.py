"""SdkNeutron against the real Keystone + Neutron of scripts/openstack/stack.sh.

The scenario is built once per module as admin, inside project `demo`; the
queries run as `osel`, the least-privileged reader of the admin project.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import yaml

from osel.model import Rule
from osel.neutron import NeutronUnavailable
from osel.neutron_sdk import SdkNeutron
from tests.integration import neutron_fixtures as nf

pytestmark = [
    pytest.mark.integration,
    # openstacksdk 4.x warns on every resource object it builds (the helpers build them)
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack.*"),
]

if not nf.clouds_yaml().exists():
    pytest.skip(
        f"no {nf.clouds_yaml()}: run `scripts/openstack/stack.sh up` first",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def admin() -> Iterator[Any]:
    conn = nf.connect("osel-admin")
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def scenario(admin: Any) -> Iterator[nf.Scenario]:
    cleanup = nf.Cleanup()
    try:
        yield nf.build_scenario(admin, cleanup, project_id=nf.project_id(admin, "demo"))
    finally:
        assert cleanup.run() == []


@pytest.fixture
async def neutron(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SdkNeutron]:
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(nf.clouds_yaml()))
    client = SdkNeutron(cloud="osel", timeout=10)
    yield client
    await client.close()


def osel_auth(**changes: str) -> dict[str, Any]:
    clouds = yaml.safe_load(nf.clouds_yaml().read_text())
    return {**clouds["clouds"]["osel"]["auth"], **changes}


def fixed_ips(port: Any) -> tuple[str, ...]:
    return tuple(ip["ip_address"] for ip in port.fixed_ips)


async def test_ports_in_group(neutron: SdkNeutron, scenario: nf.Scenario) -> None:
    found = await neutron.ports_in_group(scenario.group.id)
    assert {(p.id, p.fixed_ips) for p in found} == {(p.id, fixed_ips(p)) for p in scenario.ports}
    assert all(p.security_groups == (scenario.group.id,) for p in found)
    assert all(p.port_security_enabled and p.filtered for p in found)
    assert {p.project_id for p in found} == {scenario.group.project_id}


async def test_fips_of_port(neutron: SdkNeutron, scenario: nf.Scenario) -> None:
    with_fip, without = scenario.ports
    [fip] = await neutron.fips_of_port(with_fip.id)
    assert (fip.id, fip.floating_ip_address) == (
        scenario.floating_ip.id,
        scenario.floating_ip.floating_ip_address,
    )
    assert (fip.port_id, fip.fixed_ip_address) == (with_fip.id, fixed_ips(with_fip)[0])
    assert await neutron.fips_of_port(without.id) == []
    assert await neutron.get_floating_ip(fip.id) == fip


async def test_rules(neutron: SdkNeutron, scenario: nf.Scenario) -> None:
    rule = await neutron.get_rule(scenario.ssh_rule.id)
    assert rule == Rule(
        id=scenario.ssh_rule.id,
        security_group_id=scenario.group.id,
        direction="ingress",
        ethertype="IPv4",
        protocol="tcp",
        port_range_min=22,
        port_range_max=22,
        remote_ip_prefix="0.0.0.0/0",
        project_id=scenario.group.project_id,
    )
    rules = await neutron.rules_of_group(scenario.group.id)
    assert rule in rules
    [ag_rule] = [r for r in rules if r.id == scenario.ag_rule.id]
    assert ag_rule.remote_address_group_id == scenario.address_group.id
    assert {r.direction for r in rules} == {"ingress", "egress"}  # the default egress rules


async def test_group_and_address_group(neutron: SdkNeutron, scenario: nf.Scenario) -> None:
    group = await neutron.get_security_group(scenario.group.id)
    assert group is not None and group.name == scenario.group.name
    ag = await neutron.get_address_group(scenario.address_group.id)
    assert ag is not None
    assert set(ag.addresses) == {"192.0.2.0/28", "198.51.100.7/32"}


async def test_unknown_and_deleted_ids(
    neutron: SdkNeutron, scenario: nf.Scenario, admin: Any
) -> None:
    cleanup = nf.Cleanup()
    port = nf.create_port(admin, cleanup, network=scenario.network, security_groups=[])
    assert (await neutron.get_port(port.id)) is not None
    assert cleanup.run() == []
    unknown = str(uuid.uuid4())
    assert await neutron.get_port(port.id) is None
    assert await neutron.get_port(unknown) is None
    assert await neutron.get_port("not-a-uuid") is None
    assert await neutron.get_rule(unknown) is None
    assert await neutron.get_security_group(unknown) is None
    assert await neutron.get_floating_ip(unknown) is None
    assert await neutron.get_address_group(unknown) is None
    assert await neutron.ports_in_group(unknown) == []
    assert await neutron.rules_of_group(unknown) == []
    assert await neutron.fips_of_port(unknown) == []


async def test_snapshot(neutron: SdkNeutron, scenario: nf.Scenario) -> None:
    await neutron.get_port(scenario.ports[0].id)  # authenticated, endpoint discovered
    before = neutron.calls
    snap = await neutron.snapshot()
    assert neutron.calls - before == 4
    assert scenario.group.id in {g.id for g in snap.security_groups}
    assert {scenario.ssh_rule.id, scenario.ag_rule.id} <= {r.id for r in snap.rules}
    ports = {p.id: p for p in snap.ports}
    assert {p.id for p in scenario.ports} <= set(ports)
    assert ports[scenario.ports[0].id].fixed_ips == fixed_ips(scenario.ports[0])
    assert scenario.floating_ip.id in {f.id for f in snap.floating_ips}
    assert scenario.address_group.id in {a.id for a in snap.address_groups}
    # the router's own ports are there too, and are not filtered
    assert any(not p.filtered for p in snap.ports if p.network_id == scenario.network.id)


async def test_wrong_password(scenario: nf.Scenario) -> None:
    password = f"wrong-{uuid.uuid4().hex}"
    client = SdkNeutron(auth=osel_auth(password=password), timeout=10)
    try:
        with pytest.raises(NeutronUnavailable) as err:
            await client.get_port(scenario.ports[0].id)
    finally:
        await client.close()
    message = str(err.value)
    assert password not in message and osel_auth()["password"] not in message
    assert "credentials" in message and "127.0.0.1:5000" in message


async def test_unreachable_keystone() -> None:
    client = SdkNeutron(auth=osel_auth(auth_url="http://127.0.0.1:1/v3"), timeout=2)
    started = time.monotonic()
    try:
        with pytest.raises(NeutronUnavailable, match=r"127\.0\.0\.1:1\b"):
            await client.get_port(str(uuid.uuid4()))
    finally:
        await client.close()
    assert time.monotonic() - started < 2.5


async def test_silent_keystone_ends_at_the_timeout() -> None:
    """A server that accepts connections and never answers: the deadline holds."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v3"
        client = SdkNeutron(auth=osel_auth(auth_url=url), timeout=1.5)
        started = time.monotonic()
        try:
            with pytest.raises(NeutronUnavailable, match=r"no answer .* within 1\.5s"):
                await client.get_port(str(uuid.uuid4()))
            assert time.monotonic() - started < 2.0
        finally:
            await client.close()
