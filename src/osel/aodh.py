"""Aodh's event-alarm notifications -> the notifications osel's pipeline reads.

A modern cloud can feed osel without giving it the bus: Ceilometer turns
Neutron's notifications into events (with the traits of
`deploy/aodh/event_definitions.yaml`), aodh-listener matches them against one
set of event alarms per project, and aodh-notifier POSTs each match to
`/v1/aodh/<token>`. This module is the logic of that endpoint:

- `handle_webhook` checks the caller (the per-project token in the path,
  compared in constant time; a Keystone token for `trust+http(s)` actions when
  `http.keystone_validate` is on) and answers with the HTTP status, a small
  JSON answer and the notification body the server commits through the
  pipeline before it answers 2xx;
- `notification_from_alarm` rebuilds the bare (pre-envelope) oslo message
  Neutron sent: its `message_id` (Ceilometer keeps it, so a change that arrives
  by both paths is processed once), `event_type`, timestamp, context, and the
  payload, from the event's `raw` notification when Ceilometer stores it, else
  from the traits; what traits cannot carry (a port's addresses and groups, a
  new group's rules) is read from Neutron.

The path token is per project: `<project_id>.<HMAC-SHA256(http.aodh_token,
project_id)>`. Aodh shows an alarm's actions to the members of its project and
logs them, so a global secret in the URL would let any tenant forge events
about every other project; a project's token only speaks for that project:
events of another project, or about a resource Neutron says is another
project's, are refused, and the event's `raw` notification is not trusted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from osel.decode import BadMessage
from osel.handlers import HANDLERS
from osel.model import FloatingIP, Port, SecurityGroup
from osel.neutron import NeutronAPI, NeutronUnavailable

log = logging.getLogger(__name__)

#: The event types osel needs, as patterns for Ceilometer's event pipeline and
#: for Aodh's event rules (both match with fnmatch). Only `.end` events carry
#: the resource.
EVENT_PATTERNS: dict[str, str] = {
    "security-group": "security_group.*.end",
    "security-group-rule": "security_group_rule.*.end",
    "port": "port.*.end",
    "floatingip": "floatingip.*.end",
}

#: Aodh's trait type codes (ceilometer `event/models.py`).
TEXT, INTEGER, FLOAT, DATETIME = 1, 2, 3, 4

TOKEN_SEPARATOR = "."
_MAC_CONTEXT = b"osel-aodh-webhook:"
_MAC_HEX_CHARS = 32  # 128 bits
MAX_BODY_BYTES = 1 << 20

#: Context keys osel reads, from a raw notification's `ctxt` (anything else,
#: the caller's auth token first of all, is dropped).
_CONTEXT_KEYS = (
    "project_id",
    "user_id",
    "user_name",
    "project_name",
    "request_id",
    "global_request_id",
)
#: Trait -> the `_context_*` key of the rebuilt message (first trait found wins).
_TRAIT_CONTEXT: dict[str, tuple[str, ...]] = {
    "project_id": ("context_project_id", "project_id", "tenant_id"),
    "user_id": ("user_id",),
    "user_name": ("user_name",),
    "project_name": ("project_name",),
    "request_id": ("request_id",),
    "global_request_id": ("global_request_id",),
}
_RULE_FIELDS = (
    "security_group_id",
    "direction",
    "ethertype",
    "protocol",
    "port_range_min",
    "port_range_max",
    "remote_ip_prefix",
    "remote_group_id",
    "remote_address_group_id",
)
_FIP_FIELDS = ("floating_ip_address", "port_id", "fixed_ip_address", "revision_number")


# --------------------------------------------------------------------------- tokens


def project_token(secret: str, project_id: str) -> str:
    """The path token of one project's alarms: `<project_id>.<mac>`."""
    return f"{project_id}{TOKEN_SEPARATOR}{_mac(secret, project_id)}"


def webhook_url(public_url: str, secret: str | None, project_id: str) -> str:
    """Where the alarms of `project_id` post: `<public_url>/v1/aodh/<token>`.

    Without a secret (Keystone validation only) the path names the project only.
    """
    token = project_token(secret, project_id) if secret else project_id
    return f"{public_url.rstrip('/')}/v1/aodh/{quote(token, safe='')}"


def _mac(secret: str, project_id: str) -> str:
    digest = hmac.new(secret.encode(), _MAC_CONTEXT + project_id.encode(), hashlib.sha256)
    return digest.hexdigest()[:_MAC_HEX_CHARS]


