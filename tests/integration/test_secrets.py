"""Marker secrets in every secret setting; none may appear in any output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration import neutron_fixtures as nf
from tests.integration.osel_process import OselProcess
from tests.pg import postgres_database

pytestmark = pytest.mark.integration

MARKERS = {
    "amqp": "MARKER-amqp-7f3a",
    "store": "MARKER-store-91c2",
    "qualys": "MARKER-qualys-5d0e",
    "hec": "MARKER-hec-44b1",
    "aodh": "MARKER-aodh-c8f9",
}


def test_no_secret_in_logs_records_cli_or_http(admin, cleanup, tmp_path: Path):
    (tmp_path / "hec.token").write_text(MARKERS["hec"] + "\n")
    with postgres_database() as url:
        store_url = url.replace("postgres@", f"postgres:{MARKERS['store']}@")  # trust auth
        osel = OselProcess(
            tmp_path,
            http=True,
            extra={
                # a dead first broker, so the failover path logs about it
                "amqp": {
                    "transport_url": f"rabbit://osel:{MARKERS['amqp']}@127.0.0.1:1,"
                    "guest:guest@127.0.0.1:5672/"
                },
                "store": {"url": store_url},
                "qualys": {"username": "osel", "password": MARKERS["qualys"]},
                "http": {"aodh_token": MARKERS["aodh"]},
                "audit": {
                    "sinks": [
                        {"type": "file", "path": str(tmp_path / "audit.jsonl")},
                        # an unreachable HEC: its failures get logged
                        {
                            "type": "splunk_hec",
                            "url": "http://127.0.0.1:1",
                            "token_file": str(tmp_path / "hec.token"),
                        },
                    ]
                },
            },
        )
        try:
            osel.start()
            net, _ = nf.create_private_network(admin, cleanup)
            group = nf.create_security_group(admin, cleanup)
            nf.create_port(admin, cleanup, network=net, security_groups=[group.id])
            rule = nf.add_rule(admin, cleanup, group)
            osel.wait_records(
                lambda r: (r.get("security_group_rule") or {}).get("id") == rule.id, 1
            )
            outputs = [osel.log.read_text(errors="replace"), osel.audit.read_text()]
            for path in (
                "/metrics",
                "/status",
                "/v1/changes",
                "/v1/scans",
                "/readyz",
                "/openapi.json",
            ):
                outputs.append(httpx.get(osel.http_url + path, timeout=10).text)
            for args in (
                ["check-config"],
                ["audit", "tail"],
                ["scans", "list"],
                ["quarantine", "list"],
                ["audit", "status"],
            ):
                done = subprocess.run(
                    [sys.executable, "-m", "osel", *args, "-c", str(osel.config)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                outputs += [done.stdout, done.stderr]
        finally:
            osel.close()
    everything = "\n".join(outputs)
    for name, marker in MARKERS.items():
        assert marker not in everything, f"the {name} secret leaked"
    assert "127.0.0.1:1" in everything  # the failures were logged, just without secrets
    assert "********" in everything  # check-config shows where the secrets are
