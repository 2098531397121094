"""The policy in the running daemon: exceptions and their expiry, reload, shadow replay."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import delete, func, select

from osel.backoff import BackoffPolicy
from osel.cli import main
from osel.config import Settings
from osel.daemon import Daemon
from osel.pipeline import Item
from osel.policy import load_policy
from osel.shadow import Report, committed_changes, compare, parse_since
from osel.store import tables as t
from tests import messages as m
from tests.fakes import FakeSource
from tests.unit.test_daemon import audit, neutron_world, wait_for

EXCEPTION = {
    "name": "shop-web-https",
    "match": {"project_id": "p1", "protocol": "tcp", "ports": 443, "remote": "0.0.0.0/0"},
    "owner": "team-shop-web",
    "reason": "public HTTPS front end behind the WAF",
    "ticket": "SEC-1432",
    "expires": "2027-01-31",
}


class Clock:
    """A clock a test moves."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def settings(tmp_path: Path, policy_file: Path | None) -> Settings:
    return Settings.model_validate(
        {
            "scan": {"backend": "dry-run", "window_seconds": 0},
            "store": {"url": f"sqlite:///{tmp_path}/osel.db"},
            "audit": {"sinks": [{"type": "file", "path": str(tmp_path / "audit.jsonl")}]},
            "openstack": {"resync_minutes": 0},
            "http": {"enabled": False},
            "policy": {"file": str(policy_file) if policy_file else None},
        }
    )


def write_policy(path: Path, **doc: Any) -> Path:
    path.write_text(yaml.safe_dump({"version": 1, **doc}))
    return path


def rule_add(sg: str, port: int, **kw: Any) -> bytes:
    rule = m.rule(sg, low=port, high=port, **kw)
    return m.envelope(
        m.notification("security_group_rule.create.end", {"security_group_rule": rule})
    )


def port_create(pid: str, ip: str, sgs: list[str]) -> bytes:
    return m.envelope(m.notification("port.create.end", {"port": m.port(pid, [ip], sgs)}))


