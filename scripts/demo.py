"""The osel demo: real changes on the local OpenStack, as osel records them.

Started by `scripts/demo` (which installs everything and brings up Keystone +
Neutron first). It starts `osel run` with the dry-run scanner, then, as the
`demo` project's user, opens SSH to the world on a security group whose port
has a floating IP, attaches another floating IP, and closes the rule again.
After each step it shows what osel recorded. `--ci` exits after the scenario
(non-zero if a step produced no records); otherwise osel keeps running until
Ctrl-C, and everything the demo made is removed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openstack
import pika
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "var" / "demo"
QUEUE = "osel-demo"
PREFIX = "osel-demo-"
Record = dict[str, Any]


class Demo:
    def __init__(self, ci: bool) -> None:
        self.ci = ci
        self.admin = openstack.connect(cloud="osel-admin", api_timeout=30)
        self.user = openstack.connect(cloud="osel-demo", api_timeout=30)
        self.proc: subprocess.Popen[bytes] | None = None
        self.failures: list[str] = []

    # --- osel ----------------------------------------------------------------

    def start_osel(self) -> None:
        WORK.mkdir(parents=True, exist_ok=True)
        for name in ("audit.jsonl", "osel.db", "osel.db-wal", "osel.db-shm", "osel.log"):
            (WORK / name).unlink(missing_ok=True)
        config = {
            "service": {"instance_name": "osel-demo", "batch_wait_ms": 20},
            "amqp": {"queue": QUEUE},
            "openstack": {"cloud": "osel"},
            "scan": {"backend": "dry-run", "window_seconds": 2},
            "audit": {"sinks": [{"type": "file", "path": str(WORK / "audit.jsonl")}]},
            "store": {"url": f"sqlite:///{WORK / 'osel.db'}"},
            "http": {"enabled": False},
        }
        (WORK / "osel.yaml").write_text(yaml.safe_dump(config))
        log = (WORK / "osel.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "osel", "run", "-c", str(WORK / "osel.yaml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait("osel starting", lambda: "running" in (WORK / "osel.log").read_text(), 60)

    def records(self) -> list[Record]:
        path = WORK / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def wait(self, what: str, done: Callable[[], bool], timeout: float = 30) -> bool:
        spinner = itertools.cycle("|/-\\")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                print(f"\r  {what}: done{' ' * 20}")
                return True
            if self.proc is not None and self.proc.poll() is not None:
                print(f"\r  {what}: osel exited ({self.proc.returncode}); see {WORK}/osel.log")
                return False
            if sys.stdout.isatty():
                print(f"\r  {what} {next(spinner)}", end="", flush=True)
            time.sleep(0.2)
        print(f"\r  {what}: nothing after {timeout:.0f}s")
        return False

    # --- the scenario -------------------------------------------------------

    def step(
        self, title: str, action: Callable[[], Callable[[Record], bool]], expect: int
    ) -> list[Record]:
        print(f"\n== {title}")
        match = action()
        found: list[Record] = []

        def enough() -> bool:
            found[:] = [r for r in self.records() if match(r)]
            return len(found) >= expect

        if not self.wait("waiting for osel's records", enough):
            self.failures.append(title)
        for r in found:
            opened = (
                ", ".join(
                    f"{p['protocol']}/{p['port_range_min']}-{p['port_range_max']} "
                    f"from {p['remote']}"
                    for p in r["opened"]
                )
                or "-"
            )
            closed = (
                ", ".join(
                    f"{p['protocol']}/{p['port_range_min']}-{p['port_range_max']}"
                    for p in r["closed"]
                )
                or "-"
            )
            print(
                f"  {r['change_type']:<16} {r['affected_ip_address']:<16} "
                f"internet={str(r['internet_exposed']).lower():<5} scan={r['scan_state']:<8} "
                f"opened: {opened}; closed: {closed}"
            )
        self.show_scans({r["record_id"] for r in found})
        return found

    def show_scans(self, record_ids: set[str]) -> None:
        def launched() -> list[Record]:
            return [
                r
                for r in self.records()
                if r["record_type"] == "scan"
                and r["scan_state"] == "launched"
                and set(r["change_record_ids"]) & record_ids
            ]

        queued = [
            r
            for r in self.records()
            if r.get("record_id") in record_ids and r["scan_state"] == "queued"
        ]
        if not queued:
            print("  no scan: nothing newly reachable")
            return
        if self.wait("waiting for the scan batch", lambda: bool(launched()), 20):
            for scan in launched():
                print(
                    f"  scan batch {scan['scan_batch_id']} ({scan['scan_backend']}): "
                    f"{', '.join(scan['target_addresses'])}"
                )
        else:
            self.failures.append("scan batch")

    def build(self) -> dict[str, Any]:
        print(
            "\n== building a small cloud as the demo project: network, router, group, port, "
            "floating IP"
        )
        ext = self.external_network()
        net = self.user.network.create_network(name=PREFIX + "net")
        subnet = self.user.network.create_subnet(
            name=PREFIX + "subnet", network_id=net.id, ip_version=4, cidr="10.77.0.0/24"
        )
        router = self.user.network.create_router(
            name=PREFIX + "router", external_gateway_info={"network_id": ext.id}
        )
        self.user.network.add_interface_to_router(router, subnet=subnet.id)
        group = self.user.network.create_security_group(name=PREFIX + "web")
        ports = [
            self.user.network.create_port(
                name=f"{PREFIX}vm{i}",
                network_id=net.id,
                security_group_ids=[group.id],
                device_owner="compute:nova",
            )
            for i in (1, 2)
        ]
        fip = self.user.network.create_ip(floating_network_id=ext.id, port_id=ports[0].id)
        print(
            f"  group {group.name}: ports {', '.join(p.fixed_ips[0]['ip_address'] for p in ports)}"
            f", floating IP {fip.floating_ip_address} on the first"
        )
        return {"ext": ext, "group": group, "ports": ports}

    def external_network(self) -> Any:
        ext = self.admin.network.find_network(PREFIX + "public")
        if ext is None:
            ext = self.admin.network.create_network(
                name=PREFIX + "public",
                is_router_external=True,
                provider_network_type="flat",
                provider_physical_network="osel-demo",
            )
            self.admin.network.create_subnet(
                name=PREFIX + "public",
                network_id=ext.id,
                ip_version=4,
                cidr="198.51.100.0/24",
                is_dhcp_enabled=False,
            )
        return ext

    def scenario(self) -> None:
        world = self.build()
        group, ports, ext = world["group"], world["ports"], world["ext"]
        rule: dict[str, Any] = {}

        def open_ssh() -> Callable[[Record], bool]:
            r = self.user.network.create_security_group_rule(
                security_group_id=group.id,
                direction="ingress",
                ether_type="IPv4",
                protocol="tcp",
                port_range_min=22,
                port_range_max=22,
                remote_ip_prefix="0.0.0.0/0",
            )
            rule["id"] = r.id
            return lambda rec: (
                rec["change_type"] == "sg_rule_add"
                and (rec.get("security_group_rule") or {}).get("id") == r.id
            )

        def attach() -> Callable[[Record], bool]:
            fip = self.user.network.create_ip(floating_network_id=ext.id, port_id=ports[1].id)
            return lambda rec: (
                rec["change_type"] == "fip_associate" and rec["floating_ip_id"] == fip.id
            )

        def close_ssh() -> Callable[[Record], bool]:
            self.user.network.delete_security_group_rule(rule["id"])
            return lambda rec: (
                rec["change_type"] == "sg_rule_del"
                and (rec.get("security_group_rule") or {}).get("id") == rule["id"]
            )

        self.step("opening SSH (tcp/22) to the whole Internet on the group", open_ssh, 3)
        self.step("attaching a second floating IP to the other port", attach, 1)
        self.step("closing the SSH rule again", close_ssh, 4)

    # --- tidy up ------------------------------------------------------------------

    def teardown(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        self.remove_resources()
        conn = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1/%2F"))
        conn.channel().queue_delete(QUEUE)
        conn.close()

    def remove_resources(self) -> None:
        """Everything the demo made (also what an interrupted run left), as admin."""
        net = self.admin.network
        project = self.user.current_project_id
        for fip in net.ips(project_id=project):
            if fip.port_details and str(fip.port_details.get("name", "")).startswith(PREFIX):
                net.delete_ip(fip)
        for router in net.routers(name=PREFIX + "router", project_id=project):
            for subnet in net.subnets(name=PREFIX + "subnet", project_id=project):
                net.remove_interface_from_router(router, subnet=subnet.id)
            net.delete_router(router)
        for port in net.ports(project_id=project, device_owner="compute:nova"):
            if port.name.startswith(PREFIX):
                net.delete_port(port)
        for group in net.security_groups(name=PREFIX + "web", project_id=project):
            net.delete_security_group(group)
        for network in net.networks(name=PREFIX + "net", project_id=project):
            net.delete_network(network)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ci",
        action="store_true",
        help="exit after the scenario; non-zero if a step produced no records",
    )
    args = parser.parse_args()
    demo = Demo(args.ci)
    demo.remove_resources()  # leftovers of an interrupted run
    try:
        print("== starting osel (dry-run scanner: it records what it would ask Qualys to scan)")
        demo.start_osel()
        demo.scenario()
        if demo.failures:
            print(f"\nFAILED: no records for: {'; '.join(demo.failures)}; see {WORK}/osel.log")
            return 1
        print("\nAll steps recorded.")
        if not args.ci:
            print(
                f"osel is still running (log {WORK}/osel.log, records {WORK}/audit.jsonl).\n"
                f"Try: .venv/bin/osel audit tail -c {WORK}/osel.yaml\n"
                "Make more changes through Neutron's API as cloud osel-demo "
                "(OS_CLIENT_CONFIG_FILE); Ctrl-C stops osel and tidies up."
            )
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    finally:
        print("\n== tidying up: stopping osel, deleting the demo's resources and queue")
        demo.teardown()


if __name__ == "__main__":
    sys.exit(main())
