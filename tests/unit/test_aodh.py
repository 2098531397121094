"""The Aodh webhook: tokens, Aodh's alarm body -> Neutron's notification, the endpoint."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from osel import aodh
from osel.aodh import (
    AlarmEvent,
    KeystoneTokenCheck,
    KeystoneUnavailable,
    ResourceGone,
    handle_webhook,
    notification_from_alarm,
    notification_from_event,
    parse_alarm,
    project_token,
    verify_token,
    webhook_url,
)
from osel.decide import Rules
from osel.decode import BadMessage, decode
from osel.model import FloatingIP, Port, Rule, SecurityGroup
from osel.neutron import NeutronUnavailable
from osel.store.store import Store
from tests import messages as m
from tests.fakes import FakeNeutron
from tests.unit.conftest import Harness

ROOT = Path(__file__).parents[2]
SECRET = "s3cret-for-tests"
PROJECT = "p1"
GENERATED = "2026-11-28T04:44:05.366061"


def traits(**values: Any) -> list[list[Any]]:
    """Traits as Aodh sends them: [name, type code, value]."""
    out = [
        ["service", 1, "network.ctl1"],
        ["request_id", 1, "req-1"],
        ["project_id", 1, PROJECT],
        ["user_id", 1, "u1"],
        ["tenant_id", 1, PROJECT],
        ["user_name", 1, "alice"],
        ["context_project_id", 1, PROJECT],
    ]
    for name, value in values.items():
        code = 2 if isinstance(value, int) else 1
        out.append([name, code, value])
    return out


def alarm(
    event_type: str,
    trait_list: list[list[Any]],
    *,
    message_id: str | None = None,
    raw: dict[str, Any] | None = None,
    kind: str = "event",
) -> dict[str, Any]:
    mid = message_id or str(uuid.uuid4())
    return {
        "alarm_name": "osel-security-group-rule",
        "alarm_id": "a1",
        "severity": "moderate",
        "previous": "alarm",
        "current": "alarm",
        "reason": f"Event <id={mid},event_type={event_type}> hits the query <query=[]>.",
        "reason_data": {
            "type": kind,
            "event": {
                "message_id": mid,
                "event_type": event_type,
                "generated": GENERATED,
                "traits": trait_list,
                "raw": raw or {},
                "message_signature": "sig",
            },
        },
    }


def rule_traits(rule: dict[str, Any]) -> list[list[Any]]:
    fields = {k: v for k, v in rule.items() if k in aodh._RULE_FIELDS and v is not None}
    return traits(resource_id=rule["id"], **fields)


def body(data: Any) -> bytes:
    return json.dumps(data).encode()


# --------------------------------------------------------------------------- tokens


def test_a_project_token_verifies_for_its_project_only():
    token = project_token(SECRET, PROJECT)
    assert token.startswith(f"{PROJECT}.")
    assert verify_token(token, SECRET) == PROJECT
    assert verify_token(token, "another secret") is None
    mac = token.split(".", 1)[1]
    assert verify_token(f"p2.{mac}", SECRET) is None
    assert verify_token(token[:-1] + ("0" if token[-1] != "0" else "1"), SECRET) is None


@pytest.mark.parametrize("token", ["", ".", "p1", "p1.", f".{'0' * 32}", SECRET])
def test_malformed_tokens_are_refused(token):
    assert verify_token(token, SECRET) is None


def test_webhook_url_names_the_projects_token():
    url = webhook_url("https://osel.example.com:9797/", SECRET, "p/1")
    prefix = "https://osel.example.com:9797/v1/aodh/p%2F1."
    assert url.startswith(prefix)
    assert verify_token(url.removeprefix(prefix.removesuffix("p%2F1.")).replace("%2F", "/"), SECRET)
    assert webhook_url("trust+https://h", None, "p1") == "trust+https://h/v1/aodh/p1"


# --------------------------------------------------------------------------- the alarm body


def test_parse_alarm_reads_the_event_and_its_project_like_aodh():
    data = alarm("port.update.end", traits(resource_id="port1", revision_number=3))
    data["reason_data"]["event"]["traits"].append(["tenant_id", 1, "p9"])
    event = parse_alarm(data)
    assert event.event_type == "port.update.end"
    assert event.generated == GENERATED
    assert event.traits["revision_number"] == 3
    assert event.project_id == "p9"  # Aodh takes the last project_id/tenant_id trait


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.update(reason_data=None), "not an Aodh alarm notification"),
        (lambda d: d["reason_data"].update(type="threshold"), "event alarms only"),
        (lambda d: d["reason_data"].update(event=[]), "reason_data.event"),
        (lambda d: d["reason_data"]["event"].pop("message_id"), "message_id"),
        (lambda d: d["reason_data"]["event"].update(event_type=""), "event_type"),
        (lambda d: d["reason_data"]["event"].update(traits={}), "traits is not a list"),
        (lambda d: d["reason_data"]["event"]["traits"].append(["x", 1]), "triple"),
        (lambda d: d["reason_data"]["event"]["traits"].append(["x", 2, "ten"]), "'x'"),
        (lambda d: d["reason_data"]["event"]["traits"].append(["x", 9, "v"]), "type code"),
        (lambda d: d["reason_data"]["event"].update(raw=[1]), "raw"),
    ],
)
def test_parse_alarm_refuses_what_is_not_an_event_alarm(mutate, reason):
    data = alarm("port.update.end", traits(resource_id="x"))
    mutate(data)
    with pytest.raises(BadMessage, match=reason):
        parse_alarm(data)


def test_parse_alarm_refuses_a_list():
    with pytest.raises(BadMessage, match="expected an object"):
        parse_alarm([])


# --------------------------------------------------------------------------- the notification


async def convert(data: dict[str, Any], neutron: FakeNeutron) -> dict[str, Any]:
    raw = await notification_from_alarm(data, neutron)
    n = decode(raw)  # the pipeline's decoder accepts it
    assert n.envelope == "1.0"
    result: dict[str, Any] = json.loads(raw)
    return result


async def test_a_rule_create_is_rebuilt_from_its_traits_without_neutron(neutron: FakeNeutron):
    rule = m.rule("sg1", remote="0.0.0.0/0")
    data = alarm("security_group_rule.create.end", rule_traits(rule), message_id="mid-1")
    message = await convert(data, neutron)
    assert neutron.calls == 0
    assert message["message_id"] == "mid-1"
    assert message["event_type"] == "security_group_rule.create.end"
    assert message["timestamp"] == GENERATED
    assert message["publisher_id"] == "network.ctl1"
    assert message["_context_project_id"] == PROJECT
    assert message["_context_user_id"] == "u1"
    assert message["_context_user_name"] == "alice"
    assert message["_context_request_id"] == "req-1"
    rebuilt = Rule.from_neutron(message["payload"]["security_group_rule"])
    assert rebuilt == Rule.from_neutron(rule)


async def test_null_rule_fields_come_back_as_null(neutron: FakeNeutron):
    rule = m.rule("sg1", proto=None, low=None, high=None, remote=None)
    message = await convert(alarm("security_group_rule.create.end", rule_traits(rule)), neutron)
    got = Rule.from_neutron(message["payload"]["security_group_rule"])
    assert (got.protocol, got.port_range_min, got.remote_ip_prefix) == (None, None, None)
    assert got == Rule.from_neutron(rule)


async def test_a_rule_create_without_rule_traits_is_read_from_neutron(neutron: FakeNeutron):
    rule = Rule.from_neutron(m.rule("sg1"))
    neutron.rules[rule.id] = rule
    message = await convert(
        alarm("security_group_rule.create.end", traits(resource_id=rule.id)), neutron
    )
    assert Rule.from_neutron(message["payload"]["security_group_rule"]) == rule
    with pytest.raises(ResourceGone):
        await notification_from_alarm(
            alarm("security_group_rule.create.end", traits(resource_id="gone")), neutron
        )


async def test_a_rule_delete_with_its_id_only_leaves_the_details_to_the_inventory(
    neutron: FakeNeutron,
):
    data = alarm("security_group_rule.delete.end", traits(resource_id="r1"))
    message = await convert(data, neutron)
    assert message["payload"] == {"security_group_rule_id": "r1"}
    assert neutron.calls == 0
    full = m.rule("sg1", rid="r2")
    message = await convert(alarm("security_group_rule.delete.end", rule_traits(full)), neutron)
    assert message["payload"]["security_group_rule_id"] == "r2"
    assert Rule.from_neutron(message["payload"]["security_group_rule"]) == Rule.from_neutron(full)


async def test_a_new_group_comes_with_its_rules_from_neutron(neutron: FakeNeutron):
    neutron.groups["sg1"] = SecurityGroup("sg1", PROJECT, "web", 1)
    egress = Rule("r-eg", "sg1", direction="egress", project_id=PROJECT)
    neutron.rules[egress.id] = egress
    data = alarm("security_group.create.end", traits(resource_id="sg1", name="web"))
    group = (await convert(data, neutron))["payload"]["security_group"]
    assert SecurityGroup.from_neutron(group) == neutron.groups["sg1"]
    assert [Rule.from_neutron(r) for r in group["security_group_rules"]] == [egress]
    del neutron.groups["sg1"]
    with pytest.raises(ResourceGone):
        await notification_from_alarm(data, neutron)


async def test_group_update_and_delete_need_no_neutron(neutron: FakeNeutron):
    update = alarm(
        "security_group.update.end", traits(resource_id="sg1", name="db", revision_number=4)
    )
    group = (await convert(update, neutron))["payload"]["security_group"]
    assert SecurityGroup.from_neutron(group) == SecurityGroup("sg1", PROJECT, "db", 4)
    assert "security_group_rules" not in group  # the inventory keeps the rules it has
    delete = alarm("security_group.delete.end", traits(resource_id="sg1"))
    assert (await convert(delete, neutron))["payload"] == {"security_group_id": "sg1"}
    assert neutron.calls == 0


async def test_ports_are_read_from_neutron(neutron: FakeNeutron):
    port = Port.from_neutron(m.port("port1", ["10.0.0.5"], ["sg1"], project_id=PROJECT))
    neutron.ports["port1"] = port
    data = alarm("port.update.end", traits(resource_id="port1", device_owner="compute:nova"))
    message = await convert(data, neutron)
    assert Port.from_neutron(message["payload"]["port"]) == port
    delete = alarm("port.delete.end", traits(resource_id="port1"))
    assert (await convert(delete, neutron))["payload"] == {"port_id": "port1"}
    del neutron.ports["port1"]
    with pytest.raises(ResourceGone):
        await notification_from_alarm(data, neutron)
    neutron.down = True
    with pytest.raises(NeutronUnavailable):
        await notification_from_alarm(data, neutron)


async def test_floating_ips_come_from_traits_and_a_missing_port_id_is_null(neutron: FakeNeutron):
    data = alarm(
        "floatingip.update.end",
        traits(resource_id="f1", floating_ip_address="203.0.113.9", revision_number=2),
    )
    fip = FloatingIP.from_neutron((await convert(data, neutron))["payload"]["floatingip"])
    assert fip == FloatingIP("f1", "203.0.113.9", None, None, PROJECT, 2)
    assert neutron.calls == 0
    attached = alarm(
        "floatingip.create.end",
        traits(
            resource_id="f1",
            floating_ip_address="203.0.113.9",
            port_id="port1",
            fixed_ip_address="10.0.0.5",
        ),
    )
    fip = FloatingIP.from_neutron((await convert(attached, neutron))["payload"]["floatingip"])
    assert (fip.port_id, fip.fixed_ip_address) == ("port1", "10.0.0.5")


async def test_floating_ips_without_osel_traits_are_read_from_neutron(neutron: FakeNeutron):
    neutron.fips["f1"] = FloatingIP("f1", "203.0.113.9", "port1", "10.0.0.5", PROJECT, 7)
    data = alarm("floatingip.update.end", traits(resource_id="f1"))
    fip = FloatingIP.from_neutron((await convert(data, neutron))["payload"]["floatingip"])
    assert fip == neutron.fips["f1"]
    delete = alarm("floatingip.delete.end", traits(resource_id="f1"))
    assert (await convert(delete, neutron))["payload"] == {"floatingip_id": "f1"}


async def test_events_osel_does_not_handle_become_empty_notifications(neutron: FakeNeutron):
    message = await convert(alarm("security_group_rule.create.start", traits()), neutron)
    assert message["payload"] == {}
    assert neutron.calls == 0


async def test_a_handled_event_without_resource_id_cannot_be_used(neutron: FakeNeutron):
    with pytest.raises(BadMessage, match="resource_id"):
        await notification_from_alarm(alarm("port.update.end", traits()), neutron)


async def test_a_raw_notification_is_used_as_is_without_the_callers_token(neutron: FakeNeutron):
    payload = {"security_group_rule": m.rule("sg1", rid="r1")}
    raw = {
        "event_type": "security_group_rule.create.end",
        "publisher_id": "network.ctl1",
        "payload": payload,
        "metadata": {"message_id": "mid-raw", "timestamp": "2026-11-28 04:44:05.366061"},
        "ctxt": {"project_id": "p2", "user_id": "u2", "auth_token": "TOKEN-MARKER"},
    }
    data = alarm("security_group_rule.create.end", traits(), message_id="mid-raw", raw=raw)
    message = await convert(data, neutron)
    assert message["payload"] == payload
    assert message["timestamp"] == "2026-11-28 04:44:05.366061"
    assert (message["_context_project_id"], message["_context_user_id"]) == ("p2", "u2")
    assert "TOKEN-MARKER" not in json.dumps(message)


# --------------------------------------------------------------------------- same records


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    keep = (
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
        "internet_exposed",
        "opened",
        "closed",
        "scan_state",
        "qualys_scan_error",
    )
    return {k: record[k] for k in keep}


async def test_the_aodh_path_gives_the_records_of_the_amqp_path(tmp_path: Path):
    """The same changes, one harness fed by AMQP bodies, the other by Aodh alarms."""
    harnesses = []
    for name in ("amqp", "aodh"):
        store = Store(f"sqlite:///{tmp_path}/{name}.db")
        await store.migrate()
        neutron = FakeNeutron()
        neutron.groups["sg1"] = SecurityGroup("sg1", PROJECT, "web")
        neutron.ports["port1"] = Port.from_neutron(
            m.port("port1", ["10.0.0.5"], ["sg1"], project_id=PROJECT)
        )
        harnesses.append(Harness(store, neutron, Rules()))
    amqp_path, aodh_path = harnesses
    rule = m.rule("sg1", rid="r1")
    fip = {
        "id": "f1",
        "floating_ip_address": "203.0.113.9",
        "port_id": "port1",
        "fixed_ip_address": "10.0.0.5",
        "project_id": PROJECT,
        "revision_number": 1,
    }
    events: list[tuple[str, dict[str, Any], list[list[Any]]]] = [
        ("security_group_rule.create.end", {"security_group_rule": rule}, rule_traits(rule)),
        (
            "floatingip.create.end",
            {"floatingip": fip},
            traits(
                resource_id="f1",
                floating_ip_address="203.0.113.9",
                port_id="port1",
                fixed_ip_address="10.0.0.5",
                revision_number=1,
            ),
        ),
        (
            "security_group_rule.delete.end",
            {"security_group_rule_id": "r1"},
            traits(resource_id="r1"),
        ),
    ]
    for event_type, payload, trait_list in events:
        msg = m.notification(event_type, payload, project=PROJECT)
        msg["_context_user_id"], msg["_context_request_id"] = "u1", "req-1"
        msg["timestamp"] = GENERATED.replace("T", " ")
        await amqp_path.feed(m.envelope(msg))
        data = alarm(event_type, trait_list, message_id=msg["message_id"])
        await aodh_path.feed(await notification_from_alarm(data, aodh_path.neutron), source="aodh")
    try:
        a, b = [
            sorted((comparable(r) for r in await h.records()), key=json.dumps) for h in harnesses
        ]
    finally:
        for h in harnesses:
            await h.store.close()
    assert len(a) == 4  # rule add (fixed IP), fip associate, rule del (fixed IP and the fip)
    assert a == b


# --------------------------------------------------------------------------- the endpoint


async def post(
    data: Any,
    neutron: FakeNeutron,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    secret: str | None = SECRET,
    check: Any = None,
    raw_body: bytes | None = None,
    max_bytes: int = aodh.MAX_BODY_BYTES,
) -> aodh.WebhookResult:
    return await handle_webhook(
        token if token is not None else project_token(SECRET, PROJECT),
        headers or {},
        raw_body if raw_body is not None else body(data),
        secret=secret,
        keystone_check=check,
        neutron=neutron,
        max_bytes=max_bytes,
    )


RULE_ALARM = alarm("security_group_rule.create.end", rule_traits(m.rule("sg1", rid="r1")))


async def test_the_right_token_gives_the_notification_to_commit(neutron: FakeNeutron):
    result = await post(RULE_ALARM, neutron)
    assert result.status == 200
    assert result.answer["event_type"] == "security_group_rule.create.end"
    assert result.body is not None and decode(result.body).payload["security_group_rule"]


@pytest.mark.parametrize(
    "token", ["", "wrong", project_token("other secret", PROJECT), f"{PROJECT}.{'0' * 32}"]
)
async def test_without_the_right_token_401_and_nothing_to_commit(neutron: FakeNeutron, token):
    result = await post(RULE_ALARM, neutron, token=token)
    assert (result.status, result.body) == (401, None)
    assert result.answer == {"error": "unauthorized"}
    assert neutron.calls == 0


async def test_a_token_is_refused_before_the_body_is_read(neutron: FakeNeutron):
    result = await post(None, neutron, token="wrong", raw_body=b"not json")
    assert result.status == 401


async def test_another_projects_event_is_refused(neutron: FakeNeutron):
    result = await post(RULE_ALARM, neutron, token=project_token(SECRET, "p2"))
    assert (result.status, result.body) == (403, None)


def foreign_neutron() -> FakeNeutron:
    """Project p2's group, rule, port and floating IP."""
    neutron = FakeNeutron()
    neutron.groups["sg-b"] = SecurityGroup("sg-b", "p2")
    neutron.rules["r-b"] = Rule("r-b", "sg-b", project_id="p2")
    neutron.ports["port-b"] = Port("port-b", ("10.0.0.9",), ("sg-b",), project_id="p2")
    neutron.fips["f-b"] = FloatingIP("f-b", "203.0.113.5", project_id="p2")
    return neutron