def changes(records: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [
        r
        for r in records
        if r["record_type"] == "change" and all(r.get(k) == v for k, v in match.items())
    ]


async def scan_targets(daemon: Daemon) -> list[str]:
    async with daemon.store.engine.connect() as conn:
        return [r.address for r in await conn.execute(select(t.scan_targets))]


async def policy_records_in_store(daemon: Daemon) -> int:
    r = t.audit_records
    async with daemon.store.engine.connect() as conn:
        query = select(func.count()).select_from(r).where(r.c.record_type == "policy")
        return int((await conn.execute(query)).scalar() or 0)


async def test_exception_records_only_until_it_expires_then_scans_and_records_the_expiry(
    tmp_path: Path,
):
    policy_file = write_policy(tmp_path / "policy.yaml", exceptions=[EXCEPTION])
    source = FakeSource()
    daemon = Daemon(
        settings(tmp_path, policy_file),
        neutron=neutron_world(),
        source=source,
        backoff=BackoffPolicy(initial=0.05, cap=0.2),
    )
    clock = Clock(datetime(2027, 1, 30, 12, tzinfo=UTC))
    daemon.pipeline.rules = replace(daemon.pipeline.rules, now=clock)
    daemon.policy_expiry_seconds = 0.05
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))

    # project p1 opens tcp/443 to the Internet: accepted exposure, recorded, not scanned
    source.publish(rule_add("sg1", 443, rid="r443"))
    await wait_for(lambda: len(changes(audit(tmp_path))) == 2)
    accepted = changes(audit(tmp_path))
    assert {r["affected_ip_address"] for r in accepted} == {"10.0.0.1", "203.0.113.10"}
    for r in accepted:
        assert r["scan_state"] == "record_only"
        assert (r["policy_action"], r["policy_rule"]) == ("record_only", "shop-web-https")
        assert "owner team-shop-web, ticket SEC-1432" in r["qualys_scan_error"]
    assert await scan_targets(daemon) == []
    assert [r for r in audit(tmp_path) if r["record_type"] != "change"] == []

    # time passes the expiry: the expiry is recorded, once
    clock.now = datetime(2027, 1, 31, 0, 0, 1, tzinfo=UTC)
    await wait_for(lambda: any(r["record_type"] == "policy" for r in audit(tmp_path)))
    (expiry,) = [r for r in audit(tmp_path) if r["record_type"] == "policy"]
    assert expiry["change_type"] == "policy_exception_expired"
    assert expiry["policy_rule"] == "shop-web-https"
    assert (expiry["policy_owner"], expiry["policy_ticket"]) == ("team-shop-web", "SEC-1432")
    assert expiry["policy_reason"] == "public HTTPS front end behind the WAF"
    assert expiry["expired_at"] == "2027-01-31T00:00:00Z"
    assert expiry["project_id"] == "p1"

    # the next matching change is scanned
    source.publish(port_create("p2", "10.0.0.2", ["sg1"]))
    await wait_for(lambda: bool(changes(audit(tmp_path), change_type="port_create")))
    (opened,) = changes(audit(tmp_path), change_type="port_create")
    assert opened["opened"][0]["port_range_min"] == 443
    assert opened["scan_state"] == "queued" and opened["policy_action"] == "scan"
    assert opened["policy_rule"] == ""
    assert opened["policy_matches"][0]["policy_kind"] == "default"
    await wait_for(
        lambda: any(
            r["record_type"] == "scan" and r["target_addresses"] == ["10.0.0.2"]
            for r in audit(tmp_path)
        )
    )
    assert await scan_targets(daemon) == ["10.0.0.2"]
    stop.set()
    assert await runner == 0

    # a restart, or another instance on the same store, records it no second time
    again = Daemon(settings(tmp_path, policy_file), neutron=neutron_world(), source=FakeSource())
    await again.prepare()
    again.pipeline.rules = replace(again.pipeline.rules, now=clock)
    assert await again.expire_policy_once() == 0
    async with again.store.engine.begin() as conn:  # as if the instance never saw the mark
        await conn.execute(delete(t.meta).where(t.meta.c.key.like("policy_expired:%")))
    other = Daemon(settings(tmp_path, policy_file), neutron=neutron_world(), source=FakeSource())
    other.pipeline.rules = replace(other.pipeline.rules, now=clock)
    assert await other.expire_policy_once() == 0  # the store refuses the same record id
    assert await policy_records_in_store(other) == 1
    await again.store.close()
    await other.store.close()


async def test_reload_swaps_the_policy_between_batches_and_keeps_it_when_invalid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    policy_file = write_policy(tmp_path / "policy.yaml")
    daemon = Daemon(settings(tmp_path, policy_file), neutron=neutron_world(), source=FakeSource())
    await daemon.prepare()
    assert daemon.pipeline.rules.policy is not None
    assert daemon.pipeline.rules.policy.exceptions == ()

    write_policy(policy_file, exceptions=[{**EXCEPTION, "expires": "2099-01-01"}])
    feeding = [
        asyncio.create_task(daemon.process([Item(rule_add("sg1", port), "amqp", "")]))
        for port in (80, 443, 8080)
    ]
    with caplog.at_level(logging.INFO, logger="osel.daemon"):
        assert await daemon.reload_policy()
    await asyncio.gather(*feeding)
    assert "reloaded: 1 exception(s), 0 rule(s) (was 0 exception(s), 0 rule(s))" in caplog.text
    records = await daemon.store.tail(100)
    assert len(records) == 6  # three changes, two addresses each: none lost
    assert {r["policy_action"] for r in records} <= {"scan", "record_only"}

    write_policy(policy_file, exceptions=[{**EXCEPTION, "ticket": ""}])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="osel.daemon"):
        assert not await daemon.reload_policy()
    assert "not reloaded; the policy in force stays" in caplog.text
    assert "exceptions[0].ticket" in caplog.text
    kept = daemon.pipeline.rules.policy
    assert kept is not None and [e.name for e in kept.exceptions] == ["shop-web-https"]
    await daemon.process([Item(port_create("p3", "10.0.0.3", ["sg1"]), "amqp", "")])
    (latest,) = changes(await daemon.store.tail(100), change_type="port_create")
    matched = {x["port_range_min"]: x["policy_rule"] for x in latest["policy_matches"]}
    assert matched == {80: "", 443: "shop-web-https", 8080: ""}
    assert latest["scan_state"] == "queued"  # 80 and 8080 are not excepted
    await daemon.store.close()


