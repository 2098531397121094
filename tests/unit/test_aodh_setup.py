"""`osel aodh setup`/`url`, the alarm template, and the webhook route in the HTTP app."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner
from fastapi import FastAPI
from sqlalchemy.exc import OperationalError

from osel import aodh_setup as setup
from osel.aodh import EVENT_PATTERNS, project_token, verify_token
from osel.aodh_route import aodh_routes
from osel.cli import main
from osel.config import Settings
from osel.config_load import load_settings
from osel.pipeline import Item, Stats
from tests.fakes import FakeNeutron
from tests.unit.test_aodh import RULE_ALARM

ROOT = Path(__file__).parents[2]
SECRET = "s3cret-for-tests"
URL = "https://osel.example.com:9797"


def settings(**http: Any) -> Settings:
    env = {"OSEL_SCAN__BACKEND": "dry-run"}
    values = {"public_url": URL, "aodh_token": SECRET, **http}
    for key, value in values.items():
        env[f"OSEL_HTTP__{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return load_settings(env=env)


# --------------------------------------------------------------------------- template and plan


def test_one_alarm_per_kind_per_project_that_fires_again_and_again():
    alarms = setup.alarms_for("osel", "p1", "https://x/v1/aodh/t")
    assert [a["event_rule"]["event_type"] for a in alarms] == list(EVENT_PATTERNS.values())
    assert {a["name"] for a in alarms} == {f"osel-{kind}" for kind in EVENT_PATTERNS}
    for a in alarms:
        assert a["type"] == "event" and a["repeat_actions"] is True and a["enabled"] is True
        assert a["project_id"] == "p1" and a["alarm_actions"] == ["https://x/v1/aodh/t"]


def test_the_shipped_alarm_template_is_the_one_setup_uses():
    shipped = (ROOT / "deploy/aodh/alarm.json").read_text()
    assert shipped == setup.template_json(), "regenerate deploy/aodh/alarm.json"


def existing(alarm: dict[str, Any], alarm_id: str, **changes: Any) -> dict[str, Any]:
    """An alarm as Aodh lists it: ids, state and timestamps added."""
    return {**alarm, "alarm_id": alarm_id, "state": "alarm", "user_id": "u", **changes}


def test_plan_creates_what_is_missing_and_keeps_what_matches():
    wanted = setup.alarms_for("osel", "p1", "https://x/a") + setup.alarms_for("osel", "p2", "u2")
    have = [existing(a, f"id{i}") for i, a in enumerate(wanted[:4])]
    steps = setup.plan(have, wanted, prefix="osel")
    assert Counter(s.verb for s in steps) == {"unchanged": 4, "create": 4}
    assert {s.project_id for s in steps if s.verb == "create"} == {"p2"}


def test_plan_updates_an_alarm_whose_action_or_rule_changed():
    wanted = setup.alarms_for("osel", "p1", "https://new/a")
    have = [existing(a, f"id{i}", alarm_actions=["https://old/a"]) for i, a in enumerate(wanted)]
    have[0]["event_rule"] = {"event_type": "*", "query": []}
    steps = setup.plan(have, wanted, prefix="osel")
    assert [s.verb for s in steps] == ["update"] * 4
    assert steps[0].alarm_id == "id0" and steps[0].body == wanted[0]


def test_trust_ids_added_by_aodh_do_not_count_as_a_change():
    wanted = setup.alarms_for("osel", "p1", "trust+https://osel:9797/v1/aodh/p1")
    have = [
        existing(a, f"id{i}", alarm_actions=["trust+https://tid:delete@osel:9797/v1/aodh/p1"])
        for i, a in enumerate(wanted)
    ]
    assert {s.verb for s in setup.plan(have, wanted, prefix="osel")} == {"unchanged"}


def test_alarms_no_longer_wanted_are_stale_or_pruned_and_others_left_alone():
    wanted = setup.alarms_for("osel", "p1", "u")
    gone = existing(setup.alarms_for("osel", "p-gone", "u")[0], "old")
    foreign = existing({**wanted[0], "name": "cpu-high"}, "theirs")
    steps = setup.plan([gone, foreign], wanted, prefix="osel")
    assert [(s.verb, s.alarm_id) for s in steps if s.verb == "stale"] == [("stale", "old")]
    pruned = setup.plan([gone, foreign], wanted, prefix="osel", prune=True)
    assert [(s.verb, s.alarm_id) for s in pruned if s.verb == "delete"] == [("delete", "old")]
    assert all(s.alarm_id != "theirs" for s in pruned)


class FakeAodh:
    def __init__(self, alarms: list[dict[str, Any]] | None = None) -> None:
        self.alarms = {a["alarm_id"]: a for a in alarms or []}
        self.calls: list[tuple[str, str]] = []
        self.next = 0

    def projects(self) -> list[str]:
        return ["p1", "p2"]

    def event_alarms(self) -> list[dict[str, Any]]:
        return list(self.alarms.values())

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        self.next += 1
        alarm = existing(body, f"new{self.next}")
        self.alarms[alarm["alarm_id"]] = alarm
        self.calls.append(("create", alarm["alarm_id"]))
        return alarm

    def update(self, alarm_id: str, body: dict[str, Any]) -> dict[str, Any]:
        self.alarms[alarm_id] = existing(body, alarm_id)
        self.calls.append(("update", alarm_id))
        return self.alarms[alarm_id]

    def delete(self, alarm_id: str) -> None:
        del self.alarms[alarm_id]
        self.calls.append(("delete", alarm_id))


def test_apply_then_plan_again_is_a_no_op():
    api = FakeAodh()
    wanted = setup.wanted(settings(), api.projects())
    setup.apply(api, setup.plan(api.event_alarms(), wanted, prefix="osel"))
    assert [c[0] for c in api.calls] == ["create"] * 8
    again = setup.plan(api.event_alarms(), wanted, prefix="osel")
    assert {s.verb for s in again} == {"unchanged"}


def test_each_projects_alarms_carry_its_own_token():
    alarms = setup.wanted(settings(), ["p1", "p2"])
    for alarm in alarms:
        (url,) = alarm["alarm_actions"]
        assert url.startswith(f"{URL}/v1/aodh/")
        assert verify_token(url.rsplit("/", 1)[1], SECRET) == alarm["project_id"]


@pytest.mark.parametrize(
    ("http", "error", "warning"),
    [
        ({"public_url": None}, "http.public_url is not set", None),
        ({"aodh_token": None}, "http.aodh_token is not set", None),
        (
            {"keystone_validate": True, "keystone_users": ["admin"]},
            "is not trust+http(s)",
            None,
        ),
        ({"public_url": "trust+https://osel:9797"}, None, "ignores the Keystone token"),
        ({"enabled": False}, None, "serves no webhook"),
    ],
)
def test_webhook_problems_are_named_by_key(http, error, warning):
    values: dict[str, Any] = {"public_url": URL, "aodh_token": SECRET, **http}
    env = {"OSEL_SCAN__BACKEND": "dry-run"}
    for key, value in values.items():
        if value is not None:  # None: left at its default, which is null
            text = value if isinstance(value, str) else json.dumps(value)
            env[f"OSEL_HTTP__{key.upper()}"] = text
    errors, warnings = setup.webhook_problems(load_settings(env=env))
    assert (error is None) == (not errors) and all(error in e for e in errors)
    assert (warning is None) == (not warnings) and all(warning in w for w in warnings)


# --------------------------------------------------------------------------- the commands


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "osel.yaml"
    (tmp_path / "aodh.token").write_text(SECRET + "\n")
    path.write_text(
        yaml.safe_dump(
            {
                "scan": {"backend": "dry-run"},
                "store": {"url": f"sqlite:///{tmp_path}/osel.db"},
                "http": {"public_url": URL, "aodh_token_file": str(tmp_path / "aodh.token")},
            }
        )
    )
    return path


def test_setup_dry_run_says_what_it_would_do_and_does_nothing(config, monkeypatch):
    api = FakeAodh()
    monkeypatch.setattr(setup, "connect", lambda _settings, cloud: cloud)
    monkeypatch.setattr(setup, "SdkAodhAdmin", lambda conn: api)
    result = CliRunner().invoke(main, ["aodh", "setup", "-c", str(config), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert api.calls == []
    assert result.output.count("would create") == 8
    assert "dry run: 8 create" in result.output
    assert SECRET not in result.output and project_token(SECRET, "p1") not in result.output


def test_setup_creates_then_finds_everything_in_place(config, monkeypatch):
    api = FakeAodh()
    clouds: list[Any] = []
    monkeypatch.setattr(setup, "connect", lambda _settings, cloud: clouds.append(cloud))
    monkeypatch.setattr(setup, "SdkAodhAdmin", lambda conn: api)
    args = ["aodh", "setup", "-c", str(config), "--cloud", "osel-admin", "--project", "p9"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "done: 4 create" in first.output and clouds == ["osel-admin"]
    assert {a["project_id"] for a in api.alarms.values()} == {"p9"}
    second = CliRunner().invoke(main, args)
    assert "done: 4 unchanged" in second.output and len(api.calls) == 4


def test_setup_refuses_without_a_public_url(tmp_path):
    path = tmp_path / "osel.yaml"
    path.write_text("scan: {backend: dry-run}\nhttp: {aodh_token: x}\n")
    result = CliRunner().invoke(main, ["aodh", "setup", "-c", str(path)])
    assert result.exit_code == 2 and "http.public_url is not set" in result.output


def test_setup_reports_an_aodh_failure(config, monkeypatch):
    class Failing(FakeAodh):
        def event_alarms(self) -> list[dict[str, Any]]:
            raise setup.AodhSetupError("listing event alarms: Aodh answered HTTP 403: denied")

    monkeypatch.setattr(setup, "connect", lambda _settings, cloud: None)
    monkeypatch.setattr(setup, "SdkAodhAdmin", lambda conn: Failing())
    result = CliRunner().invoke(main, ["aodh", "setup", "-c", str(config)])
    assert result.exit_code == 1 and "HTTP 403" in result.output


def test_url_prints_one_projects_webhook(config):
    result = CliRunner().invoke(main, ["aodh", "url", "p1", "-c", str(config)])
    assert result.exit_code == 0
    assert result.output.strip() == f"{URL}/v1/aodh/{project_token(SECRET, 'p1')}"


# --------------------------------------------------------------------------- the route


class Recorder:
    def __init__(self, fail: Exception | None = None) -> None:
        self.items: list[Item] = []
        self.fail = fail

    async def __call__(self, items: list[Item]) -> Stats:
        if self.fail is not None:
            raise self.fail
        self.items += items
        stats = Stats()
        stats.outcomes["recorded"] += 1
        return stats


def client(process: Recorder) -> httpx.AsyncClient:
    app = FastAPI()
    aodh_routes(settings(), FakeNeutron(), process)(app)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://osel")


async def test_the_route_commits_before_it_answers():
    process = Recorder()
    async with client(process) as http:
        response = await http.post(f"/v1/aodh/{project_token(SECRET, 'p1')}", json=RULE_ALARM)
    assert response.status_code == 200
    assert response.json()["outcome"] == "recorded"
    (item,) = process.items
    assert item.source == "aodh" and json.loads(item.body)["event_type"].startswith("security")


@pytest.mark.parametrize("path", ["/v1/aodh/p1.0123", "/v1/aodh/", "/v1/aodh"])
async def test_the_route_answers_401_and_commits_nothing_without_the_token(path):
    process = Recorder()
    async with client(process) as http:
        response = await http.post(path, json=RULE_ALARM)
    assert response.status_code == 401 and process.items == []


@pytest.mark.parametrize(
    ("error", "traceback"),
    [
        (RuntimeError("a bug in handling"), True),
        (OperationalError("INSERT", None, ConnectionRefusedError("refused")), False),
    ],
)
async def test_the_route_answers_503_when_the_commit_fails(
    error: Exception, traceback: bool, caplog: pytest.LogCaptureFixture
):
    async with client(Recorder(fail=error)) as http:
        response = await http.post(f"/v1/aodh/{project_token(SECRET, 'p1')}", json=RULE_ALARM)
    assert response.status_code == 503 and "could not commit" in response.json()["error"]
    (line,) = [r for r in caplog.records if "could not commit" in r.getMessage()]
    assert type(error).__name__ in line.getMessage()
    assert (line.exc_info is not None) is traceback  # none while the store is simply away


def test_the_route_is_in_the_openapi_document():
    app = FastAPI()
    aodh_routes(settings(), FakeNeutron(), Recorder())(app)
    operation = app.openapi()["paths"]["/v1/aodh/{token}"]["post"]
    assert {"200", "401", "400", "503"} <= set(operation["responses"])
    assert "requestBody" in operation