@pytest.mark.parametrize(
    ("event_type", "trait_list"),
    [
        ("security_group_rule.create.end", rule_traits(m.rule("sg-b", rid="r-new"))),
        ("security_group_rule.delete.end", traits(resource_id="r-b")),
        ("security_group.update.end", traits(resource_id="sg-b", name="x")),
        ("port.update.end", traits(resource_id="port-b")),
        ("floatingip.update.end", traits(resource_id="f-b", floating_ip_address="203.0.113.5")),
    ],
)
async def test_a_projects_token_cannot_speak_for_another_projects_resources(event_type, trait_list):
    """The event claims project p1 (the token's), its resource is p2's in Neutron."""
    neutron = foreign_neutron()
    result = await post(alarm(event_type, trait_list), neutron)
    assert (result.status, result.body) == (403, None)
    own = await post(alarm(event_type, trait_list), neutron, token=project_token(SECRET, "p2"))
    assert own.status == 403  # the event itself says p1


async def test_a_resource_of_the_tokens_project_is_accepted(neutron: FakeNeutron):
    neutron.groups["sg1"] = SecurityGroup("sg1", PROJECT)
    assert (await post(RULE_ALARM, neutron)).status == 200
    neutron.groups["sg1"] = SecurityGroup("sg1", "p2")
    assert (await post(RULE_ALARM, neutron)).status == 403


