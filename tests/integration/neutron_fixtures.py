"""Build Neutron scenarios on the real test stack with plain openstacksdk.

Every helper takes an admin `openstack.connection.Connection` and a `Cleanup`
that undoes what it created, newest first. Names carry a random suffix, so
tests can run again and side by side on the same stack. `project_id` puts a
resource into another project (admin may do that), which is how tests check
that osel sees every project.

    cleanup = Cleanup()
    try:
        scenario = build_scenario(conn, cleanup, project_id=demo_id)
        ...
    finally:
        cleanup.run()
"""

from __future__ import annotations

import ipaddress
import os
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openstack
import openstack.exceptions

Connection = Any  # openstack.connection.Connection (untyped)
Resource = Any  # an openstacksdk resource object

STACK_DIR = Path(os.environ.get("OSEL_STACK_DIR") or Path.home() / ".cache" / "osel-stack")
CLOUDS_YAML = STACK_DIR / "clouds.yaml"


def clouds_yaml() -> Path:
    """The clouds.yaml written by scripts/openstack/stack.sh (OS_CLIENT_CONFIG_FILE wins)."""
    return Path(os.environ.get("OS_CLIENT_CONFIG_FILE") or CLOUDS_YAML)


def connect(cloud: str) -> Connection:
    """A connection to one of the stack's clouds: osel-admin, osel, osel-demo."""
    os.environ.setdefault("OS_CLIENT_CONFIG_FILE", str(clouds_yaml()))
    return openstack.connect(cloud=cloud, api_timeout=30)


def unique(prefix: str) -> str:
    return f"osel-test-{prefix}-{uuid.uuid4().hex[:10]}"


def random_cidr(base: str, prefixlen: int = 24) -> str:
    """A random `/prefixlen` inside `base` (e.g. 10.0.0.0/8)."""
    net = ipaddress.ip_network(base)
    index = random.randrange(2 ** (prefixlen - net.prefixlen))
    first = int(net.network_address) + index * 2 ** (net.max_prefixlen - prefixlen)
    return str(ipaddress.ip_network((first, prefixlen)))


@dataclass
class Cleanup:
    """Undo actions, run newest first; a resource already gone is fine."""

    actions: list[tuple[str, Callable[[], object]]] = field(default_factory=list)

    def add(self, what: str, action: Callable[[], object]) -> None:
        self.actions.append((what, action))

    def run(self) -> list[str]:
        """Run every action; returns the ones that failed (and why)."""
        failed: list[str] = []
        while self.actions:
            what, action = self.actions.pop()
            try:
                action()
            except openstack.exceptions.NotFoundException:
                pass
            except Exception as exc:
                failed.append(f"{what}: {type(exc).__name__}: {exc}")
        return failed


def _owner(project_id: str | None) -> dict[str, str]:
    return {"project_id": project_id} if project_id else {}


def create_external_network(
    conn: Connection, cleanup: Cleanup, *, cidr: str | None = None
) -> tuple[Resource, Resource]:
    """A flat `router:external` network (its own physnet) and a subnet without DHCP."""
    name = unique("ext")
    net = conn.network.create_network(
        name=name,
        is_router_external=True,
        provider_network_type="flat",
        provider_physical_network=name[-20:],
    )
    cleanup.add(f"network {net.id}", lambda: conn.network.delete_network(net.id))
    subnet = conn.network.create_subnet(
        name=name,
        network_id=net.id,
        ip_version=4,
        cidr=cidr or random_cidr("198.18.0.0/15"),
        is_dhcp_enabled=False,
    )
    cleanup.add(f"subnet {subnet.id}", lambda: conn.network.delete_subnet(subnet.id))
    return net, subnet


def create_private_network(
    conn: Connection, cleanup: Cleanup, *, cidr: str | None = None, project_id: str | None = None
) -> tuple[Resource, Resource]:
    name = unique("priv")
    net = conn.network.create_network(name=name, **_owner(project_id))
    cleanup.add(f"network {net.id}", lambda: conn.network.delete_network(net.id))
    subnet = conn.network.create_subnet(
        name=name,
        network_id=net.id,
        ip_version=4,
        cidr=cidr or random_cidr("10.0.0.0/8"),
        **_owner(project_id),
    )
    cleanup.add(f"subnet {subnet.id}", lambda: conn.network.delete_subnet(subnet.id))
    return net, subnet


def create_router(
    conn: Connection,
    cleanup: Cleanup,
    *,
    external_network: Resource,
    subnet: Resource,
    project_id: str | None = None,
) -> Resource:
    """A router with its gateway on `external_network` and an interface on `subnet`."""
    router = conn.network.create_router(
        name=unique("router"),
        external_gateway_info={"network_id": external_network.id},
        **_owner(project_id),
    )
    cleanup.add(f"router {router.id}", lambda: conn.network.delete_router(router.id))
    conn.network.add_interface_to_router(router, subnet=subnet.id)
    cleanup.add(
        f"router interface {router.id}/{subnet.id}",
        lambda: conn.network.remove_interface_from_router(router, subnet=subnet.id),
    )
    return router


