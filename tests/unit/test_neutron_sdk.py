"""SdkNeutron without a network: a fake openstacksdk connection answers."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import keystoneauth1.exceptions as ks_exc
import openstack
import openstack.exceptions as sdk_exc
import pytest
import requests

from osel.model import Port
from osel.neutron import NeutronUnavailable
from osel.neutron_sdk import SdkNeutron

PASSWORD = "hunter2-very-secret"
AUTH_URL = "http://keystone.example:5000/v3"
SG = "5a6d6d8c-0000-4000-8000-000000000001"

Route = requests.Response | BaseException | Callable[[dict[str, Any] | None], Any]


def reply(body: Any, status: int = 200, url: str = "http://neutron.example/v2.0/x") -> Any:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode()
    response.headers["content-type"] = "application/json"
    response.url = url
    return response


class FakeNetwork:
    """`conn.network`: answers GETs from a table of routes, keyed by path."""

    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, Any] | None]] = []

    def get(self, url: str, params: dict[str, Any] | None = None) -> Any:
        self.requests.append((url, params))
        self.conn.session.session.send(url)
        route = self.routes.get(url, reply({"NeutronError": {"message": "nope"}}, 404))
        if isinstance(route, BaseException):
            raise route
        if callable(route):
            return route(params)
        return route


class FakeConnection:
    def __init__(self) -> None:
        self.config = SimpleNamespace(auth={"auth_url": AUTH_URL, "password": PASSWORD})
        self.session = SimpleNamespace(session=SimpleNamespace(send=lambda *a, **k: None))
        self.network = FakeNetwork(self)
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def conn(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeConnection]:
    fake = FakeConnection()
    connects: list[dict[str, Any]] = []

    def connect(**kwargs: Any) -> FakeConnection:
        connects.append(kwargs)
        return fake

    monkeypatch.setattr(openstack, "connect", connect)
    fake.connects = connects  # type: ignore[attr-defined]
    yield fake


@pytest.fixture
async def neutron(conn: FakeConnection) -> Any:
    client = SdkNeutron(cloud="osel", timeout=1.0)
    yield client
    await client.close()


PORT = {
    "id": "p1",
    "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.0.0.5"}],
    "security_groups": [SG],
    "device_owner": "compute:nova",
    "network_id": "n1",
    "tenant_id": "t1",
    "revision_number": 3,
}
RULE = {
    "id": "r1",
    "security_group_id": SG,
    "direction": "ingress",
    "ethertype": "IPv6",
    "protocol": "TCP",
    "port_range_min": 22,
    "port_range_max": 22,
    "remote_ip_prefix": "::/0",
    "remote_group_id": None,
    "project_id": "t1",
}


# -- conversion ----------------------------------------------------------


async def test_nothing_happens_before_the_first_call(conn: FakeConnection) -> None:
    client = SdkNeutron(cloud="osel")
    assert conn.connects == []  # type: ignore[attr-defined]
    await client.close()


async def test_port_keeps_neutron_field_names(conn: FakeConnection, neutron: SdkNeutron) -> None:
    conn.network.routes["/ports/p1"] = reply({"port": PORT})
    port = await neutron.get_port("p1")
    assert port == Port(
        id="p1",
        fixed_ips=("10.0.0.5",),
        security_groups=(SG,),
        port_security_enabled=True,  # not sent: Neutron applies the groups
        device_owner="compute:nova",
        network_id="n1",
        project_id="t1",
        revision_number=3,
    )


async def test_rule_keeps_ethertype(conn: FakeConnection, neutron: SdkNeutron) -> None:
    conn.network.routes["/security-group-rules/r1"] = reply({"security_group_rule": RULE})
    rule = await neutron.get_rule("r1")
    assert rule is not None
    assert (rule.ethertype, rule.protocol, rule.remote_ip_prefix) == ("IPv6", "tcp", "::/0")


async def test_floating_ip_and_address_group(conn: FakeConnection, neutron: SdkNeutron) -> None:
    fip = {"id": "f1", "floating_ip_address": "203.0.113.9", "port_id": "p1", "project_id": "t"}
    conn.network.routes["/floatingips"] = lambda params: reply({"floatingips": [fip]})
    conn.network.routes["/address-groups/a1"] = reply(
        {"address_group": {"id": "a1", "addresses": ["192.0.2.0/28"]}}
    )
    [found] = await neutron.fips_of_port("p1")
    assert (found.floating_ip_address, found.port_id) == ("203.0.113.9", "p1")
    assert conn.network.requests[-1] == ("/floatingips", {"port_id": "p1"})
    group = await neutron.get_address_group("a1")
    assert group is not None and group.addresses == ("192.0.2.0/28",)


async def test_ids_are_quoted_into_the_path(conn: FakeConnection, neutron: SdkNeutron) -> None:
    assert await neutron.get_port("../networks?x=1") is None
    assert conn.network.requests == [("/ports/..%2Fnetworks%3Fx%3D1", None)]


async def test_empty_id_makes_no_call(conn: FakeConnection, neutron: SdkNeutron) -> None:
    assert await neutron.get_port("") is None
    assert await neutron.ports_in_group("") == []
    assert conn.network.requests == []


# -- not found -----------------------------------------------------------


async def test_not_found_is_none_or_empty(conn: FakeConnection, neutron: SdkNeutron) -> None:
    assert await neutron.get_port("gone") is None
    assert await neutron.get_rule("gone") is None
    assert await neutron.get_security_group("gone") is None
    assert await neutron.get_floating_ip("gone") is None
    assert await neutron.get_address_group("gone") is None
    assert await neutron.rules_of_group("gone") == []


def html_404(params: Any) -> Any:
    response = reply({}, 404)
    response._content = b"<html><h1>404 Not Found</h1></html>"
    response.headers["content-type"] = "text/html"
    return response


@pytest.mark.parametrize(
    "route",
    [
        html_404,  # a wrong endpoint, a proxy
        ks_exc.NotFound("Keystone: /v3/auth/tokens not found"),
        sdk_exc.NotFoundException("not found while discovering"),
    ],
)
async def test_a_404_not_from_neutron_is_unavailable(
    conn: FakeConnection, neutron: SdkNeutron, route: Route
) -> None:
    conn.network.routes["/ports/p1"] = route
    with pytest.raises(NeutronUnavailable, match=r"404|not found"):
        await neutron.get_port("p1")


# -- unavailable ---------------------------------------------------------


@pytest.mark.parametrize(
    "route",
    [
        reply({"NeutronError": {"message": "db down"}}, 500),
        reply({"NeutronError": {"message": "busy"}}, 503),
        reply({"NeutronError": {"message": "bad"}}, 400),
        ks_exc.ConnectFailure("Unable to establish connection to http://127.0.0.1:9696/v2.0"),
        ks_exc.ConnectTimeout("timed out"),
        ks_exc.EndpointNotFound("no network endpoint"),
        ks_exc.DiscoveryFailure("no version"),
        requests.exceptions.ReadTimeout("read timed out"),
        sdk_exc.SDKException("odd"),
    ],
    ids=lambda r: type(r).__name__ if isinstance(r, BaseException) else str(r.status_code),
)
async def test_failures_are_unavailable(
    conn: FakeConnection, neutron: SdkNeutron, route: Route
) -> None:
    conn.network.routes["/ports/p1"] = route
    with pytest.raises(NeutronUnavailable, match=r"get port p1: Neutron via cloud 'osel'") as err:
        await neutron.get_port("p1")
    assert AUTH_URL in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


@pytest.mark.parametrize("content", [b"<html>proxy error</html>", b"[]", b'{"ports": []}'])
async def test_a_strange_reply_is_unavailable(
    conn: FakeConnection, neutron: SdkNeutron, content: bytes
) -> None:
    broken = reply({})
    broken._content = content
    conn.network.routes["/ports/p1"] = broken
    with pytest.raises(NeutronUnavailable):
        await neutron.get_port("p1")


async def test_401_names_what_to_fix_and_hides_the_password(
    conn: FakeConnection, neutron: SdkNeutron
) -> None:
    conn.network.routes["/ports/p1"] = ks_exc.Unauthorized(
        f"The request you have made requires authentication (password {PASSWORD})"
    )
    with pytest.raises(NeutronUnavailable) as err:
        await neutron.get_port("p1")
    message = str(err.value)
    assert PASSWORD not in message
    assert "clouds.yaml entry 'osel'" in message and "credentials" in message


async def test_403_asks_for_the_reader_role(conn: FakeConnection, neutron: SdkNeutron) -> None:
    conn.network.routes["/ports"] = lambda params: reply({"NeutronError": {}}, 403)
    with pytest.raises(NeutronUnavailable, match="role 'reader'"):
        await neutron.snapshot()


async def test_connect_failure_is_unavailable_and_retried(
    monkeypatch: pytest.MonkeyPatch, conn: FakeConnection
) -> None:
    attempts: list[str | None] = []

    def connect(cloud: str | None = None, **kwargs: Any) -> Any:
        attempts.append(cloud)
        if len(attempts) == 1:
            raise sdk_exc.ConfigException(f"Cloud {cloud} was not found.")
        return conn

    monkeypatch.setattr(openstack, "connect", connect)
    client = SdkNeutron(cloud="nosuch")
    with pytest.raises(NeutronUnavailable, match="nosuch"):
        await client.get_port("p1")
    assert await client.get_port("p1") is None
    assert attempts == ["nosuch", "nosuch"]
    await client.close()


async def test_a_hanging_call_ends_at_the_timeout(conn: FakeConnection) -> None:
    release = threading.Event()
    conn.network.routes["/ports/p1"] = lambda params: release.wait(10)
    client = SdkNeutron(cloud="osel", timeout=0.2)
    started = time.monotonic()
    try:
        with pytest.raises(NeutronUnavailable, match=r"no answer .* within 0.2s"):
            await client.get_port("p1")
        assert time.monotonic() - started < 1.0
    finally:
        release.set()
        await client.close()


async def test_bugs_are_not_hidden(conn: FakeConnection, neutron: SdkNeutron) -> None:
    conn.network.routes["/ports/p1"] = TypeError("a bug")
    with pytest.raises(TypeError):
        await neutron.get_port("p1")


# -- concurrency and counting -------------------------------------------


async def test_at_most_max_concurrency_calls_at_once(conn: FakeConnection) -> None:
    lock = threading.Lock()
    running, peak = 0, 0

    def slow(params: Any) -> Any:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return reply({"port": PORT})

    conn.network.routes["/ports/p1"] = slow
    client = SdkNeutron(cloud="osel", max_concurrency=2)
    ports = await asyncio.gather(*(client.get_port("p1") for _ in range(8)))
    await client.close()
    assert all(p is not None for p in ports) and peak == 2


async def test_calls_counts_every_request(conn: FakeConnection, neutron: SdkNeutron) -> None:
    await neutron.get_port("p1")
    await neutron.rules_of_group(SG)
    assert neutron.calls == 2


# -- ports_in_group and snapshot ---------------------------------------


def extensions(*aliases: str) -> Any:
    return lambda params: reply({"extensions": [{"alias": a} for a in aliases]})


async def test_ports_in_group_uses_the_filter(conn: FakeConnection, neutron: SdkNeutron) -> None:
    conn.network.routes["/extensions"] = extensions("port-security-groups-filtering")
    conn.network.routes["/ports"] = lambda params: reply({"ports": [PORT]})
    assert [p.id for p in await neutron.ports_in_group(SG)] == ["p1"]
    assert [p.id for p in await neutron.ports_in_group(SG)] == ["p1"]
    assert conn.network.requests == [
        ("/extensions", None),
        ("/ports", {"security_groups": SG}),
        ("/ports", {"security_groups": SG}),
    ]


async def test_ports_in_group_without_the_filter(conn: FakeConnection, neutron: SdkNeutron) -> None:
    other = {**PORT, "id": "p2", "security_groups": ["other"]}
    conn.network.routes["/extensions"] = extensions("security-group")
    conn.network.routes["/ports"] = lambda params: reply({"ports": [PORT, other]})
    assert [p.id for p in await neutron.ports_in_group(SG)] == ["p1"]
    assert conn.network.requests[-1] == ("/ports", None)


async def test_snapshot(conn: FakeConnection, neutron: SdkNeutron) -> None:
    group = {"id": SG, "name": "web", "project_id": "t1", "security_group_rules": [RULE]}
    second_page = "http://neutron.example/v2.0/ports?marker=p1"
    conn.network.routes["/security-groups"] = lambda params: reply({"security_groups": [group]})
    conn.network.routes["/ports"] = lambda params: reply(
        {"ports": [PORT], "ports_links": [{"rel": "next", "href": second_page}]}
    )
    conn.network.routes[second_page] = lambda params: reply(
        {"ports": [{**PORT, "id": "p2"}], "ports_links": [{"rel": "previous", "href": "x"}]}
    )
    conn.network.routes["/floatingips"] = lambda params: reply({"floatingips": []})
    # /address-groups answers 404: the extension is not loaded

    snap = await neutron.snapshot()

    assert [g.id for g in snap.security_groups] == [SG]
    assert [(r.id, r.ethertype) for r in snap.rules] == [("r1", "IPv6")]
    assert [p.id for p in snap.ports] == ["p1", "p2"]
    assert snap.floating_ips == [] and snap.address_groups == []
    assert neutron.calls == 5


# -- configuration -------------------------------------------------------


async def test_inline_auth(conn: FakeConnection) -> None:
    auth = {
        "auth_url": AUTH_URL,
        "application_credential_id": "abc",
        "application_credential_secret": "s3cr3t-app-cred",
    }
    client = SdkNeutron(auth=auth, region_name="RegionTwo", verify=False, timeout=3)
    conn.network.routes["/ports/p1"] = ks_exc.Unauthorized("bad secret s3cr3t-app-cred")
    with pytest.raises(NeutronUnavailable) as err:
        await client.get_port("p1")
    await client.close()
    assert "s3cr3t-app-cred" not in str(err.value)
    assert "inline openstack auth" in str(err.value)
    [kwargs] = conn.connects  # type: ignore[attr-defined]
    assert kwargs["auth_type"] == "v3applicationcredential"
    assert kwargs["load_yaml_config"] is False and kwargs["load_envvars"] is False
    assert (kwargs["region_name"], kwargs["verify"], kwargs["api_timeout"]) == (
        "RegionTwo",
        False,
        3.0,
    )


async def test_cloud_options(conn: FakeConnection) -> None:
    client = SdkNeutron(cloud="osel")
    await client.get_port("p1")
    await client.close()
    assert conn.connects == [{"cloud": "osel", "api_timeout": 10.0}]  # type: ignore[attr-defined]
    assert conn.closed


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"cloud": "a", "auth": {"auth_url": "x"}}, {"auth": {}}, {"cloud": "a", "timeout": 0}],
)
def test_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SdkNeutron(**kwargs)