async def test_with_a_path_token_the_raw_notification_is_not_trusted(neutron: FakeNeutron):
    neutron.groups["sg1"] = SecurityGroup("sg1", PROJECT)
    forged = {"security_group_rule": m.rule("sg-other", rid="r1")}
    raw = {"event_type": "security_group_rule.create.end", "payload": forged}
    data = alarm("security_group_rule.create.end", rule_traits(m.rule("sg1", rid="r1")), raw=raw)
    result = await post(data, neutron)
    assert result.body is not None
    assert decode(result.body).payload["security_group_rule"]["security_group_id"] == "sg1"


async def test_keystone_authenticated_posts_need_no_ownership_lookup(neutron: FakeNeutron):
    result = await post(
        RULE_ALARM, neutron, secret=None, check=Check(True), headers={"X-Auth-Token": "t"}
    )
    assert result.status == 200 and neutron.calls == 0


@pytest.mark.parametrize(
    ("raw_body", "status"),
    [
        (b"not json", 400),
        (b"\xff\xfe", 400),
        (body(alarm("x", [], kind="threshold")), 400),
        (body([1, 2]), 400),
    ],
)
async def test_bodies_that_are_not_event_alarms_get_400(neutron: FakeNeutron, raw_body, status):
    result = await post(None, neutron, raw_body=raw_body)
    assert result.status == status and result.body is None
    assert result.answer["error"]


