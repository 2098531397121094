"""The `osel` command: check-config, replay, audit tail, scans, quarantine."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from osel.cli import main
from tests import messages as m

SAMPLES = Path(__file__).parents[1] / "data" / "neutron-29"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "osel.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "scan": {"backend": "dry-run", "window_seconds": 0},
                "store": {"url": f"sqlite:///{tmp_path}/osel.db"},
                "audit": {"sinks": [{"type": "file", "path": str(tmp_path / "audit.jsonl")}]},
                "http": {"enabled": False},
            }
        )
    )
    return path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_check_config_reports_all_three_mistakes_by_key(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "amqp:\n  prefetch: -1\nscan:\n  backend: dry-run\n  windw_seconds: 5\n"
        "scope:\n  ipv6: keep\n"
    )
    result = invoke("check-config", "-c", str(bad))
    assert result.exit_code == 1
    assert "3 problem(s)" in result.output
    for key in ("amqp.prefetch", "scan.windw_seconds", "scope.ipv6"):
        assert key in result.output


def test_check_config_accepts_a_good_file_and_masks_secrets(config: Path):
    text = config.read_text() + "amqp:\n  transport_url: rabbit://osel:MARKER-pw@mq:5672/\n"
    config.write_text(text)
    result = invoke("check-config", "-c", str(config))
    assert result.exit_code == 0, result.output
    assert "configuration OK" in result.output and "MARKER-pw" not in result.output


def test_replay_of_neutron_29_samples(config: Path, tmp_path: Path):
    result = invoke("replay", str(SAMPLES / "notifications.jsonl"), "-c", str(config), "--offline")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["messages"] == 27 and summary["outcomes"]["ignored"] == 19
    # the dry-run scanner's batch is launched and has nothing left to follow
    assert summary["scan_batches"] == 1 and summary["scan_batches_unfinished"] == 0
    assert "not finished yet" not in result.stderr
    assert summary["changes"] == {
        "fip_associate": 1,
        "sg_rule_add": 1,
        "sg_rule_del": 1,
        "fip_disassociate": 1,
        "fip_delete": 1,
    }
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    changes = [
        (r["change_type"], r["affected_ip_address"], r["scan_state"])
        for r in lines
        if r["record_type"] == "change"
    ]
    assert changes == [
        ("fip_associate", "203.0.113.113", "skipped"),
        ("sg_rule_add", "10.0.0.177", "queued"),
        ("sg_rule_add", "203.0.113.113", "queued"),
        ("sg_rule_del", "10.0.0.177", "queued"),
        ("sg_rule_del", "203.0.113.113", "queued"),
        ("fip_disassociate", "203.0.113.113", "skipped"),
        ("fip_delete", "203.0.113.113", "skipped"),
    ]
    scans = [r for r in lines if r["record_type"] == "scan"]
    assert {r["scan_state"] for r in scans} == {"queued", "launched"}
    assert sorted(scans[-1]["target_addresses"]) == ["10.0.0.177", "203.0.113.113"]
    # replaying again changes nothing: every message id was seen
    again = json.loads(
        invoke(
            "replay", str(SAMPLES / "notifications.jsonl"), "-c", str(config), "--offline"
        ).stdout
    )
    assert again["outcomes"].get("duplicate") == 8 and again["records"] == 0


def test_icehouse_shaped_messages(config: Path, tmp_path: Path):
    group = {"id": "sg1", "project_id": "t1", "name": "web", "security_group_rules": []}
    port = m.port("p1", ["10.1.0.5"], ["sg1"])
    rule = m.rule("sg1", rid="r1")
    lines = [
        m.notification("security_group.create.end", {"security_group": group}, icehouse=True),
        m.notification("port.create.end", {"port": port}, icehouse=True),
        m.notification(
            "security_group_rule.create.end", {"security_group_rule": rule}, icehouse=True
        ),
        m.notification(
            "security_group_rule.delete.end",
            {"security_group_rule_id": "r1"},
            icehouse=True,
            project="t1",
        ),
    ]
    capture = tmp_path / "icehouse.jsonl"
    capture.write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = invoke("replay", str(capture), "-c", str(config), "--offline")
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    changes = [r for r in records if r["record_type"] == "change"]
    assert [(r["change_type"], r["affected_ip_address"]) for r in changes] == [
        ("sg_rule_add", "10.1.0.5"),
        ("sg_rule_del", "10.1.0.5"),
    ]
    assert changes[1]["security_group_rule"]["port_range_min"] == 22
    assert changes[1]["closed"][0]["window_opened_at"]


def test_audit_tail_scans_and_quarantine(config: Path, tmp_path: Path):
    capture = tmp_path / "mixed.jsonl"
    capture.write_text(
        "not json at all\n"
        + json.dumps(
            m.notification(
                "port.create.end",
                {"port": m.port("p9", ["10.9.0.9"], [], port_security_enabled=False)},
            )
        )
        + "\n"
    )
    invoke("replay", str(capture), "-c", str(config), "--offline")
    tail = invoke("audit", "tail", "-n", "5", "-c", str(config))
    assert "port_create" in tail.output and "10.9.0.9" in tail.output
    listing = invoke("scans", "list", "-c", str(config))
    assert "launched" in listing.output and "1 address(es)" in listing.output
    batch_id = listing.output.split()[1]
    shown = json.loads(invoke("scans", "show", batch_id, "-c", str(config)).stdout)
    assert shown["addresses"] == ["10.9.0.9"]
    quarantined = invoke("quarantine", "list", "-c", str(config))
    assert "not JSON" in quarantined.output


@pytest.mark.parametrize(
    "command",
    [
        ["audit", "status"],
        ["audit", "tail"],
        ["scans", "list"],
        ["db", "upgrade"],
        ["db", "prune", "--days", "1"],
    ],
)
def test_a_store_that_does_not_answer_is_one_line_naming_store_url(
    command: list[str], config: Path
):
    settings = yaml.safe_load(config.read_text())
    # nothing listens on port 1: refused at once, as with PostgreSQL stopped
    settings["store"]["url"] = "postgresql://osel:MARKER-pw@127.0.0.1:1/osel"
    config.write_text(yaml.safe_dump(settings))
    result = CliRunner().invoke(main, [*command, "-c", str(config)])
    assert result.exit_code == 1, result.output
    (line,) = result.output.splitlines()
    assert line.startswith(
        "osel: the store does not answer (store.url=postgresql://osel:********@127.0.0.1:1/osel): "
        "OperationalError"
    )
    assert "check that the database runs" in line and "MARKER-pw" not in result.output


def test_db_prune_deletes_round_by_round_what_is_past_the_retention(config: Path, tmp_path: Path):
    result = invoke("replay", str(SAMPLES / "notifications.jsonl"), "-c", str(config), "--offline")
    assert result.exit_code == 0, result.output
    nothing = invoke("db", "prune", "-c", str(config))
    assert nothing.exit_code == 2
    assert "store.retention_days is 0" in nothing.output and "--days" in nothing.output
    young = invoke("db", "prune", "--days", "1", "-c", str(config))
    assert young.exit_code == 0 and young.output == "nothing older than 1 day(s) to delete\n"
    db = sqlite3.connect(tmp_path / "osel.db")
    with db:
        db.execute("UPDATE audit_records SET created_at = datetime(created_at, '-2 days')")
        db.execute("UPDATE seen_messages SET seen_at = datetime(seen_at, '-2 days')")
        db.execute("UPDATE scan_batches SET updated_at = datetime(updated_at, '-2 days')")
    records = db.execute("SELECT count(*) FROM audit_records").fetchone()[0]
    counted = invoke("db", "prune", "--days", "1", "--dry-run", "-c", str(config))
    assert counted.exit_code == 0, counted.output
    assert counted.output.startswith(
        f"would delete what is older than 1 day(s): {records - 1} from audit_records, "
    )
    assert db.execute("SELECT count(*) FROM audit_records").fetchone()[0] == records
    old = invoke("db", "prune", "--days", "1", "-c", str(config))
    assert old.exit_code == 0, old.output
    first, last = old.output.splitlines()
    # every record the file sink delivered but the newest; the dry-run batch; the 8
    # message ids of the changes (the ignored messages leave none)
    assert first.startswith(f"round 1: deleted {records - 1} from audit_records, ")
    assert "1 from scan_batches" in first and "8 from seen_messages" in first
    assert (
        last == "deleted what is older than 1 day(s): " + counted.output.split(": ", 1)[1].strip()
    )
    assert db.execute("SELECT count(*) FROM audit_records").fetchone()[0] == 1
    db.close()


def test_db_prune_waits_while_an_instance_is_deleting(config: Path, tmp_path: Path):
    """On PostgreSQL one instance deletes at a time; the command waits for its turn."""
    import threading

    import psycopg

    from osel.store.retention import PRUNE_LOCK
    from tests.pg import postgres_database

    with postgres_database() as url:
        settings = yaml.safe_load(config.read_text())
        settings["store"]["url"] = url
        config.write_text(yaml.safe_dump(settings))
        assert invoke("db", "upgrade", "-c", str(config)).exit_code == 0
        with psycopg.connect(url, autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(%s)", (PRUNE_LOCK,))
            release = threading.Timer(
                2.0, lambda: other.execute("SELECT pg_advisory_unlock(%s)", (PRUNE_LOCK,))
            )
            release.start()
            try:
                result = invoke("db", "prune", "--days", "1", "-c", str(config))
            finally:
                release.join()
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "another osel instance is deleting old rows; waiting for it",
        "nothing older than 1 day(s) to delete",
    ]