def create_security_group(
    conn: Connection, cleanup: Cleanup, *, project_id: str | None = None
) -> Resource:
    group = conn.network.create_security_group(name=unique("sg"), **_owner(project_id))
    cleanup.add(f"security group {group.id}", lambda: conn.network.delete_security_group(group.id))
    return group


def add_rule(
    conn: Connection,
    cleanup: Cleanup,
    group: Resource,
    *,
    direction: str = "ingress",
    protocol: str | None = "tcp",
    port_range: tuple[int, int] | None = (22, 22),
    remote_ip_prefix: str | None = "0.0.0.0/0",
    remote_address_group_id: str | None = None,
    ethertype: str = "IPv4",
) -> Resource:
    attrs: dict[str, Any] = {
        "security_group_id": group.id,
        "direction": direction,
        "ether_type": ethertype,
        "protocol": protocol,
        "remote_ip_prefix": remote_ip_prefix,
        "remote_address_group_id": remote_address_group_id,
    }
    if port_range is not None:
        attrs["port_range_min"], attrs["port_range_max"] = port_range
    if group.project_id:
        attrs["project_id"] = group.project_id
    rule = conn.network.create_security_group_rule(
        **{k: v for k, v in attrs.items() if v is not None}
    )
    cleanup.add(f"rule {rule.id}", lambda: conn.network.delete_security_group_rule(rule.id))
    return rule


def create_port(
    conn: Connection,
    cleanup: Cleanup,
    *,
    network: Resource,
    security_groups: list[str],
    project_id: str | None = None,
) -> Resource:
    port = conn.network.create_port(
        name=unique("port"),
        network_id=network.id,
        security_group_ids=security_groups,
        device_owner="compute:nova",
        **_owner(project_id),
    )
    cleanup.add(f"port {port.id}", lambda: conn.network.delete_port(port.id))
    return port


def create_floating_ip(
    conn: Connection,
    cleanup: Cleanup,
    *,
    external_network: Resource,
    port: Resource | None = None,
    project_id: str | None = None,
) -> Resource:
    attrs: dict[str, Any] = {"floating_network_id": external_network.id, **_owner(project_id)}
    if port is not None:
        attrs["port_id"] = port.id
    fip = conn.network.create_ip(**attrs)
    cleanup.add(f"floating IP {fip.id}", lambda: conn.network.delete_ip(fip.id))
    return fip


def create_address_group(
    conn: Connection, cleanup: Cleanup, *, addresses: list[str], project_id: str | None = None
) -> Resource:
    group = conn.network.create_address_group(
        name=unique("ag"), addresses=addresses, **_owner(project_id)
    )
    cleanup.add(f"address group {group.id}", lambda: conn.network.delete_address_group(group.id))
    return group


def project_id(conn: Connection, name: str) -> str:
    project = conn.identity.find_project(name, ignore_missing=False)
    return str(project.id)


@dataclass
class Scenario:
    """Two ports in one group on a routed private network, one with a floating IP."""

    external_network: Resource
    external_subnet: Resource
    network: Resource
    subnet: Resource
    router: Resource
    group: Resource
    ssh_rule: Resource
    address_group: Resource
    ag_rule: Resource
    ports: list[Resource]
    floating_ip: Resource


def build_scenario(
    conn: Connection, cleanup: Cleanup, *, project_id: str | None = None
) -> Scenario:
    """External net + router + private net, a group with an SSH rule open to the
    world and a rule from an address group, two ports in it, a floating IP on the first."""
    ext_net, ext_subnet = create_external_network(conn, cleanup)
    net, subnet = create_private_network(conn, cleanup, project_id=project_id)
    router = create_router(
        conn, cleanup, external_network=ext_net, subnet=subnet, project_id=project_id
    )
    group = create_security_group(conn, cleanup, project_id=project_id)
    ssh_rule = add_rule(conn, cleanup, group)
    ag = create_address_group(
        conn, cleanup, addresses=["192.0.2.0/28", "198.51.100.7/32"], project_id=project_id
    )
    ag_rule = add_rule(
        conn,
        cleanup,
        group,
        port_range=(443, 443),
        remote_ip_prefix=None,
        remote_address_group_id=ag.id,
    )
    ports = [
        create_port(conn, cleanup, network=net, security_groups=[group.id], project_id=project_id)
        for _ in range(2)
    ]
    fip = create_floating_ip(
        conn, cleanup, external_network=ext_net, port=ports[0], project_id=project_id
    )
    return Scenario(
        external_network=ext_net,
        external_subnet=ext_subnet,
        network=net,
        subnet=subnet,
        router=router,
        group=group,
        ssh_rule=ssh_rule,
        address_group=ag,
        ag_rule=ag_rule,
        ports=ports,
        floating_ip=fip,
    )