async def test_an_oversized_body_gets_413(neutron: FakeNeutron):
    result = await post(RULE_ALARM, neutron, max_bytes=100)
    assert (result.status, result.body) == (413, None)


async def test_an_unusable_event_gets_422(neutron: FakeNeutron):
    result = await post(alarm("port.update.end", traits()), neutron)
    assert result.status == 422 and "resource_id" in result.answer["error"]


async def test_a_vanished_resource_is_answered_without_a_notification(neutron: FakeNeutron):
    result = await post(alarm("port.update.end", traits(resource_id="gone")), neutron)
    assert (result.status, result.body, result.answer["outcome"]) == (200, None, "gone")


async def test_neutron_down_when_needed_gives_503(neutron: FakeNeutron):
    neutron.down = True
    result = await post(alarm("port.update.end", traits(resource_id="port1")), neutron)
    assert (result.status, result.body) == (503, None)


async def test_no_secret_and_no_keystone_means_the_webhook_is_off(neutron: FakeNeutron):
    result = await post(RULE_ALARM, neutron, secret=None)
    assert result.status == 404 and "http.aodh_token_file" in result.answer["error"]


class Check:
    def __init__(self, answer: bool | Exception) -> None:
        self.answer = answer
        self.seen: list[str] = []

    async def __call__(self, token: str) -> bool:
        self.seen.append(token)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def test_keystone_validation_of_trust_actions(neutron: FakeNeutron):
    ok = Check(True)
    result = await post(RULE_ALARM, neutron, check=ok, headers={"x-auth-token": "gAAAA-tok"})
    assert result.status == 200 and ok.seen == ["gAAAA-tok"]
    assert (await post(RULE_ALARM, neutron, check=ok)).status == 401  # no header
    bad = Check(False)
    assert (await post(RULE_ALARM, neutron, check=bad, headers={"X-Auth-Token": "t"})).status == 401
    down = Check(KeystoneUnavailable("no route"))
    assert (
        await post(RULE_ALARM, neutron, check=down, headers={"X-Auth-Token": "t"})
    ).status == 503