# --------------------------------------------------------------------------- shadow replay

OLD = {"exceptions": [{**EXCEPTION, "expires": "2099-01-01"}]}
NEW = {
    "rules": [
        {
            "name": "no-alt-http",
            "match": {"protocol": "tcp", "ports": 8080},
            "action": "record_only",
        },
        {"name": "ssh-last", "match": {"protocol": "tcp", "ports": 22}, "priority": "low"},
        {"name": "web-normal", "match": {"ports": 443}, "priority": "normal"},
    ]
}


async def recorded_scenario(tmp_path: Path) -> tuple[Daemon, dict[str, list[str]]]:
    """Changes committed under OLD; which record ids NEW should report, by kind."""
    daemon = Daemon(
        settings(tmp_path, write_policy(tmp_path / "old.yaml", **OLD)),
        neutron=neutron_world(),
        source=FakeSource(),
    )
    await daemon.prepare()
    bodies = [
        rule_add("sg1", 443, rid="r443"),  # OLD: record only; NEW: scanned
        rule_add("sg1", 8080, rid="r8080"),  # OLD: scanned; NEW: record only
        rule_add("sg1", 22, rid="r22"),  # OLD: scanned first (0); NEW: low (1)
        rule_add("sg1", 80, rid="r80", remote="10.0.0.0/8"),  # scanned at 3 under both
        rule_add("sg1", 25, rid="r25", direction="egress"),  # never scanned
        rule_add("sg1", 443, rid="r443b", remote="198.51.100.0/24"),  # opens nothing new
        port_create("p5", "10.0.0.5", ["sg1"]),  # opens 443, 8080, 22, 80: scanned under both
    ]
    for body in bodies:
        await daemon.process([Item(body, "amqp", "")])
    records = changes(await daemon.store.tail(1000))
    assert len(records) == 13  # six rules on two addresses, and the new port's one

    def ids(rule_id: str) -> list[str]:
        return sorted(
            r["record_id"] for r in records if (r["security_group_rule"] or {}).get("id") == rule_id
        )

    return daemon, {"scanned": ids("r443"), "not_scanned": ids("r8080"), "priority": ids("r22")}


async def test_shadow_replay_reports_exactly_the_changes_whose_outcome_differs(tmp_path: Path):
    daemon, expected = await recorded_scenario(tmp_path)
    since = parse_since("1d", datetime.now(UTC))
    records = await committed_changes(daemon.store, since)
    new = load_policy(write_policy(tmp_path / "new.yaml", **NEW))
    report = compare(new, records, Report("new.yaml", "", ""))
    got: dict[str, list[str]] = {"scanned": [], "not_scanned": [], "priority": []}
    for d in report.differences or []:
        got[d.kind].append(d.record_id)
    assert {k: sorted(v) for k, v in got.items()} == expected
    assert report.considered == 13 and report.candidates == 9
    by_kind = {d.kind: d for d in report.differences or []}
    assert by_kind["priority"].before.priority == 0 and by_kind["priority"].after.priority == 1
    assert by_kind["not_scanned"].after.rule == "no-alt-http"
    assert by_kind["scanned"].before.rule == "shop-web-https"
    # the policy in force, replayed against itself, changes nothing
    same = compare(load_policy(tmp_path / "old.yaml"), records, Report("", "", ""))
    assert same.differences == []
    # nothing was written: no scan target, no record
    before = await daemon.store.last_record_id()
    assert len(await committed_changes(daemon.store, since + timedelta(days=2))) == 0
    assert await daemon.store.last_record_id() == before
    await daemon.store.close()