def verify_token(token: str, secret: str) -> str | None:
    """The project a path token speaks for, or None when it is not one of ours."""
    project_id, sep, mac = token.rpartition(TOKEN_SEPARATOR)
    expected = _mac(secret, project_id) if sep and project_id else ""
    # compared even when malformed, so the time taken says nothing about the token
    ok = hmac.compare_digest(mac.encode(), expected.encode()) and bool(expected)
    return project_id if ok else None


# --------------------------------------------------------------------------- the alarm


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """The event inside one Aodh event-alarm notification."""

    alarm_id: str
    alarm_name: str
    message_id: str
    event_type: str
    generated: str
    traits: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    project_id: str | None = None  # as Aodh saw it: the last project_id/tenant_id trait

    def text(self, *names: str) -> str | None:
        """The first of these traits that is set, as a string."""
        for name in names:
            value = self.traits.get(name)
            if value is not None and value != "":
                return str(value)
        return None


def _str(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise BadMessage(f"{where}.{key} is missing or not a non-empty string")
    return value


def _trait_value(name: str, dtype: Any, value: Any) -> Any:
    if value is None:
        return None
    try:
        if dtype == INTEGER:
            return int(value)
        if dtype == FLOAT:
            return float(value)
    except (TypeError, ValueError) as exc:
        raise BadMessage(f"trait {name!r} of type {dtype} has the value {value!r}") from exc
    if dtype in (TEXT, DATETIME, None):
        return value if isinstance(value, str) else str(value)
    raise BadMessage(f"trait {name!r} has the unknown type code {dtype!r}")


def _traits(raw: Any) -> tuple[dict[str, Any], str | None]:
    if raw is None:
        return {}, None
    if not isinstance(raw, list):
        raise BadMessage("reason_data.event.traits is not a list")
    traits: dict[str, Any] = {}
    project: str | None = None
    for item in raw:
        if not isinstance(item, list | tuple) or len(item) != 3 or not isinstance(item[0], str):
            raise BadMessage("a trait is not a [name, type, value] triple")
        name, dtype, value = item
        traits[name] = _trait_value(name, dtype, value)
        if name in ("project_id", "tenant_id") and traits[name] is not None:
            project = str(traits[name])
    return traits, project


def parse_alarm(body: Any) -> AlarmEvent:
    """Check that `body` is Aodh's notification of an event alarm; return its event."""
    if not isinstance(body, dict):
        raise BadMessage(f"body is a JSON {type(body).__name__}, expected an object")
    reason_data = body.get("reason_data")
    if not isinstance(reason_data, dict):
        raise BadMessage("reason_data is missing or not an object: not an Aodh alarm notification")
    kind = reason_data.get("type")
    if kind != "event":
        raise BadMessage(
            f"reason_data.type is {kind!r}: osel takes event alarms only "
            "(alarm type event, deploy/aodh/alarm.json)"
        )
    event = reason_data.get("event")
    if not isinstance(event, dict):
        raise BadMessage("reason_data.event is missing or not an object")
    where = "reason_data.event"
    raw = event.get("raw") or {}
    if not isinstance(raw, dict):
        raise BadMessage(f"{where}.raw is not an object")
    traits, project = _traits(event.get("traits"))
    generated = event.get("generated")
    return AlarmEvent(
        alarm_id=str(body.get("alarm_id") or ""),
        alarm_name=str(body.get("alarm_name") or ""),
        message_id=_str(event, "message_id", where),
        event_type=_str(event, "event_type", where),
        generated=generated if isinstance(generated, str) else "",
        traits=traits,
        raw=raw,
        project_id=project,
    )


# --------------------------------------------------------------------------- the notification


class ResourceGone(Exception):
    """The event's resource no longer exists in Neutron and its traits cannot describe it."""


def _message(event: AlarmEvent, payload: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "message_id": event.message_id,
        "event_type": event.event_type,
        "publisher_id": event.text("service") or "",
        "priority": "INFO",
        "payload": payload,
        "timestamp": event.generated,
    }
    for key, traits in _TRAIT_CONTEXT.items():
        value = event.text(*traits)
        if value is not None:
            message[f"_context_{key}"] = value
    return message


def _obj(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _from_raw(event: AlarmEvent) -> dict[str, Any] | None:
    """The message from the event's raw notification (`[event] store_raw = info`)."""
    raw = event.raw
    payload = raw.get("payload")
    if not isinstance(payload, dict) or raw.get("event_type") != event.event_type:
        return None
    metadata = _obj(raw, "metadata")
    ctxt = _obj(raw, "ctxt")
    message: dict[str, Any] = {
        "message_id": str(metadata.get("message_id") or event.message_id),
        "event_type": event.event_type,
        "publisher_id": str(raw.get("publisher_id") or ""),
        "priority": "INFO",
        "payload": payload,
        "timestamp": str(metadata.get("timestamp") or event.generated),
    }
    for key in _CONTEXT_KEYS:
        value = ctxt.get(key)
        if value is None and key == "project_id":
            value = ctxt.get("tenant_id") or ctxt.get("tenant")
        if value not in (None, ""):
            message[f"_context_{key}"] = str(value)
    return message


def _resource_id(event: AlarmEvent) -> str:
    rid = event.text("resource_id")
    if rid is None:
        raise BadMessage(
            f"{event.event_type}: the event has no resource_id trait; give Ceilometer "
            "osel's event definitions (deploy/aodh/event_definitions.yaml)"
        )
    return rid


def _rule_from_traits(event: AlarmEvent, rule_id: str) -> dict[str, Any] | None:
    """The rule as Neutron sent it, when the traits describe it (osel's definitions)."""
    if event.text("security_group_id") is None or event.text("direction") is None:
        return None
    data = {name: event.traits.get(name) for name in _RULE_FIELDS}
    data.update(id=rule_id, project_id=event.text("project_id", "tenant_id"))
    return data


def _fip_from_traits(event: AlarmEvent, fip_id: str) -> dict[str, Any] | None:
    if event.text("floating_ip_address") is None:
        return None  # without it the traits are not osel's: a missing port_id would mean nothing
    data = {name: event.traits.get(name) for name in _FIP_FIELDS}
    data.update(id=fip_id, project_id=event.text("project_id", "tenant_id"))
    return data


async def _rule_payload(event: AlarmEvent, neutron: NeutronAPI) -> dict[str, Any]:
    rule_id = _resource_id(event)
    data = _rule_from_traits(event, rule_id)
    if event.event_type.startswith("security_group_rule.delete"):
        # the rule is gone from Neutron: without traits, the pipeline takes it from its inventory
        return {
            "security_group_rule_id": rule_id,
            **({"security_group_rule": data} if data else {}),
        }
    if data is None:
        rule = await neutron.get_rule(rule_id)
        if rule is None:
            raise ResourceGone(f"security group rule {rule_id}")
        data = rule.to_neutron()
    return {"security_group_rule": data}


async def _group_payload(event: AlarmEvent, neutron: NeutronAPI) -> dict[str, Any]:
    sg_id = _resource_id(event)
    if event.event_type.startswith("security_group.delete"):
        return {"security_group_id": sg_id}
    if event.event_type.startswith("security_group.create"):
        # a new group comes with its (default) rules, which no trait can carry
        group = await neutron.get_security_group(sg_id)
        if group is None:
            raise ResourceGone(f"security group {sg_id}")
        return {"security_group": group.to_neutron(await neutron.rules_of_group(sg_id))}
    group = SecurityGroup(
        id=sg_id,
        project_id=event.text("project_id", "tenant_id"),
        name=event.text("name") or "",
        revision_number=event.traits.get("revision_number"),
    )
    return {"security_group": group.to_neutron()}


async def _port_payload(event: AlarmEvent, neutron: NeutronAPI) -> dict[str, Any]:
    port_id = _resource_id(event)
    if event.event_type.startswith("port.delete"):
        return {"port_id": port_id}
    port: Port | None = await neutron.get_port(port_id)
    if port is None:
        raise ResourceGone(f"port {port_id}")
    return {"port": port.to_neutron()}


async def _fip_payload(event: AlarmEvent, neutron: NeutronAPI) -> dict[str, Any]:
    fip_id = _resource_id(event)
    data = _fip_from_traits(event, fip_id)
    if event.event_type.startswith("floatingip.delete"):
        return {"floatingip_id": fip_id, **({"floatingip": data} if data else {})}
    if data is None:
        fip: FloatingIP | None = await neutron.get_floating_ip(fip_id)
        if fip is None:
            raise ResourceGone(f"floating IP {fip_id}")
        data = fip.to_neutron()
    return {"floatingip": data}


PayloadBuilder = Callable[[AlarmEvent, NeutronAPI], Awaitable[dict[str, Any]]]

_BUILDERS: dict[str, PayloadBuilder] = {
    "security_group_rule": _rule_payload,
    "security_group": _group_payload,
    "port": _port_payload,
    "floatingip": _fip_payload,
}


async def notification_from_event(
    event: AlarmEvent, neutron: NeutronAPI, *, use_raw: bool = True
) -> dict[str, Any]:
    """The bare oslo message Neutron sent for this event.

    Raises `BadMessage` when the event cannot be understood, `ResourceGone` when
    it needs Neutron for a resource that no longer exists, `NeutronUnavailable`
    when it needs Neutron and Neutron does not answer. With `use_raw` false the
    raw notification is ignored and only the traits (checked by the caller) count.
    """
    from_raw = _from_raw(event) if use_raw else None
    if from_raw is not None:
        return from_raw
    if event.event_type not in HANDLERS:
        return _message(event, {})  # counted and ignored by the pipeline, like on the bus
    builder = _BUILDERS[event.event_type.split(".", 1)[0]]
    return _message(event, await builder(event, neutron))


async def notification_from_alarm(body: dict[str, Any], neutron: NeutronAPI) -> bytes:
    """Aodh's alarm notification (decoded JSON) -> the body of a bare oslo notification."""
    message = await notification_from_event(parse_alarm(body), neutron)
    return json.dumps(message, sort_keys=True).encode()


async def owner_project(event: AlarmEvent, neutron: NeutronAPI) -> str | None:
    """The project that owns the event's resource now, per Neutron (None: gone or unknown).

    For a rule, the project of its group: a rule acts on the group's ports.
    """
    kind = event.event_type.split(".", 1)[0]
    rid = _resource_id(event)
    owner: str | None = None
    if kind == "security_group_rule":
        sg_id = event.text("security_group_id")
        if sg_id is None:
            rule = await neutron.get_rule(rid)
            sg_id = rule.security_group_id if rule is not None else None
        group = await neutron.get_security_group(sg_id) if sg_id else None
        owner = group.project_id if group is not None else None
    elif kind == "security_group":
        found = await neutron.get_security_group(rid)
        owner = found.project_id if found is not None else None
    elif kind == "port":
        port = await neutron.get_port(rid)
        owner = port.project_id if port is not None else None
    elif kind == "floatingip":
        fip = await neutron.get_floating_ip(rid)
        owner = fip.project_id if fip is not None else None
    return owner or None


# --------------------------------------------------------------------------- the endpoint


class KeystoneUnavailable(Exception):
    """Keystone could not say whether a token is valid."""


KeystoneCheck = Callable[[str], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class WebhookResult:
    """What the endpoint answers, and the notification to commit before a 2xx."""

    status: int
    answer: dict[str, Any]
    body: bytes | None = None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def _refused(status: int, error: str, **extra: Any) -> WebhookResult:
    return WebhookResult(status, {"error": error, **extra})


async def _authorize(
    token_in_path: str,
    headers: Mapping[str, str],
    secret: str | None,
    keystone_check: KeystoneCheck | None,
) -> tuple[str | None, WebhookResult | None]:
    """(the project the path token speaks for, or a refusal)."""
    project: str | None = None
    if secret is not None:
        project = verify_token(token_in_path, secret)
        if project is None:
            log.warning("Aodh webhook: refused a POST with a wrong token")
            return None, _refused(401, "unauthorized")
    if keystone_check is not None:
        auth_token = _header(headers, "X-Auth-Token")
        if not auth_token:
            log.warning("Aodh webhook: refused a POST without X-Auth-Token")
            return None, _refused(401, "unauthorized")
        try:
            valid = await keystone_check(auth_token)
        except KeystoneUnavailable as exc:
            log.warning("Aodh webhook: cannot validate the Keystone token: %s", exc)
            return None, _refused(503, "Keystone cannot validate the token now")
        if not valid:
            log.warning("Aodh webhook: refused a POST whose Keystone token is not accepted")
            return None, _refused(401, "unauthorized")
    return project, None


def _parse(body: bytes, max_bytes: int) -> AlarmEvent | WebhookResult:
    if len(body) > max_bytes:
        return _refused(413, f"body is {len(body)} bytes, over {max_bytes}")
    try:
        return parse_alarm(json.loads(body))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        reason = exc.reason if isinstance(exc, BadMessage) else "body is not JSON"
        log.warning("Aodh webhook: refused a body: %s", reason)
        return _refused(400, reason)


async def _foreign(event: AlarmEvent, project: str, neutron: NeutronAPI) -> str | None:
    """Why an event does not speak for the token's project, or None when it does."""
    if event.project_id != project:
        return f"the event's project is {event.project_id}"
    if event.event_type not in HANDLERS:
        return None
    owner = await owner_project(event, neutron)
    if owner is not None and owner != project:
        return f"its resource belongs to project {owner}"
    return None


async def _convert(event: AlarmEvent, project: str | None, neutron: NeutronAPI) -> WebhookResult:
    seen = {"message_id": event.message_id, "event_type": event.event_type}
    try:
        if project is not None:
            why = await _foreign(event, project, neutron)
            if why is not None:
                log.warning("Aodh webhook: the token of project %s refused: %s", project, why)
                return _refused(403, "the event is not about the token's project", **seen)
        # a path token is known to the project's members: only traits checked above count
        message = await notification_from_event(event, neutron, use_raw=project is None)
    except BadMessage as exc:
        log.warning("Aodh webhook: cannot use event %s: %s", event.message_id, exc.reason)
        return _refused(422, exc.reason, **seen)
    except ResourceGone as exc:
        log.info("Aodh webhook: %s for %s is gone from Neutron: nothing to record", exc, seen)
        return WebhookResult(200, {**seen, "outcome": "gone"})
    except NeutronUnavailable as exc:
        log.warning("Aodh webhook: Neutron is needed for %s and unavailable: %s", seen, exc)
        return _refused(503, "Neutron is unavailable; the periodic re-sync will catch up", **seen)
    return WebhookResult(200, seen, json.dumps(message, sort_keys=True).encode())


async def handle_webhook(
    token_in_path: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secret: str | None,
    keystone_check: KeystoneCheck | None,
    neutron: NeutronAPI,
    max_bytes: int = MAX_BODY_BYTES,
) -> WebhookResult:
    """One POST to `/v1/aodh/<token_in_path>`.

    `secret` is `http.aodh_token` (None: no path token is checked);
    `keystone_check` validates `X-Auth-Token` (None: `http.keystone_validate`
    is off). Nothing is returned for the pipeline unless the caller is
    authorized and the body is an event alarm osel understands; a 2xx must be
    sent only after `result.body` (when not None) is committed.

    A path token speaks for one project: the event must be that project's and
    so must its resource, as Neutron knows it (a resource gone from Neutron
    cannot be checked and is taken as it comes).
    """
    if secret is None and keystone_check is None:
        return _refused(
            404, "the Aodh webhook is off: set http.aodh_token_file or http.keystone_validate"
        )
    project, refusal = await _authorize(token_in_path, headers, secret, keystone_check)
    if refusal is not None:
        return refusal
    event = _parse(body, max_bytes)
    if isinstance(event, WebhookResult):
        return event
    return await _convert(event, project, neutron)


# --------------------------------------------------------------------------- Keystone


class KeystoneTokenCheck:
    """Validates a Keystone token with Keystone itself (`GET /v3/auth/tokens`).

    The token is presented as its own subject: Keystone lets every token
    validate itself, so osel needs no privileged role. A valid token is
    accepted only when its user (name or id) is one of `users`: with Aodh's
    `trust+http(s)` actions that is the user who created the alarms (Aodh
    impersonates it through the trust).
    """

    def __init__(
        self,
        auth_url: str,
        users: list[str],
        *,
        verify: bool | ssl.SSLContext = True,
        timeout: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        base = auth_url.rstrip("/")
        self.url = f"{base}/auth/tokens" if base.endswith("/v3") else f"{base}/v3/auth/tokens"
        self.users = frozenset(users)
        self._client = client or httpx.AsyncClient(verify=verify, timeout=timeout, trust_env=False)

    async def __call__(self, token: str) -> bool:
        headers = {"X-Auth-Token": token, "X-Subject-Token": token, "Accept": "application/json"}
        try:
            response = await self._client.get(self.url, headers=headers)
        except httpx.HTTPError as exc:
            raise KeystoneUnavailable(f"{self.url}: {type(exc).__name__}") from None
        if response.status_code in (401, 403, 404):
            return False
        if response.status_code != 200:
            raise KeystoneUnavailable(f"{self.url}: HTTP {response.status_code}")
        try:
            user = response.json()["token"]["user"]
        except (ValueError, KeyError, TypeError):
            raise KeystoneUnavailable(f"{self.url}: not a Keystone token document") from None
        return bool({str(user.get("name")), str(user.get("id"))} & self.users)

    async def close(self) -> None:
        await self._client.aclose()