async def test_keystone_alone_needs_no_path_token(neutron: FakeNeutron):
    result = await post(
        RULE_ALARM,
        neutron,
        secret=None,
        token="p1",
        check=Check(True),
        headers={"X-Auth-Token": "t"},
    )
    assert result.status == 200 and result.body is not None


async def test_a_wrong_path_token_is_refused_even_with_a_valid_keystone_token(
    neutron: FakeNeutron,
):
    check = Check(True)
    result = await post(RULE_ALARM, neutron, token="x", check=check, headers={"X-Auth-Token": "t"})
    assert result.status == 401 and check.seen == []


# --------------------------------------------------------------------------- Keystone


def keystone(handler: Any) -> KeystoneTokenCheck:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return KeystoneTokenCheck("http://ks:5000/v3/", ["admin", "uid-9"], client=client)


def token_doc(name: str, uid: str) -> dict[str, Any]:
    return {"token": {"user": {"name": name, "id": uid}, "OS-TRUST:trust": {"id": "t"}}}


async def test_keystone_check_asks_keystone_with_the_token_as_its_own_subject():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=token_doc("admin", "uid-1"))

    check = keystone(handler)
    assert await check("tok-1") is True
    (request,) = seen
    assert str(request.url) == "http://ks:5000/v3/auth/tokens"
    assert request.headers["X-Auth-Token"] == request.headers["X-Subject-Token"] == "tok-1"
    await check.close()


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (httpx.Response(200, json=token_doc("mallory", "uid-2")), False),
        (httpx.Response(200, json=token_doc("someone", "uid-9")), True),
        (httpx.Response(404, json={}), False),
        (httpx.Response(401, json={}), False),
    ],
)
async def test_keystone_check_accepts_valid_tokens_of_the_configured_users(response, expected):
    check = keystone(lambda _request: response)
    assert await check("t") is expected


