"""The osel demo: real changes on the local OpenStack, as osel records, scans and delivers them.

Started by `scripts/demo`, which installs everything and brings up Keystone +
Neutron and the local rsyslog first. The demo starts the Qualys and Splunk HEC
simulators (written from the vendors' public documentation: they are not
Qualys and not Splunk), then `osel run` with the qualys backend, a JSONL file,
syslog (TLS, to the local rsyslog) and HEC (with indexer acknowledgement)
sinks, and the status page. As the `demo` project's user it opens SSH to the
world on a security group whose port has a floating IP, attaches another
floating IP, and closes the rule again. After each step it shows the audit
records osel committed, the scan it launched and what the simulated scan
found, and that the records reached every sink.

`--ci` exits after the scenario: 0 when every step produced its records, its
scan and its deliveries, otherwise 1 naming the step and what did not appear.
Without it, osel keeps running until Ctrl-C. Either way the demo then stops
osel and the simulators and deletes the OpenStack resources and the RabbitMQ
queue it made; the local stack and rsyslog keep running (`scripts/setup`
brought them up; the tests use them too).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import openstack
import pika
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "var" / "demo"
PYTHON = sys.executable
QUEUE = "osel-demo"  # osel's own queue for the demo; deleted at the end
PREFIX = "osel-demo-"  # every OpenStack resource the demo makes is named so
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
STATUS_PORT, QUALYS_PORT, HEC_PORT = 9797, 9443, 8088  # used when free, else any free port
QUALYS_USER, QUALYS_PASSWORD = "osel", "osel-secret"  # the simulator's defaults
WINDOW = 2.0  # scan.window_seconds: coalesce a step's addresses into one scan
TIMEOUTS = {"records": 45.0, "launched": 45.0, "finished": 60.0, "delivered": 45.0}
Record = dict[str, Any]


class StepFailed(Exception):
    """Something a step waits for did not appear in time."""


class Interrupted(Exception):
    """SIGINT or SIGTERM."""


def _interrupt(_signum: int, _frame: object) -> None:
    raise Interrupted


def free_port(preferred: int) -> int:
    """`preferred` when nothing listens there, otherwise a free port."""
    for port in (preferred, 0):
        with socket.socket() as sock, suppress(OSError):
            sock.bind(("127.0.0.1", port))
            return int(sock.getsockname()[1])
    raise RuntimeError("no free TCP port on 127.0.0.1")


def jsonl(path: Path) -> list[Record]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        with suppress(ValueError):
            out.append(json.loads(line))
    return out


def hhmmss(stamp: str | None) -> str:
    if not stamp:
        return "?"
    with suppress(ValueError):
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).strftime("%H:%M:%S")
    return stamp


def ports_text(permits: list[Record], *, remote: bool) -> str:
    parts = []
    for p in permits:
        low, high = p["port_range_min"], p["port_range_max"]
        ports = str(low) if low == high else f"{low}-{high}"
        text = f"{p['protocol']}/{ports}"
        parts.append(f"{text} from {p['remote']}" if remote else text)
    return ", ".join(parts) or "-"


# --------------------------------------------------------------------------- waiting


class Progress:
    """Waits for a condition, showing what it waits for and for how long.

    On a terminal: one line updated in place. Otherwise (CI, a pipe): a plain
    line every few seconds.
    """

    def __init__(self, alive: Callable[[], str | None]) -> None:
        self.tty = sys.stdout.isatty()
        self.alive = alive  # None while the processes we rely on run, else why not

    def wait(self, what: Callable[[], str], done: Callable[[], bool], timeout: float) -> float:
        start = time.monotonic()
        spinner = "|/-\\"
        last_line = start
        tick = 0
        while True:
            elapsed = time.monotonic() - start
            if done():
                self._clear()
                return elapsed
            dead = self.alive()
            if dead:
                self._clear()
                raise StepFailed(dead)
            if elapsed > timeout:
                self._clear()
                raise StepFailed(f"{what()}: still waiting after {timeout:g}s")
            if self.tty:
                line = f"  {spinner[tick % 4]} {elapsed:5.1f}s  waiting for {what()}"
                width = self._width()
                print(f"\r{line[:width]:<{width}}", end="", flush=True)
            elif time.monotonic() - last_line >= 5:
                print(f"  ... {elapsed:.0f}s: waiting for {what()}", flush=True)
                last_line = time.monotonic()
            tick += 1
            time.sleep(0.25)

    def _clear(self) -> None:
        if self.tty:
            print(f"\r{' ' * self._width()}\r", end="", flush=True)

    @staticmethod
    def _width() -> int:
        """One less than the terminal's width: a full line would wrap, and \\r not undo it."""
        return max(20, shutil.get_terminal_size().columns - 1)


