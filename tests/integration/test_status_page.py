"""The daemon's HTTP side on a real run: metrics, readiness, the status page in Chromium."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration import neutron_fixtures as nf
from tests.integration.osel_process import OselProcess

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).parents[2] / "var" / "test-artifacts"


def chromium(*args: str) -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is not installed: scripts/setup installs Debian's chromium"
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=True,
        )
    return result.stdout


def test_metrics_readiness_and_status_page(admin, cleanup, tmp_path: Path, store_url: str):
    osel = OselProcess(tmp_path, http=True, store_url=store_url)
    try:
        osel.start()
        ext, _ = nf.create_external_network(admin, cleanup)
        net, subnet = nf.create_private_network(admin, cleanup)
        nf.create_router(admin, cleanup, external_network=ext, subnet=subnet)
        group = nf.create_security_group(admin, cleanup)
        port = nf.create_port(admin, cleanup, network=net, security_groups=[group.id])
        fip = nf.create_floating_ip(admin, cleanup, external_network=ext, port=port)
        rule = nf.add_rule(admin, cleanup, group, port_range=(3389, 3389))
        records = osel.wait_records(
            lambda r: (
                r["record_type"] == "change"
                and (r.get("security_group_rule") or {}).get("id") == rule.id
            ),
            2,
        )
        uuids = {r["record_id"] for r in records}
        (scan,) = osel.wait_records(
            lambda r: (
                r["record_type"] == "scan"
                and r["scan_state"] == "launched"
                and bool(uuids & set(r["change_record_ids"]))
            ),
            1,
        )

        ready = httpx.get(f"{osel.http_url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {
            "started": True,
            "neutron": True,
            "amqp": True,
            "store": True,
        }

        text = httpx.get(f"{osel.http_url}/metrics", timeout=10).text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }
        assert samples[("osel_changes_total", (("change_type", "sg_rule_add"),))] == 1
        assert samples[("osel_addresses_affected_total", (("change_type", "sg_rule_add"),))] == 2
        assert (
            samples[
                (
                    "osel_messages_total",
                    (("event_type", "security_group_rule.create.end"), ("outcome", "recorded")),
                )
            ]
            == 1
        )
        assert samples[("osel_dependency_up", (("dependency", "amqp"),))] == 1

        dom = chromium("--dump-dom", f"{osel.http_url}/status")
        for expected in (
            fip.floating_ip_address,
            port.fixed_ips[0]["ip_address"],
            "sg_rule_add",
            "tcp/3389 from 0.0.0.0/0",
            scan["scan_batch_id"],
            "launched",
        ):
            assert expected in dom, expected
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "status-page.png"
        shot.unlink(missing_ok=True)
        chromium(f"--screenshot={shot}", "--window-size=1400,1000", f"{osel.http_url}/status")
        assert shot.stat().st_size > 10_000
    finally:
        osel.close()