@pytest.mark.parametrize(
    "handler",
    [
        lambda _r: httpx.Response(500, text="boom"),
        lambda _r: httpx.Response(200, text="not json"),
        lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused", request=r)),
    ],
)
async def test_keystone_trouble_is_unavailable_not_invalid(handler):
    with pytest.raises(KeystoneUnavailable):
        await keystone(handler)("t")


def test_keystone_check_finds_the_v3_tokens_url():
    assert KeystoneTokenCheck("https://ks:5000", []).url == "https://ks:5000/v3/auth/tokens"


# --------------------------------------------------------------------------- shipped files


def test_the_shipped_event_definitions_give_every_trait_osel_reads():
    definitions = yaml.safe_load((ROOT / "deploy/aodh/event_definitions.yaml").read_text())
    last: dict[str, dict[str, Any]] = {}
    for definition in definitions:
        types = definition["event_type"]
        for pattern in [types] if isinstance(types, str) else types:
            last[pattern] = definition["traits"]
    context = {"user_id", "user_name", "project_name", "context_project_id", "request_id"}
    needs = {
        "security_group.*": {"resource_id", "project_id", "tenant_id", "name", "revision_number"},
        "security_group_rule.*": {"resource_id", "project_id", "tenant_id", *aodh._RULE_FIELDS},
        "port.*": {"resource_id", "project_id", "tenant_id", "name"},
        "floatingip.*": {"resource_id", "project_id", "tenant_id", *aodh._FIP_FIELDS},
    }
    for pattern, names in needs.items():
        assert names | context <= set(last[pattern]), pattern
    for pattern in needs:
        assert last[pattern]["project_id"] == last[pattern]["tenant_id"]
        assert last[pattern]["project_id"]["fields"][-1] == "ctxt.project_id"
    rule = last["security_group_rule.*"]
    assert rule["port_range_min"]["type"] == rule["port_range_max"]["type"] == "int"


