"""The real Aodh chain feeds osel's webhook the same changes as the bus.

Neutron -> RabbitMQ -> ceilometer-agent-notification (the shipped
deploy/aodh/event_definitions.yaml and event_pipeline.yaml) -> aodh-listener
-> aodh-notifier -> `POST /v1/aodh/<token>` of an osel whose AMQP source is
off, beside an osel on the AMQP path, both watching the same changes.
Needs `bash scripts/openstack/stack.sh up` and `bash scripts/openstack/aodh.sh up`.
Each test works in a project of its own, so that only its alarms fire.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pika
import pytest

from osel.aodh import project_token
from tests.integration import neutron_fixtures as nf
from tests.integration.osel_process import OselProcess, Record, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

COMPARED = (
    "change_type",
    "event_type",
    "message_id",
    "timestamp",
    "project_id",
    "user_id",
    "security_group_id",
    "port_id",
    "floating_ip_id",
    "security_group_rule",
    "affected_ip_address",
    "address_kind",
    "internet_exposed",
    "opened",
    "closed",
    "scan_state",
    "qualys_scan_error",
)


def aodh_api(conn: nf.Connection) -> Any:
    from keystoneauth1.adapter import Adapter

    return Adapter(session=conn.session, service_type="alarming", interface="public")


@pytest.fixture(scope="module")
def aodh(admin: nf.Connection) -> Any:
    api = aodh_api(admin)
    try:
        response = api.get("/v2/alarms", params={"q.field": "name", "q.value": "-"}, timeout=10)
    except Exception as exc:
        pytest.fail(f"no Aodh API ({exc}): run `bash scripts/openstack/aodh.sh up` first")
    assert response.status_code == 200, response.text
    return api


@pytest.fixture
def project(admin: nf.Connection, cleanup: nf.Cleanup, aodh: Any) -> Iterator[str]:
    """A project of the test's own; its groups and alarms go with it."""
    created = admin.identity.create_project(name=nf.unique("aodh"), domain_id="default")
    pid = str(created.id)
    cleanup.add(f"project {pid}", lambda: admin.identity.delete_project(pid))

    def groups() -> None:  # Neutron made a `default` group for the project
        for sg in admin.network.security_groups(project_id=pid):
            admin.network.delete_security_group(sg.id)

    def alarms() -> None:
        q = {"q.field": "project_id", "q.op": "eq", "q.value": pid}
        for alarm in aodh.get("/v2/alarms", params=q).json():
            aodh.delete(f"/v2/alarms/{alarm['alarm_id']}")

    cleanup.add("security groups of the project", groups)
    cleanup.add("alarms of the project", alarms)
    yield pid


