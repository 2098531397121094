"""The exposure policy: the file, its matching, and its effect on the decision."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from osel.cli import main
from osel.config import ConfigError
from osel.config_load import load_settings
from osel.decide import Rules
from osel.exposure import Permit
from osel.policy import Policy, PolicyError, Subject, load_policy, parse_policy
from osel.store.store import Store
from tests import messages as m
from tests.fakes import FakeNeutron
from tests.unit.conftest import Harness
from tests.unit.test_pipeline import world

ROOT = Path(__file__).parents[2]
NOW = datetime(2026, 12, 1, tzinfo=UTC)
WEB = {
    "name": "web-443",
    "match": {"project_id": "p1", "protocol": "tcp", "ports": 443, "remote": "0.0.0.0/0"},
    "owner": "team-web",
    "reason": "public web tier",
    "ticket": "SEC-1",
    "expires": "2027-01-31",
}


def policy(*, exceptions: list[Any] | None = None, rules: list[Any] | None = None) -> Policy:
    doc = {"version": 1, "exceptions": exceptions or [], "rules": rules or []}
    return parse_policy(yaml.safe_dump(doc), "test.yaml")


def tcp(low: int, high: int | None = None, remote: str = "0.0.0.0/0", **kw: Any) -> Permit:
    internet = kw.pop("internet", not remote.startswith("10."))
    return Permit("tcp", low, high if high is not None else low, remote, internet, **kw)


SUBJECT = Subject("p1", "sg1", "port1", "203.0.113.10")


# --------------------------------------------------------------------------- the file


def test_example_policy_is_valid_and_explained():
    loaded = load_policy(ROOT / "examples" / "policy.yaml")
    assert [e.name for e in loaded.exceptions] == ["shop-web-https", "redteam-lab"]
    assert [r.name for r in loaded.rules] == [
        "payments-first",
        "management-only",
        "noc-icmp",
    ]
    assert loaded.exceptions[0].expires == datetime(2027, 6, 30, tzinfo=UTC)
    assert loaded.exceptions[1].expires == datetime(2027, 3, 31, 18, tzinfo=UTC)


def test_every_problem_is_reported_with_its_key_line_and_value():
    text = (
        "version: 1\n"
        "exceptions:\n"
        "  - name: x\n"
        "    match: {project_id: p1, protocl: tcp, ports: 99999}\n"
        "    owner: team\n"
        "    expires: soon\n"
        "rules:\n"
        "  - name: y\n"
        "    match: {remote: 10.0.0.1/8}\n"
        "    actoin: record_only\n"
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    shown = {p.key: str(p) for p in caught.value.problems}
    assert "did you mean 'protocol'" in shown["exceptions[0].match.protocl"]
    assert shown["exceptions[0].match.ports"].startswith("p.yaml:4: ")
    assert "ports run 0-65535" in shown["exceptions[0].match.ports"]
    assert (
        "every exception needs name, match, owner, reason, ticket" in shown["exceptions[0].reason"]
    )
    assert "exceptions[0].ticket" in shown
    assert (
        "2027-01-31" in shown["exceptions[0].expires"]
        and "'soon'" in shown["exceptions[0].expires"]
    )
    assert "did you mean 10.0.0.0/8?" in shown["rules[0].match.remote"]
    assert "did you mean 'action'" in shown["rules[0].actoin"]


@pytest.mark.parametrize(
    ("entry", "where", "words"),
    [
        ({**WEB, "expires": None}, "exceptions[0].expires", "expected a date"),
        ({**WEB, "match": {"protocol": "tcp", "ports": 443}}, "exceptions[0].match", "whose"),
        ({**WEB, "owner": " "}, "exceptions[0].owner", "must not be empty"),
        ({**WEB, "action": "record_only", "priority": "high"}, "exceptions[0]", "scan only"),
    ],
)
def test_exception_mistakes(entry, where, words):
    with pytest.raises(PolicyError) as caught:
        policy(exceptions=[entry])
    assert any(p.key == where and words in p.message for p in caught.value.problems), str(
        caught.value
    )


@pytest.mark.parametrize(
    ("match", "words"),
    [
        ({"protocol": "tcpp"}, "unknown protocol"),
        ({"protocol": "icmp", "ports": 22}, "ports apply to tcp"),
        ({"ports": "90-80"}, "low-high"),
        ({"address": "nonsense"}, "not a CIDR"),
        ({"internet_exposed": "maybe"}, "true or false"),
    ],
)
def test_match_mistakes(match, words):
    with pytest.raises(PolicyError) as caught:
        policy(rules=[{"name": "r", "match": match}])
    assert words in str(caught.value)


def test_names_are_unique_and_version_is_one():
    with pytest.raises(PolicyError, match="used twice"):
        policy(rules=[{"name": "a"}], exceptions=[{**WEB, "name": "a"}])
    with pytest.raises(PolicyError, match="must be 1"):
        parse_policy("version: 2\n", "p.yaml")
    with pytest.raises(PolicyError, match="empty"):
        parse_policy("", "p.yaml")
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy("/nonexistent/policy.yaml")


def test_expiry_date_is_midnight_utc_and_datetimes_keep_their_zone():
    p = policy(
        exceptions=[
            WEB,
            {**WEB, "name": "b", "expires": "2027-01-31T18:00:00+02:00"},
            {**WEB, "name": "c", "expires": "2027-01-31 10:00"},
        ]
    )
    assert [e.expires for e in p.exceptions] == [
        datetime(2027, 1, 31, tzinfo=UTC),
        datetime(2027, 1, 31, 16, tzinfo=UTC),
        datetime(2027, 1, 31, 10, tzinfo=UTC),
    ]


# --------------------------------------------------------------------------- matching


def hit(p: Policy, permit: Permit, subject: Subject = SUBJECT, now: datetime = NOW) -> str:
    return p.hit(subject, permit, now).name


def test_ports_match_when_the_opened_range_lies_within():
    p = policy(rules=[{"name": "https", "match": {"protocol": "tcp", "ports": 443}}])
    assert hit(p, tcp(443)) == "https"
    assert hit(p, tcp(1, 1024)) == ""  # opens more than 443
    assert hit(p, Permit(None, 0, 65535, "0.0.0.0/0", True)) == ""  # every protocol
    assert hit(p, Permit("udp", 443, 443, "0.0.0.0/0", True)) == ""
    wide = policy(rules=[{"name": "low", "match": {"ports": ["1-1024", 8080, "8081"]}}])
    assert hit(wide, tcp(22)) == "low"
    assert hit(wide, tcp(8080, 8081)) == "low"  # within the listed ports together
    assert hit(wide, tcp(1000, 2000)) == ""
    numbered = policy(rules=[{"name": "n", "match": {"protocol": 6}}])
    assert hit(numbered, tcp(22)) == "n"


def test_remote_matches_equal_or_narrower_prefixes():
    p = policy(rules=[{"name": "any", "match": {"remote": "0.0.0.0/0"}}])
    assert hit(p, tcp(22, remote="198.51.100.0/24")) == "any"
    assert hit(p, tcp(22, remote="group:sg9", internet=False)) == "any"
    assert hit(p, tcp(22, remote="::/0")) == ""  # another IP version
    narrow = policy(rules=[{"name": "mgmt", "match": {"remote": ["10.20.0.0/16"]}}])
    assert hit(narrow, tcp(22, remote="10.20.1.0/24")) == "mgmt"
    assert hit(narrow, tcp(22, remote="0.0.0.0/0")) == ""  # wider than the rule
    assert hit(narrow, tcp(22, remote="group:sg9", internet=False)) == ""


def test_record_level_keys():
    p = policy(
        rules=[
            {"name": "sg", "match": {"security_group_id": "sg2"}},
            {"name": "port", "match": {"port_id": ["port9", "port1"]}},
        ]
    )
    # the permit's own group (from the rule that grants it) comes before the record's
    assert hit(p, tcp(22, security_group_id="sg2")) == "sg"
    assert hit(p, tcp(22)) == "port"
    addr = policy(rules=[{"name": "lab", "match": {"address": "203.0.113.0/24"}}])
    assert hit(addr, tcp(22)) == "lab"
    assert hit(addr, tcp(22), Subject("p1", "", "", "10.0.0.1")) == ""
    net = policy(rules=[{"name": "i", "match": {"internet_exposed": False}}])
    assert hit(net, tcp(22, remote="10.0.0.0/8")) == "i"
    assert hit(net, tcp(22)) == ""


def test_exceptions_come_first_then_first_rule_wins_and_expired_ones_stop_applying():
    p = policy(
        exceptions=[WEB],
        rules=[
            {"name": "high", "match": {"protocol": "tcp"}, "priority": "high"},
            {"name": "never", "match": {"protocol": "tcp"}, "action": "record_only"},
        ],
    )
    assert p.hit(SUBJECT, tcp(443), NOW).kind == "exception"
    assert hit(p, tcp(443), now=datetime(2027, 1, 30, 23, 59, tzinfo=UTC)) == "web-443"
    assert hit(p, tcp(443), now=datetime(2027, 1, 31, tzinfo=UTC)) == "high"  # expired
    assert hit(p, tcp(22)) == "high"
    assert hit(p, tcp(443), Subject("p2", "", "", "203.0.113.10")) == "high"  # other project


def test_an_exception_never_hides_other_exposure_of_the_same_change():
    p = policy(exceptions=[WEB])
    both = p.outcome(SUBJECT, [tcp(443), tcp(22)], NOW)
    assert both.action == "scan" and both.rule == ""
    assert [(x["port_range_min"], x["policy_rule"]) for x in both.matches_json()] == [
        (443, "web-443"),
        (22, ""),
    ]
    only = p.outcome(SUBJECT, [tcp(443)], NOW)
    assert only.action == "record_only" and only.rule == "web-443"
    assert "owner team-web, ticket SEC-1" in only.reason()


def test_priority_of_a_record_is_the_highest_of_its_scanned_permits():
    p = policy(
        rules=[
            {"name": "ssh", "match": {"ports": 22}, "priority": "high"},
            {"name": "rest", "match": {}, "priority": "low"},
        ]
    )
    assert p.outcome(SUBJECT, [tcp(8080), tcp(22)], NOW).priority == "high"
    assert p.outcome(SUBJECT, [tcp(8080)], NOW).priority == "low"
    assert p.outcome(SUBJECT, [], NOW).action == "scan"


# --------------------------------------------------------------------------- the decision


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(f"sqlite:///{tmp_path}/osel.db")
    await s.migrate()
    yield s
    await s.close()


def harness(store: Store, p: Policy | None, now: datetime = NOW) -> Harness:
    h = Harness(store, FakeNeutron(), Rules(policy=p, now=lambda: now))
    world(h)
    return h


def rule_add(**kw: Any) -> bytes:
    return m.envelope(
        m.notification("security_group_rule.create.end", {"security_group_rule": m.rule(**kw)})
    )


async def targets(store: Store) -> list[Any]:
    from sqlalchemy import select

    from osel.store import tables as t

    async with store.engine.connect() as conn:
        return list(await conn.execute(select(t.scan_targets)))


async def test_record_only_is_committed_with_why_and_no_scan_target(sqlite_store: Store):
    h = harness(sqlite_store, policy(exceptions=[WEB]))
    await h.feed(rule_add(sg="sg1", low=443, high=443))
    records = await h.records()
    assert len(records) == 3
    for r in records:
        assert r["scan_state"] == "record_only"
        assert r["policy_action"] == "record_only" and r["policy_rule"] == "web-443"
        assert r["policy_matches"][0]["policy_kind"] == "exception"
        assert "exception web-443 (owner team-web, ticket SEC-1" in r["qualys_scan_error"]
        assert r["scan_priority"] is None
    assert await targets(sqlite_store) == []


async def test_partly_covered_change_is_scanned(sqlite_store: Store):
    h = harness(sqlite_store, policy(exceptions=[WEB]))
    h.neutron.groups["sg1"] = h.neutron.groups["sg1"]
    group = {"id": "sg5", "project_id": "p1", "security_group_rules": []}
    await h.feed(m.envelope(m.notification("security_group.create.end", {"security_group": group})))
    await h.feed(rule_add(sg="sg5", low=443, high=443), rule_add(sg="sg5", low=8080, high=8080))
    await h.feed(
        m.envelope(m.notification("port.create.end", {"port": m.port("p7", ["10.0.0.7"], ["sg5"])}))
    )
    (record,) = [r for r in await h.records() if r["change_type"] == "port_create"]
    assert record["scan_state"] == "queued" and record["policy_action"] == "scan"
    assert {(x["port_range_min"], x["policy_rule"]) for x in record["policy_matches"]} == {
        (443, "web-443"),
        (8080, ""),
    }
    assert [t.address for t in await targets(sqlite_store)] == ["10.0.0.7"]


async def test_priority_rules_map_onto_the_scan_order(sqlite_store: Store):
    p = policy(
        rules=[
            {"name": "web-first", "match": {"ports": [443, 8443]}, "priority": "high"},
            {"name": "ssh-last", "match": {"ports": 22}, "priority": "low"},
        ]
    )
    h = harness(sqlite_store, p)
    await h.feed(rule_add(sg="sg1", low=443, high=443), rule_add(sg="sg1"))
    got = {
        (r["security_group_rule"]["port_range_min"], r["scan_priority"]) for r in await h.records()
    }
    assert got == {(443, 0), (22, 1)}  # without the policy: 443 is 1, 22 is 0
    assert sorted(t.priority for t in await targets(sqlite_store)) == [0, 0, 0, 1, 1, 1]
    # internet exposure keeps its place: an internal-only opening stays behind
    await h.feed(rule_add(sg="sg1", low=8443, high=8443, remote="10.0.0.0/8", rid="internal"))
    internal = [r for r in await h.records() if r["security_group_rule"]["id"] == "internal"]
    assert {r["scan_priority"] for r in internal} == {2}  # 3 without the policy


async def test_without_a_policy_nothing_changes_but_the_fields_are_there(sqlite_store: Store):
    h = harness(sqlite_store, None)
    await h.feed(rule_add(sg="sg1"))
    for r in await h.records():
        assert r["scan_state"] == "queued" and r["scan_priority"] == 0
        assert (r["policy_rule"], r["policy_action"], r["policy_matches"]) == ("", "", [])


async def test_scope_decides_before_the_policy(sqlite_store: Store):
    h = Harness(
        sqlite_store,
        FakeNeutron(),
        Rules(
            out_of_scope=lambda a: "excluded" if a.startswith("10.") else None,
            policy=policy(rules=[{"name": "all", "match": {}, "priority": "high"}]),
            now=lambda: NOW,
        ),
    )
    world(h)
    await h.feed(rule_add(sg="sg1"))
    states = {
        (r["affected_ip_address"], r["scan_state"], r["policy_rule"]) for r in await h.records()
    }
    assert states == {
        ("10.0.0.1", "out_of_scope", ""),
        ("10.0.0.2", "out_of_scope", ""),
        ("203.0.113.10", "queued", "all"),
    }


# --------------------------------------------------------------------------- configuration and CLI


def write(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_check_config_validates_the_policy_file(tmp_path: Path):
    bad = write(tmp_path / "policy.yaml", {"version": 1, "exceptions": [{**WEB, "ticket": ""}]})
    config = write(
        tmp_path / "osel.yaml", {"scan": {"backend": "dry-run"}, "policy": {"file": str(bad)}}
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(config, env={})
    (problem,) = caught.value.problems
    assert problem.key == "policy.file: exceptions[0].ticket"
    line = 1 + next(i for i, x in enumerate(bad.read_text().splitlines()) if "ticket:" in x)
    assert problem.source == f"{bad}:{line}" and "must not be empty" in problem.message
    result = CliRunner().invoke(main, ["check-config", "-c", str(config)])
    assert result.exit_code == 1 and "policy.file: exceptions[0].ticket" in result.output
    missing = write(
        tmp_path / "osel2.yaml",
        {"scan": {"backend": "dry-run"}, "policy": {"file": str(tmp_path / "nope.yaml")}},
    )
    with pytest.raises(ConfigError, match="policy file does not exist"):
        load_settings(missing, env={})
    write(bad, {"version": 1, "exceptions": [WEB | {"expires": "2020-01-01"}]})
    assert load_settings(config, env={}).policy.file == str(bad)
    ok = CliRunner().invoke(main, ["check-config", "-c", str(config)])
    assert ok.exit_code == 0, ok.output
    assert f"policy {bad}: 1 exception(s), 0 rule(s)" in ok.output
    assert "warning: policy exception web-443 expired on 2020-01-01" in ok.output


def test_policy_check_explains_and_flags_expiries(tmp_path: Path):
    soon = (datetime.now(UTC) + timedelta(days=3)).date().isoformat()
    path = write(
        tmp_path / "p.yaml",
        {
            "version": 1,
            "exceptions": [
                WEB | {"expires": "2020-01-01"},
                WEB | {"name": "soon", "expires": soon},
                WEB | {"name": "later", "expires": "2099-01-01"},
            ],
            "rules": [{"name": "ssh", "match": {"ports": 22}, "priority": "high"}],
        },
    )
    result = CliRunner().invoke(main, ["policy", "check", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "3 exception(s), 1 rule(s)" in out and "policy OK" in out
    assert "exception web-443: record only, do not scan: tcp port(s) 443" in out
    assert "warning: expired on 2020-01-01T00:00:00Z" in out
    assert "warning: expires in " in out and f"on {soon}T00:00:00Z" in out
    assert out.count("warning") == 2
    assert "rule ssh: scan at high priority: any protocol port(s) 22" in out
    write(path, "version: 1\nrules:\n  - match: {}\n")
    bad = CliRunner().invoke(main, ["policy", "check", str(path)])
    assert bad.exit_code == 1 and "rules[0].name: required key is missing" in bad.output


def test_policy_test_shows_the_rule_each_permit_hits(tmp_path: Path):
    path = write(tmp_path / "p.yaml", {"version": 1, "exceptions": [WEB]})
    record = {
        "record_type": "change",
        "change_type": "port_create",
        "project_id": "p1",
        "affected_ip_address": "203.0.113.10",
        "opened": [
            tcp(443).to_json(),
            tcp(22).to_json(),
        ],
    }
    result = CliRunner().invoke(
        main, ["policy", "test", str(path), "--change", json.dumps(record), "--at", "2026-12-01"]
    )
    assert result.exit_code == 0, result.output
    assert "tcp 443 from 0.0.0.0/0: exception web-443: record only, do not scan" in result.output
    assert "tcp 22 from 0.0.0.0/0: no rule matches: scan at normal priority" in result.output
    assert "=> scan, normal priority" in result.output
    record["opened"] = [tcp(443).to_json()]
    stdin = json.dumps(record) + "\n" + json.dumps({**record, "project_id": "p2"}) + "\n"
    as_json = CliRunner().invoke(
        main, ["policy", "test", str(path), "--change", "-", "--json"], input=stdin
    )
    assert as_json.exit_code == 0, as_json.output
    outcomes = json.loads(as_json.output)
    assert [(o["policy_action"], o["policy_rule"]) for o in outcomes] == [
        ("record_only", "web-443"),
        ("scan", ""),
    ]
    late = CliRunner().invoke(
        main, ["policy", "test", str(path), "--change", json.dumps(record), "--at", "2027-02-01"]
    )
    assert "=> scan" in late.output  # the exception has expired by then
    nonsense = CliRunner().invoke(main, ["policy", "test", str(path), "--change", "{nope"])
    assert nonsense.exit_code == 2 and "--change" in nonsense.output