def test_the_shipped_pipeline_sends_osels_events_to_aodh():
    pipeline = yaml.safe_load((ROOT / "deploy/aodh/event_pipeline.yaml").read_text())
    (source,) = pipeline["sources"]
    assert sorted(source["events"]) == sorted(aodh.EVENT_PATTERNS.values())
    (sink,) = pipeline["sinks"]
    assert source["sinks"] == [sink["name"]]
    assert sink["publishers"] == ["notifier://?topic=alarm.all"]


def test_event_patterns_match_exactly_the_handled_events():
    from fnmatch import fnmatch

    from osel.handlers import HANDLERS

    for event_type in HANDLERS:
        assert sum(fnmatch(event_type, p) for p in aodh.EVENT_PATTERNS.values()) == 1
    for other in ("security_group_rule.create.start", "network.create.end", "port.delete.start"):
        assert not any(fnmatch(other, p) for p in aodh.EVENT_PATTERNS.values())


def test_alarm_event_text_skips_empty_traits():
    event = AlarmEvent("a", "n", "m", "t", "", {"a": "", "b": 0})
    assert event.text("a", "b") == "0" and event.text("c") is None


async def test_notification_from_event_keeps_the_message_id(neutron: FakeNeutron):
    event = parse_alarm(alarm("port.delete.end", traits(resource_id="x"), message_id="m-7"))
    assert (await notification_from_event(event, neutron))["message_id"] == "m-7"