def aodh_osel(
    workdir: Path, secret: str, store_url: str, *, trust: bool = False, **http: Any
) -> OselProcess:
    """An osel fed by Aodh only: AMQP source off, HTTP on."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings = {
        "bind": f"127.0.0.1:{port}",
        "public_url": f"{'trust+' if trust else ''}http://127.0.0.1:{port}",
        "aodh_token": secret,
        "aodh_alarm_prefix": f"osel-test-{uuid.uuid4().hex[:6]}",
        **http,
    }
    return OselProcess(
        workdir,
        http=True,
        store_url=store_url,
        extra={"amqp": {"enabled": False}, "http": settings},
    )


def aodh_setup(osel: OselProcess, project: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "osel", "aodh", "setup", "-c", str(osel.config),
         "--cloud", "osel-admin", "--project", project],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OS_CLIENT_CONFIG_FILE": str(nf.clouds_yaml())},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def rule_records(change_type: str, rule_id: str) -> Callable[[Record], bool]:
    def match(r: Record) -> bool:
        return (
            r["record_type"] == "change"
            and r["change_type"] == change_type
            and (r.get("security_group_rule") or {}).get("id") == rule_id
        )

    return match


def same(records: list[Record]) -> list[dict[str, Any]]:
    return sorted(({k: r[k] for k in COMPARED} for r in records), key=json.dumps)


BOOKKEEPING = {"meta", "sink_cursors"}


def table_counts(osel: OselProcess) -> dict[str, int]:
    """Rows of every table but the daemon's own bookkeeping.

    `meta` holds start-up and probe state; `sink_cursors` gets its row when the
    outbox first claims its sink, which may happen at any moment after start.
    """
    names = [name for (name,) in osel.query(
        "SELECT name FROM sqlite_master WHERE type='table'"
        if osel.store_url.startswith("sqlite")
        else "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    )]  # fmt: skip
    return {
        n: int(osel.query(f'SELECT COUNT(*) FROM "{n}"')[0][0])
        for n in names
        if n not in BOOKKEEPING
    }


def test_a_rule_created_in_neutron_reaches_osel_through_aodh_alone_with_the_same_records(
    admin, cleanup, project, tmp_path, new_store_url
):
    by_bus = OselProcess(tmp_path / "amqp", store_url=new_store_url(tmp_path / "amqp"))
    by_aodh = aodh_osel(tmp_path / "aodh", uuid.uuid4().hex, new_store_url(tmp_path / "aodh"))
    try:
        by_bus.start()
        by_aodh.start()
        first = aodh_setup(by_aodh, project)
        assert "done: 4 create" in first, first
        assert "done: 4 unchanged" in aodh_setup(by_aodh, project)  # idempotent

        ext, _ = nf.create_external_network(admin, cleanup)
        net, subnet = nf.create_private_network(admin, cleanup, project_id=project)
        nf.create_router(admin, cleanup, external_network=ext, subnet=subnet, project_id=project)
        group = nf.create_security_group(admin, cleanup, project_id=project)
        ports = [
            nf.create_port(admin, cleanup, network=net, security_groups=[group.id],
                           project_id=project)
            for _ in range(2)
        ]  # fmt: skip
        fip = nf.create_floating_ip(
            admin, cleanup, external_network=ext, port=ports[0], project_id=project
        )

        def associated(r: Record) -> bool:
            return bool(r["change_type"] == "fip_associate" and r["floating_ip_id"] == fip.id)

        assert same(by_aodh.wait_records(associated, 1)) == same(by_bus.wait_records(associated, 1))

        rule = nf.add_rule(admin, cleanup, group)  # tcp/22 from 0.0.0.0/0
        expected = sorted(
            [ip["ip_address"] for p in ports for ip in p.fixed_ips] + [fip.floating_ip_address]
        )
        added = by_aodh.wait_records(rule_records("sg_rule_add", rule.id), len(expected))
        assert sorted(r["affected_ip_address"] for r in added) == expected
        assert all(r["internet_exposed"] and r["scan_state"] == "queued" for r in added)
        bus_added = by_bus.wait_records(rule_records("sg_rule_add", rule.id), len(expected))
        assert same(added) == same(bus_added)  # message ids too: Ceilometer keeps them

        admin.network.delete_security_group_rule(rule.id)
        gone = by_aodh.wait_records(rule_records("sg_rule_del", rule.id), len(expected))
        assert same(gone) == same(by_bus.wait_records(rule_records("sg_rule_del", rule.id),
                                                      len(expected)))  # fmt: skip
        changes = [r for r in by_aodh.records() if r["record_type"] == "change"]
        assert changes and all(r["source_message_bus"] == "" for r in changes)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):  # never consumed the bus
            by_aodh.queue_depth()
    finally:
        by_aodh.close()
        by_bus.close()


def test_a_post_without_the_right_token_gets_401_and_changes_nothing(
    admin, cleanup, tmp_path, store_url
):
    secret = uuid.uuid4().hex
    osel = aodh_osel(tmp_path / "aodh", secret, store_url)
    group = nf.create_security_group(admin, cleanup)
    rule_id = str(uuid.uuid4())
    project = str(group.project_id)
    alarm = {
        "alarm_name": "osel-security-group-rule",
        "alarm_id": str(uuid.uuid4()),
        "severity": "moderate",
        "previous": "alarm",
        "current": "alarm",
        "reason": "Event hits the query <query=[]>.",
        "reason_data": {
            "type": "event",
            "event": {
                "message_id": str(uuid.uuid4()),
                "event_type": "security_group_rule.create.end",
                "generated": "2026-11-28T05:00:00.000001",
                "traits": [
                    ["project_id", 1, project],
                    ["tenant_id", 1, project],
                    ["resource_id", 1, rule_id],
                    ["security_group_id", 1, group.id],
                    ["direction", 1, "ingress"],
                    ["ethertype", 1, "IPv4"],
                    ["protocol", 1, "tcp"],
                    ["port_range_min", 2, 22],
                    ["port_range_max", 2, 22],
                    ["remote_ip_prefix", 1, "0.0.0.0/0"],
                ],
                "raw": {},
                "message_signature": "",
            },
        },
    }
    try:
        osel.start()
        before = table_counts(osel)
        wrong = [
            "",
            "/",
            f"/{project}",
            f"/{project_token('another secret', project)}",
            f"/{project}.{'0' * 32}",
        ]
        with httpx.Client(base_url=f"{osel.http_url}/v1/aodh", trust_env=False) as http:
            for path in wrong:
                response = http.post(path, json=alarm)
                assert response.status_code == 401, (path, response.text)
            assert table_counts(osel) == before
            assert osel.store_records() == []
            # the same body with the project's token is committed before the answer
            response = http.post(f"/{project_token(secret, project)}", json=alarm)
            assert response.status_code == 200, response.text
            assert response.json()["outcome"] == "recorded"
        (record,) = osel.store_records()
        assert record["security_group_rule"]["id"] == rule_id
        assert table_counts(osel) != before
    finally:
        osel.close()


def test_trust_actions_carry_a_keystone_token_that_osel_validates(
    admin, cleanup, project, tmp_path, store_url
):
    secret = uuid.uuid4().hex
    osel = aodh_osel(
        tmp_path / "aodh",
        secret,
        store_url,
        trust=True,
        keystone_validate=True,
        keystone_users=["admin"],
    )
    try:
        osel.start()
        assert "done: 4 create" in aodh_setup(osel, project)
        group = nf.create_security_group(admin, cleanup, project_id=project)
        rule = nf.add_rule(admin, cleanup, group, port_range=(443, 443))
        (record,) = osel.wait_records(rule_records("sg_rule_add", rule.id), 1)
        assert record["affected_ip_address"] == ""  # a group without ports
        token_path = f"{osel.http_url}/v1/aodh/{project_token(secret, project)}"
        demo = nf.connect("osel-demo")
        with httpx.Client(trust_env=False) as http:
            assert http.post(token_path, json={}).status_code == 401  # no X-Auth-Token
            foreign = {"X-Auth-Token": demo.session.get_token()}  # valid, but not admin's
            assert http.post(token_path, json={}, headers=foreign).status_code == 401
    finally:
        osel.close()
