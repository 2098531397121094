"""A burst of real changes on the local Neutron, and the Neutron calls osel makes for it.

osel consumes its own queue bound to the real ``neutron`` exchange (topic
``notifications``), with a fresh store: it loads the inventory from Neutron
at start (not counted), then a project user makes a burst of changes as fast
as the API answers: a network, two security groups, ports, many rule creates,
port updates, rule deletes, and the clean-up. Every HTTP request osel sends is
counted by host:port (`bench.counted`); the figure is Neutron requests per
relevant change osel processed in that time (its `seen_messages`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import broker
from bench.oselproc import OselProcess, clouds_yaml

NEUTRON_PORT = 9696
KEYSTONE_PORT = 5000


def stack_answers() -> bool:
    if not clouds_yaml().exists():
        return False
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{NEUTRON_PORT}/", timeout=5):
            return True
    except OSError:
        return False


def _counts(path: Path) -> dict[str, int]:
    try:
        data: dict[str, int] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {}


def _by_port(counts: dict[str, int], port: int) -> int:
    return sum(n for where, n in counts.items() if where.endswith(f":{port}"))


def _seen(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM seen_messages").fetchone()[0])


def _changes(conn: Any, ports: int, rules: int) -> int:
    """The burst; returns how many API calls that change something were made."""
    suffix = f"{random.getrandbits(32):08x}"
    made = 0
    cleanup: list[Any] = []
    try:
        net = conn.network.create_network(name=f"osel-bench-net-{suffix}")
        cleanup.append(lambda: conn.network.delete_network(net))
        cidr = ipaddress.ip_network((int(ipaddress.ip_address("10.0.0.0"))
                                     + random.randrange(2**16) * 256, 24))  # fmt: skip
        subnet = conn.network.create_subnet(
            network_id=net.id, ip_version=4, cidr=str(cidr), name=f"osel-bench-sub-{suffix}"
        )
        cleanup.append(lambda: conn.network.delete_subnet(subnet))
        groups = [
            conn.network.create_security_group(name=f"osel-bench-sg{i}-{suffix}") for i in (1, 2)
        ]
        for group in groups:
            cleanup.append(lambda g=group: conn.network.delete_security_group(g))
        made += 4
        made_ports = []
        for _ in range(ports):
            port = conn.network.create_port(network_id=net.id, security_group_ids=[groups[0].id])
            made_ports.append(port)
            cleanup.append(lambda p=port: conn.network.delete_port(p))
            made += 1
        rule_ids = []
        for i in range(rules):
            rule = conn.network.create_security_group_rule(
                security_group_id=groups[i % 2].id,
                direction="ingress",
                ethertype="IPv4",
                protocol="tcp",
                port_range_min=1000 + i,
                port_range_max=1000 + i,
                remote_ip_prefix="0.0.0.0/0",
            )
            rule_ids.append(rule.id)
            made += 1
        for port in made_ports:
            conn.network.update_port(port, security_group_ids=[groups[0].id, groups[1].id])
            made += 1
        for rule_id in rule_ids:
            conn.network.delete_security_group_rule(rule_id)
            made += 1
        for port in made_ports:
            conn.network.update_port(port, security_group_ids=[groups[0].id])
            made += 1
    finally:
        while cleanup:
            with contextlib.suppress(Exception):
                cleanup.pop()()
                made += 1
    return made


def burst(
    workdir: Path, ports: int = 6, rules: int = 40, cloud: str = "osel-demo"
) -> dict[str, Any]:
    import openstack

    os.environ.setdefault("OS_CLIENT_CONFIG_FILE", str(clouds_yaml()))
    counts = workdir / "http-counts.json"
    queue = broker.unique("queue")
    osel = OselProcess(
        workdir, exchanges=["neutron"], topics=["notifications"], queue=queue, counts=counts
    )
    db = Path(osel.store_url.split("///", 1)[1])
    try:
        osel.start(wait_for="running")
        time.sleep(2.0)
        before = _counts(counts)
        seen_before = _seen(db)
        misses_before = sum(v for _l, v in osel.metrics().get("osel_inventory_misses", []))
        conn = openstack.connect(cloud=cloud, api_timeout=30)
        began = time.monotonic()
        api_calls = _changes(conn, ports, rules)
        burst_seconds = time.monotonic() - began
        conn.close()
        # drained: the queue is empty and nothing new was committed for two seconds
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            now = _seen(db)
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since > 2.0 and broker.depth(queue) == 0:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # the counts file is rewritten twice a second
        after = _counts(counts)
        misses_after = sum(v for _l, v in osel.metrics().get("osel_inventory_misses", []))
        relevant = _seen(db) - seen_before
    finally:
        osel.stop()
        broker.delete([queue])
    neutron = _by_port(after, NEUTRON_PORT) - _by_port(before, NEUTRON_PORT)
    keystone = _by_port(after, KEYSTONE_PORT) - _by_port(before, KEYSTONE_PORT)
    return {
        "api_changes_made": api_calls,
        "burst_seconds": burst_seconds,
        "relevant_changes_processed": relevant,
        "neutron_calls": neutron,
        "keystone_calls": keystone,
        "inventory_misses": misses_after - misses_before,
        "neutron_calls_per_change": neutron / relevant if relevant else None,
        "initial_sync_calls": _by_port(before, NEUTRON_PORT),
    }