# --------------------------------------------------------------------------- the services


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def problem(self) -> str | None:
        code = self.proc.poll()
        return None if code is None else f"{self.name} exited ({code}); see {self.log}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def spawn(name: str, args: list[str], log: Path) -> Process:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Process(name, proc, log)


def rsyslog_settings() -> dict[str, str]:
    """Bring up the local rsyslog (quick when up) and read where it listens and writes."""
    script = str(ROOT / "scripts" / "rsyslog.sh")
    subprocess.run(["bash", script, "up"], check=True, stdout=subprocess.DEVNULL)
    env = subprocess.run(["bash", script, "env"], check=True, capture_output=True, text=True)
    values = {}
    for line in env.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        values[key] = value
    return values


@dataclass
class Stack:
    """The simulators and osel, and where each one is."""

    processes: list[Process] = field(default_factory=list)
    qualys_url: str = ""
    hec_url: str = ""
    status_url: str = ""
    syslog_file: Path = Path()
    syslog_offset: int = 0
    rsyslog: dict[str, str] = field(default_factory=dict)

    def problem(self) -> str | None:
        for p in self.processes:
            if (why := p.problem()) is not None:
                return why
        return None

    def stop(self) -> None:
        for p in reversed(self.processes):  # osel first, then the simulators
            p.stop()
        self.processes.clear()


# --------------------------------------------------------------------------- the demo