async def _recorded_state(tmp_path: Path) -> tuple[dict[str, list[str]], list[str], int]:
    daemon, expected = await recorded_scenario(tmp_path)
    state = (expected, await scan_targets(daemon), await daemon.store.last_record_id())
    await daemon.store.close()
    return state


async def _reopened_state(tmp_path: Path) -> tuple[list[str], int]:
    daemon = Daemon(settings(tmp_path, None), neutron=neutron_world(), source=FakeSource())
    state = (await scan_targets(daemon), await daemon.store.last_record_id())
    await daemon.store.close()
    return state


def test_shadow_replay_from_the_command_line(tmp_path: Path):
    expected, targets_before, last = asyncio.run(_recorded_state(tmp_path))
    config = tmp_path / "osel.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "scan": {"backend": "dry-run"},
                "store": {"url": f"sqlite:///{tmp_path}/osel.db"},
                "http": {"enabled": False},
            }
        )
    )
    new = write_policy(tmp_path / "new.yaml", **NEW)
    runner = CliRunner()
    result = runner.invoke(
        main, ["replay", "--policy", str(new), "--since", "7d", "-c", str(config), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["summary"] == {"not_scanned": 2, "scanned": 2, "priority": 2}
    assert (
        sorted(d["record_id"] for d in report["differences"] if d["kind"] == "scanned")
        == (expected["scanned"])
    )
    text = runner.invoke(
        main, ["replay", "--policy", str(new), "--since", "2000-01-01", "-c", str(config)]
    )
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert (
        "6 would differ (2 no longer scanned, 2 newly scanned, 2 with another priority)"
        in (lines[0])
    )
    assert lines[1].split()[:3] == ["timestamp", "change", "address"]
    assert sum("scanned -> not scanned" in x for x in lines) == 2
    changed = [x.split("priority changed")[1].split() for x in lines if "priority changed" in x]
    assert changed == [["scan", "p0", "scan", "p1", "(ssh-last)"]] * 2
    usage = runner.invoke(main, ["replay", "--policy", str(new), "-c", str(config)])
    assert usage.exit_code == 2 and "--since" in usage.output
    bad_since = runner.invoke(
        main, ["replay", "--policy", str(new), "--since", "lastweek", "-c", str(config)]
    )
    assert bad_since.exit_code == 2 and "7d" in bad_since.output
    # nothing was written by the shadow replay
    assert asyncio.run(_reopened_state(tmp_path)) == (targets_before, last)


def test_since_accepts_periods_and_dates():
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2026, 11, 21, 12, tzinfo=UTC)
    assert parse_since("12h", now) == datetime(2026, 11, 28, tzinfo=UTC)
    assert parse_since("2w", now) == datetime(2026, 11, 14, 12, tzinfo=UTC)
    assert parse_since("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_since("2026-11-01T10:00:00+01:00", now) == datetime(2026, 11, 1, 9, tzinfo=UTC)
    with pytest.raises(ValueError, match="7d"):
        parse_since("a week", now)


async def test_two_instances_on_postgresql_record_an_expiry_once(tmp_path: Path):
    from tests.pg import postgres_database

    policy_file = write_policy(tmp_path / "policy.yaml", exceptions=[EXCEPTION])
    clock = Clock(datetime(2027, 2, 1, tzinfo=UTC))
    with postgres_database() as url:
        config = settings(tmp_path, policy_file).model_dump(mode="python")
        config["store"] = {"url": url}
        both = [
            Daemon(Settings.model_validate(config), neutron=neutron_world(), source=FakeSource())
            for _ in range(2)
        ]
        await both[0].store.migrate()
        for daemon in both:
            daemon.pipeline.rules = replace(daemon.pipeline.rules, now=clock)
        written = await asyncio.gather(*(d.expire_policy_once() for d in both))
        assert sorted(written) == [0, 1]
        assert await policy_records_in_store(both[0]) == 1
        for daemon in both:
            await daemon.store.close()
