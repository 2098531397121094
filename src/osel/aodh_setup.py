"""`osel aodh setup`: one set of event alarms per project, through the Aodh API.

Aodh matches an event only against the alarms of the event's own project, so
every project needs its alarms: one per resource kind (`EVENT_PATTERNS`),
each with `repeat_actions: true` (an event alarm otherwise fires once and
never again) and the project's webhook URL as its only action. The alarms
are named `<prefix>-<kind>`; `plan` compares what exists with what should
and says, for each, create, update or leave; `apply` does it. Alarms with the
prefix that no wanted alarm matches (a project gone, a kind renamed) are
reported as stale and deleted only with `prune`.

The template of one project's alarms is `alarm_template()`, shipped as
`deploy/aodh/alarm.json` for operators who create them by other means.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

from osel.aodh import EVENT_PATTERNS, webhook_url
from osel.config import Settings

Alarm = dict[str, Any]
Verb = Literal["create", "update", "unchanged", "stale", "delete"]

SEVERITY = "moderate"
#: The fields `plan` compares; the rest (state, timestamps, ids) is Aodh's.
COMPARED = (
    "type",
    "description",
    "severity",
    "enabled",
    "repeat_actions",
    "alarm_actions",
    "ok_actions",
    "insufficient_data_actions",
    "event_rule",
)
PLACEHOLDER_PROJECT = "{project_id}"
PLACEHOLDER_URL = "{webhook_url}"


def alarms_for(prefix: str, project_id: str, url: str) -> list[Alarm]:
    """The alarms one project needs, as `POST /v2/alarms` bodies."""
    return [
        {
            "name": f"{prefix}-{kind}",
            "project_id": project_id,
            "type": "event",
            "description": (
                f"osel: Neutron {kind} changes ({pattern}) to osel's webhook; "
                "managed by `osel aodh setup`"
            ),
            "severity": SEVERITY,
            "enabled": True,
            "repeat_actions": True,
            "alarm_actions": [url],
            "ok_actions": [],
            "insufficient_data_actions": [],
            "event_rule": {"event_type": pattern, "query": []},
        }
        for kind, pattern in EVENT_PATTERNS.items()
    ]


def alarm_template(prefix: str = "osel") -> list[Alarm]:
    """One project's alarms with placeholders: `deploy/aodh/alarm.json`."""
    return alarms_for(prefix, PLACEHOLDER_PROJECT, PLACEHOLDER_URL)


def template_json(prefix: str = "osel") -> str:
    return json.dumps(alarm_template(prefix), indent=2) + "\n"


def scrub_action(url: str) -> str:
    """An action URL as the Aodh API shows it: a trust URL without its trust id."""
    parts = urlsplit(url)
    if not parts.scheme.startswith("trust+") or "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


def _normal(alarm: Alarm) -> dict[str, Any]:
    out = {key: alarm.get(key) for key in COMPARED}
    for key in ("alarm_actions", "ok_actions", "insufficient_data_actions"):
        out[key] = [scrub_action(str(u)) for u in out[key] or []]
    rule = dict(out["event_rule"] or {})
    out["event_rule"] = {"event_type": rule.get("event_type"), "query": rule.get("query") or []}
    return out


@dataclass(frozen=True, slots=True)
class Step:
    verb: Verb
    project_id: str
    name: str
    alarm_id: str | None = None
    body: Alarm | None = None

    def describe(self) -> str:
        what = f"{self.verb:<9} {self.project_id}  {self.name}"
        return f"{what}  ({self.alarm_id})" if self.alarm_id else what


def plan(
    existing: Iterable[Alarm], wanted: Iterable[Alarm], *, prefix: str, prune: bool = False
) -> list[Step]:
    """What to do so that `wanted` exists (pure)."""
    have: dict[tuple[str, str], Alarm] = {}
    for alarm in existing:
        name = str(alarm.get("name") or "")
        if name.startswith(f"{prefix}-"):
            have[(str(alarm.get("project_id") or ""), name)] = alarm
    steps: list[Step] = []
    for body in wanted:
        key = (str(body["project_id"]), str(body["name"]))
        found = have.pop(key, None)
        if found is None:
            steps.append(Step("create", *key, body=body))
        elif _normal(found) != _normal(body):
            steps.append(Step("update", *key, alarm_id=str(found["alarm_id"]), body=body))
        else:
            steps.append(Step("unchanged", *key, alarm_id=str(found["alarm_id"])))
    for (project_id, name), alarm in sorted(have.items()):
        steps.append(Step("delete" if prune else "stale", project_id, name, str(alarm["alarm_id"])))
    return steps


class AodhAdmin(Protocol):
    """The calls `osel aodh setup` makes (Aodh v2 and Keystone v3)."""

    def projects(self) -> list[str]: ...

    def event_alarms(self) -> list[Alarm]: ...

    def create(self, body: Alarm) -> Alarm: ...

    def update(self, alarm_id: str, body: Alarm) -> Alarm: ...

    def delete(self, alarm_id: str) -> None: ...


def apply(api: AodhAdmin, steps: list[Step]) -> None:
    """Carry out the steps in order; the first failure propagates."""
    for step in steps:
        if step.verb == "create" and step.body is not None:
            api.create(step.body)
        elif step.verb == "update" and step.body is not None and step.alarm_id:
            api.update(step.alarm_id, step.body)
        elif step.verb == "delete" and step.alarm_id:
            api.delete(step.alarm_id)


class AodhSetupError(Exception):
    """An Aodh or Keystone call failed; the message says which and why (no secrets)."""