class Demo:
    def __init__(self) -> None:
        self.finished = False  # the scenario ran to its end
        self.run = secrets.token_hex(3)
        self.prefix = f"{PREFIX}{self.run}-"
        self.admin = openstack.connect(cloud="osel-admin", api_timeout=30)
        self.user = openstack.connect(cloud="osel-demo", api_timeout=30)
        self.stack = Stack()
        self.progress = Progress(self.stack.problem)
        self.hec_token = str(uuid.uuid4())

    # --- bringing things up --------------------------------------------------

    def prepare(self) -> None:
        """A fresh var/demo, no leftovers of an earlier run in OpenStack or RabbitMQ."""
        shutil.rmtree(WORK, ignore_errors=True)
        WORK.mkdir(parents=True)
        (WORK / "demo.pid").write_text(f"{os.getpid()}\n")
        self.remove_resources()
        delete_queue()

    def start_simulators(self) -> None:
        qualys_port, hec_port = free_port(QUALYS_PORT), free_port(HEC_PORT)
        self.stack.qualys_url = f"http://127.0.0.1:{qualys_port}"
        self.stack.hec_url = f"http://127.0.0.1:{hec_port}"
        self.stack.processes.append(
            spawn(
                "the Qualys simulator",
                [
                    PYTHON, "-m", "simulators.qualys", "--port", str(qualys_port),
                    "--queued-seconds", "1", "--running-seconds", "3",
                ],
                WORK / "qualys-simulator.log",
            )
        )  # fmt: skip
        self.stack.processes.append(
            spawn(
                "the HEC simulator",
                [
                    PYTHON, "-m", "simulators.hec", "--port", str(hec_port),
                    "--token", self.hec_token, "--ack",
                ],
                WORK / "hec-simulator.log",
            )
        )  # fmt: skip
        self.progress.wait(
            lambda: "the Qualys and HEC simulators to answer",
            lambda: (
                answers(f"{self.stack.qualys_url}/_sim/state")
                and answers(f"{self.stack.hec_url}/_sim/events")
            ),
            30,
        )
        print(f"  Qualys simulator {self.stack.qualys_url}, HEC simulator {self.stack.hec_url}")

    def write_config(self) -> Path:
        rs = self.stack.rsyslog
        (WORK / "qualys.pw").write_text(QUALYS_PASSWORD + "\n")
        (WORK / "hec.token").write_text(self.hec_token + "\n")
        for secret in ("qualys.pw", "hec.token"):
            (WORK / secret).chmod(0o600)
        status_port = free_port(STATUS_PORT)
        self.stack.status_url = f"http://127.0.0.1:{status_port}"
        config = {
            "service": {"instance_name": "osel-demo", "batch_wait_ms": 20},
            "amqp": {"queue": QUEUE},
            "openstack": {"cloud": "osel"},
            "scan": {"backend": "qualys", "window_seconds": WINDOW},
            "qualys": {
                "api_url": self.stack.qualys_url,
                "username": QUALYS_USER,
                "password_file": str(WORK / "qualys.pw"),
                "scanner_name": "scanner1",  # an appliance: it reaches the fixed IPs too
                "poll_seconds": 1,
                "timeout_seconds": 10,
            },
            "audit": {
                "sinks": [
                    {"type": "file", "path": str(WORK / "audit.jsonl")},
                    {
                        "type": "syslog",
                        "host": "127.0.0.1",
                        "port": int(rs["OSEL_RSYSLOG_TLS_PORT"]),
                        "protocol": "tls",
                        "ca_file": f"{rs['OSEL_RSYSLOG_DIR']}/ca/ca.pem",
                    },
                    {
                        "type": "splunk_hec",
                        "url": self.stack.hec_url,
                        "token_file": str(WORK / "hec.token"),
                        "ack": True,
                    },
                ]
            },
            "store": {"url": f"sqlite:///{WORK / 'osel.db'}"},
            "http": {"enabled": True, "bind": f"127.0.0.1:{status_port}"},
        }
        path = WORK / "osel.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start_osel(self) -> None:
        self.stack.rsyslog = rsyslog_settings()
        self.stack.syslog_file = Path(self.stack.rsyslog["OSEL_RSYSLOG_DIR"]) / "out" / "tls.jsonl"
        with suppress(OSError):
            self.stack.syslog_offset = self.stack.syslog_file.stat().st_size
        self.start_simulators()
        config = self.write_config()
        check = subprocess.run(
            [PYTHON, "-m", "osel", "check-config", "-c", str(config)],
            capture_output=True,
            text=True,
        )
        if check.returncode != 0:
            raise StepFailed(f"osel check-config refused {config}:\n{check.stdout}{check.stderr}")
        log = WORK / "osel.log"
        osel = spawn("osel", [PYTHON, "-m", "osel", "run", "-c", str(config)], log)
        self.stack.processes.append(osel)
        elapsed = self.progress.wait(
            lambda: "osel to connect to RabbitMQ and serve its status page",
            lambda: (
                "amqp connected" in log.read_text(errors="replace")
                and answers(f"{self.stack.status_url}/healthz")
            ),
            60,
        )
        print(f"  osel is running ({elapsed:.1f}s): status page {self.stack.status_url}/status")

    # --- what osel wrote -----------------------------------------------------

    def records(self) -> list[Record]:
        return jsonl(WORK / "audit.jsonl")

    def delivered(self, record_ids: set[str]) -> dict[str, int]:
        """How many of these records each sink holds."""
        syslog = {i for i in record_ids for line in self.syslog_lines() if i in line}
        try:
            events = httpx.get(f"{self.stack.hec_url}/_sim/events", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            events = []
        hec = {(e.get("event") or {}).get("record_id") for e in events} & record_ids
        in_file = {r.get("record_id") for r in self.records()} & record_ids
        return {"file": len(in_file), "syslog": len(syslog), "hec": len(hec)}

    def syslog_lines(self) -> list[str]:
        """What rsyslog wrote since osel started (the file also holds the tests' messages)."""
        path = self.stack.syslog_file
        if not path.exists():
            return []
        with path.open("rb") as f:
            f.seek(self.stack.syslog_offset)
            return f.read().decode(errors="replace").splitlines()

    # --- one step ------------------------------------------------------------

    def step(
        self, number: int, title: str, act: Callable[[], Callable[[Record], bool]], n: int
    ) -> None:
        """Make one change; show its records, its scan and their delivery."""
        print(f"\n== {number}. {title}")
        started = time.monotonic()
        try:
            self._step(act, n)
        except StepFailed as failed:
            raise StepFailed(f"step {number} ({title}): {failed}") from None
        print(f"  step {number} done in {time.monotonic() - started:.1f}s")

    def _step(self, act: Callable[[], Callable[[Record], bool]], n: int) -> None:
        match = act()
        found: list[Record] = []

        def enough() -> bool:
            found[:] = [r for r in self.records() if r.get("record_type") == "change" and match(r)]
            return len(found) >= n

        self.progress.wait(
            lambda: f"osel's change records ({len(found)} of {n}) in {WORK}/audit.jsonl",
            enough,
            TIMEOUTS["records"],
        )
        print(f"  osel recorded {len(found)} change record(s), one per affected address:")
        for r in found:
            self.show_change(r)
        ids = {r["record_id"] for r in found}
        scan = self.follow_scan(ids)
        if scan is not None:
            ids.add(scan["record_id"])
        self.confirm_delivery(ids, len(found))

    def show_change(self, r: Record) -> None:
        line = (
            f"    {r['change_type']:<14} {r['affected_ip_address']:<15} "
            f"{r.get('address_kind', ''):<8} internet_exposed={str(r['internet_exposed']).lower()}"
        )
        if r["opened"]:
            line += f"  opened {ports_text(r['opened'], remote=True)}"
        if r["closed"]:
            windows = ", ".join(
                f"{hhmmss(p.get('window_opened_at'))}-{hhmmss(p.get('window_closed_at'))}"
                for p in r["closed"]
            )
            line += f"  closed {ports_text(r['closed'], remote=True)} (was open {windows} UTC)"
        line += f"  scan: {r['scan_state']}"
        if r.get("qualys_scan_error"):
            line += f" ({r['qualys_scan_error']})"
        print(line)

    def follow_scan(self, ids: set[str]) -> Record | None:
        if not any(r["scan_state"] == "queued" for r in self.records() if r["record_id"] in ids):
            print("  no scan: nothing newly reachable")
            return None

        def scan_records(states: tuple[str, ...]) -> list[Record]:
            return [
                r
                for r in self.records()
                if r.get("record_type") == "scan"
                and r["scan_state"] in states
                and set(r.get("change_record_ids") or ()) & ids
            ]

        elapsed = self.progress.wait(
            lambda: f"the scan batch to be launched ({WINDOW:g}s window, then the launch)",
            lambda: bool(scan_records(("launched", "error"))),
            TIMEOUTS["launched"],
        )
        launched = scan_records(("launched", "error"))[0]
        if launched["scan_state"] == "error":
            raise StepFailed(f"the scan batch was refused: {launched.get('qualys_scan_error')}")
        print(
            f"  scan batch {launched['scan_batch_id'][:8]} launched after {elapsed:.1f}s: "
            f"Qualys (simulated) scan {launched['qualys_scan_id']} of "
            f"{', '.join(launched['target_addresses'])}"
        )

        def state() -> str:
            latest = scan_records(("launched", "running", "finished", "error"))
            return latest[-1].get("qualys_state") or latest[-1]["scan_state"] if latest else "?"

        elapsed = self.progress.wait(
            lambda: f"scan {launched['qualys_scan_id']} to finish (Qualys says: {state()})",
            lambda: bool(scan_records(("finished", "error"))),
            TIMEOUTS["finished"],
        )
        done = scan_records(("finished", "error"))[0]
        if done["scan_state"] != "finished":
            raise StepFailed(f"scan {done['qualys_scan_id']} ended in {done['qualys_state']}")
        print(f"  scan {done['qualys_scan_id']} {done['qualys_state']} after {elapsed:.1f}s:")
        self.show_results(done)
        return done

    def show_results(self, scan: Record) -> None:
        links = {link["address"]: link for link in scan.get("change_links") or ()}
        note = False
        for address, result in (scan.get("results") or {}).items():
            vulns = result.get("vulnerabilities") or {}
            vuln_text = (
                ", ".join(f"{n} of severity {sev}" for sev, n in sorted(vulns.items()))
                or "no vulnerabilities"
            )
            link = links.get(address) or {}
            said = ""
            if link.get("found_open"):
                said = f"; what the change opened is open: {', '.join(link['found_open'])}"
            elif link.get("still_open"):
                said = f"; still open after the close: {', '.join(link['still_open'])}"
                note = True
            print(
                f"    {address:<15} open {', '.join(result.get('open') or ['-'])}; "
                f"{vuln_text}{said}"
            )
        if note:
            print(
                "    (the simulator reports tcp/22 open on every address it scans, so the closed "
                "port shows as still open; a real scan shows whether it is)"
            )

    def confirm_delivery(self, ids: set[str], changes: int) -> None:
        counts: dict[str, int] = {}

        def all_there() -> bool:
            counts.update(self.delivered(ids))
            return all(v >= len(ids) for v in counts.values())

        def waiting() -> str:
            missing = [f"{k} {v}/{len(ids)}" for k, v in counts.items() if v < len(ids)]
            return "the records in every sink: " + (", ".join(missing) or "...")

        self.progress.wait(waiting, all_there, TIMEOUTS["delivered"])
        scans = len(ids) - changes
        print(
            f"  delivered: the {changes} change record(s)"
            + (" and the finished scan record" if scans else "")
            + f" are in the JSONL file, in {self.stack.syslog_file} (rsyslog, over TLS) "
            "and in the HEC simulator (indexer-acknowledged)"
        )

    # --- the scenario --------------------------------------------------------

    def build(self) -> dict[str, Any]:
        print(
            "\n== building a small cloud as the demo project's user: network, router, "
            "security group, two ports, a floating IP"
        )
        p = self.prefix
        ext = self.external_network()
        net = self.user.network.create_network(name=p + "net")
        subnet = self.user.network.create_subnet(
            name=p + "subnet", network_id=net.id, ip_version=4, cidr="10.77.0.0/24"
        )
        router = self.user.network.create_router(
            name=p + "router", external_gateway_info={"network_id": ext.id}
        )
        self.user.network.add_interface_to_router(router, subnet=subnet.id)
        group = self.user.network.create_security_group(name=p + "web")
        ports = [
            self.user.network.create_port(
                name=f"{p}vm{i}",
                network_id=net.id,
                security_group_ids=[group.id],
                device_owner="compute:nova",
            )
            for i in (1, 2)
        ]
        fip = self.user.network.create_ip(
            floating_network_id=ext.id, port_id=ports[0].id, description=p + "fip1"
        )
        print(
            f"  group {group.name}: ports {', '.join(x.fixed_ips[0]['ip_address'] for x in ports)}"
            f", floating IP {fip.floating_ip_address} on the first"
        )
        return {"ext": ext, "group": group, "ports": ports}

    def external_network(self) -> Any:
        """The demo's external network (admin-owned, kept between runs)."""
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
            print(f"  openstacksdk: create_security_group_rule tcp/22 from 0.0.0.0/0 ({r.id})")
            return lambda rec: (
                rec["change_type"] == "sg_rule_add"
                and (rec.get("security_group_rule") or {}).get("id") == r.id
            )

        def attach() -> Callable[[Record], bool]:
            fip = self.user.network.create_ip(
                floating_network_id=ext.id, port_id=ports[1].id, description=self.prefix + "fip2"
            )
            print(f"  openstacksdk: create_ip {fip.floating_ip_address} on the second port")
            return lambda rec: (
                rec["change_type"] == "fip_associate" and rec["floating_ip_id"] == fip.id
            )

        def close_ssh() -> Callable[[Record], bool]:
            self.user.network.delete_security_group_rule(rule["id"])
            print(f"  openstacksdk: delete_security_group_rule {rule['id']}")
            return lambda rec: (
                rec["change_type"] == "sg_rule_del"
                and (rec.get("security_group_rule") or {}).get("id") == rule["id"]
            )

        self.step(1, "opening SSH (tcp/22) to the whole Internet on the group", open_ssh, 3)
        self.step(2, "attaching a second floating IP to the other port", attach, 1)
        self.step(3, "closing the SSH rule again", close_ssh, 4)

    # --- tidying up ----------------------------------------------------------

    def teardown(self) -> None:
        print("\n== tidying up: stopping osel and the simulators, deleting the demo's resources")
        self.stack.stop()
        self.remove_resources()
        delete_queue()
        print(
            f"  done. Kept: {WORK} (configuration, logs, store, audit.jsonl); the local "
            "Keystone + Neutron and rsyslog keep running (the tests use them too; "
            "`bash scripts/openstack/stack.sh down` and `bash scripts/rsyslog.sh down` stop them)."
        )

    def remove_resources(self) -> None:
        """Everything the demo ever made in the demo project (also what an interrupted run left)."""
        net = self.admin.network
        project = self.user.current_project_id

        def ours(resource: Any) -> bool:
            return str(resource.name or "").startswith(PREFIX)

        for fip in net.ips(project_id=project):
            port_name = str((fip.port_details or {}).get("name", ""))
            if str(fip.description or "").startswith(PREFIX) or port_name.startswith(PREFIX):
                net.delete_ip(fip)
        for router in filter(ours, net.routers(project_id=project)):
            for port in net.ports(device_id=router.id, device_owner="network:router_interface"):
                net.remove_interface_from_router(router, port=port.id)
            net.delete_router(router)
        for port in filter(ours, net.ports(project_id=project)):
            net.delete_port(port)
        for group in filter(ours, net.security_groups(project_id=project)):
            net.delete_security_group(group)
        for network in filter(ours, net.networks(project_id=project)):
            net.delete_network(network)

    def where(self) -> None:
        s, rs = self.stack, self.stack.rsyslog
        print(
            f"""
All three steps recorded, scanned and delivered. osel keeps running:

  status page       {s.status_url}/status   (JSON: {s.status_url}/v1/changes, /v1/scans; /metrics)
  audit trail       .venv/bin/osel audit tail -c {WORK}/osel.yaml
                    .venv/bin/osel scans list -c {WORK}/osel.yaml
  osel              configuration {WORK}/osel.yaml, log {WORK}/osel.log, records {WORK}/audit.jsonl
  syslog            rsyslog (TLS on 127.0.0.1:{rs["OSEL_RSYSLOG_TLS_PORT"]}) writes {s.syslog_file}
  Qualys simulator  {s.qualys_url}/_sim/state   (not Qualys; log {WORK}/qualys-simulator.log)
  HEC simulator     {s.hec_url}/_sim/events  (not Splunk; log {WORK}/hec-simulator.log)

Make more changes as the demo project's user (`openstack --os-cloud osel-demo ...` with
OS_CLIENT_CONFIG_FILE from `bash scripts/openstack/stack.sh env`; name them {PREFIX}... to have
them deleted at the end) and watch them arrive. Ctrl-C stops osel and the simulators and
deletes what the demo made."""
        )


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def delete_queue() -> None:
    """osel's demo queue: nobody reads it once the demo ends, so it would only grow."""
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        conn.channel().queue_delete(QUEUE)
    finally:
        conn.close()


def another_demo() -> int | None:
    """The pid of a demo that still runs (it owns var/demo and the demo's queue)."""
    with suppress(OSError, ValueError):
        pid = int((WORK / "demo.pid").read_text())
        if pid != os.getpid() and "demo.py" in Path(f"/proc/{pid}/cmdline").read_text():
            return pid
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ci",
        action="store_true",
        help="exit after the scenario; non-zero if a step's records, scan or delivery is missing",
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    if (pid := another_demo()) is not None:
        print(f"another demo runs (pid {pid}); stop it with Ctrl-C (or kill {pid}) first")
        return 1
    demo = Demo()
    try:
        print(
            "== starting the Qualys and Splunk HEC simulators (written from the vendors' public "
            "documentation: not Qualys, not Splunk) and osel"
        )
        demo.prepare()
        demo.start_osel()
        demo.scenario()
        print(f"\nThe scenario took {time.monotonic() - started:.0f}s.")
        if not args.ci:
            demo.where()
            demo.finished = True
            while True:
                signal.pause()
        return 0
    except StepFailed as failed:
        print(f"\nFAILED: {failed}\n(osel's log: {WORK}/osel.log)", file=sys.stderr)
        return 1
    except Interrupted:
        print("\ninterrupted")
        return 0 if demo.finished else 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the tidy-up
            signal.signal(sig, signal.SIG_IGN)
        demo.teardown()


if __name__ == "__main__":
    sys.exit(main())