class SdkAodhAdmin:
    """`AodhAdmin` through an openstacksdk connection (clouds.yaml or inline auth).

    The user must be allowed to create alarms in every project (admin): alarms
    are created with an explicit `project_id`, which Aodh accepts from admins only.
    """

    def __init__(self, conn: Any, *, interface: str = "public", timeout: float = 30.0) -> None:
        from keystoneauth1.adapter import Adapter

        self._conn = conn
        self._aodh = Adapter(
            session=conn.session,
            service_type="alarming",
            interface=interface,
            region_name=getattr(conn.config, "region_name", None),
        )
        self._timeout = timeout

    def _call(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        import keystoneauth1.exceptions as ks_exc

        try:
            response = self._aodh.request(
                path, method, raise_exc=False, timeout=self._timeout, **kwargs
            )
        except ks_exc.ClientException as exc:
            raise AodhSetupError(f"{what}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            detail = " ".join(response.text.split())[:300]
            raise AodhSetupError(f"{what}: Aodh answered HTTP {response.status_code}: {detail}")
        return response.json() if response.content else None

    def projects(self) -> list[str]:
        try:
            return sorted(str(p.id) for p in self._conn.identity.projects() if p.is_enabled)
        except Exception as exc:  # openstacksdk raises many kinds
            raise AodhSetupError(
                f"listing Keystone projects: {type(exc).__name__}: {exc} -- the user needs "
                "the admin role (or pass the projects with --project)"
            ) from None

    def event_alarms(self) -> list[Alarm]:
        """Every project's event alarms (an admin sees only its own without all_projects)."""
        params = [
            *(("q.field", "type"), ("q.op", "eq"), ("q.value", "event")),
            *(("q.field", "all_projects"), ("q.op", "eq"), ("q.value", "true")),
        ]
        found = self._call("GET", "/v2/alarms", "listing event alarms", params=params)
        return list(found or [])

    def create(self, body: Alarm) -> Alarm:
        what = f"creating alarm {body['name']} in project {body['project_id']}"
        return dict(self._call("POST", "/v2/alarms", what, json=body))

    def update(self, alarm_id: str, body: Alarm) -> Alarm:
        what = f"updating alarm {alarm_id} ({body['name']}, project {body['project_id']})"
        return dict(self._call("PUT", f"/v2/alarms/{alarm_id}", what, json=body))

    def delete(self, alarm_id: str) -> None:
        self._call("DELETE", f"/v2/alarms/{alarm_id}", f"deleting alarm {alarm_id}")


# --------------------------------------------------------------------------- the command


def connect(settings: Settings, cloud: str | None) -> Any:
    """An openstacksdk connection: `cloud` if given, else osel's own (openstack.*)."""
    import openstack

    os_ = settings.openstack
    opts: dict[str, Any] = {"api_timeout": os_.timeout_seconds}
    if os_.region_name:
        opts["region_name"] = os_.region_name
    if cloud is not None or os_.auth is None:
        return openstack.connect(cloud=cloud or os_.cloud, **opts)
    auth = {
        k: (v.get_secret_value() if hasattr(v, "get_secret_value") else v)
        for k, v in os_.auth.model_dump(exclude_none=True).items()
        if not k.endswith("_file")
    }
    auth_type = "v3applicationcredential" if "application_credential_secret" in auth else "password"
    return openstack.connect(
        auth=auth,
        auth_type=auth_type,
        identity_api_version="3",
        interface=os_.interface,
        verify=os_.cacert or os_.verify,
        load_yaml_config=False,
        load_envvars=False,
        **opts,
    )


def webhook_problems(settings: Settings) -> tuple[list[str], list[str]]:
    """(errors, warnings) about the webhook URL the alarms would carry."""
    http = settings.http
    errors: list[str] = []
    warnings: list[str] = []
    if http.public_url is None:
        errors.append(
            "http.public_url is not set: set it to the URL Aodh reaches osel's HTTP "
            "endpoint at, e.g. https://osel.example.com:9797"
        )
        return errors, warnings
    trust = http.public_url.startswith("trust+")
    if http.aodh_token is None and not http.keystone_validate:
        errors.append(
            "http.aodh_token is not set and http.keystone_validate is false: the webhook "
            "would refuse everything; set http.aodh_token_file (a long random secret)"
        )
    if http.keystone_validate and not trust:
        errors.append(
            f"http.keystone_validate is true but http.public_url={http.public_url!r} is not "
            "trust+http(s)://: Aodh sends a Keystone token for trust+ actions only"
        )
    if trust and not http.keystone_validate:
        warnings.append(
            "http.public_url is a trust+ URL but http.keystone_validate is false: osel "
            "ignores the Keystone token Aodh sends"
        )
    if not http.enabled:
        warnings.append("http.enabled is false: osel serves no webhook")
    return errors, warnings


def wanted(settings: Settings, projects: Iterable[str]) -> list[Alarm]:
    http = settings.http
    assert http.public_url is not None
    token = http.aodh_token
    secret = token.get_secret_value() if token is not None else None
    return [
        alarm
        for project in projects
        for alarm in alarms_for(
            http.aodh_alarm_prefix, project, webhook_url(http.public_url, secret, project)
        )
    ]


def masked_url(settings: Settings) -> str:
    """The webhook URL for the output, its per-project part masked."""
    assert settings.http.public_url is not None
    return f"{settings.http.public_url.rstrip('/')}/v1/aodh/<project_id>.********"
