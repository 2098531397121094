"""`NeutronAPI` through openstacksdk: the adapter osel runs with in production.

openstacksdk provides the connection: clouds.yaml, Keystone authentication and
token renewal, the service catalog, TLS. The queries themselves are plain
`GET`s on the SDK's network adapter, read as the JSON Neutron sent: its field
names are exactly what `model.*.from_neutron` expects, and turning a reply
into openstacksdk resource objects would cost about half a millisecond of CPU
per port (seconds for a large cloud's snapshot), rename fields
(`security_group_ids`, `ether_type`) and invent values for fields Neutron did
not send (`port_security_enabled=False`).

openstacksdk is synchronous, so every call runs in a worker thread of a pool
of `max_concurrency` threads, under an `asyncio.wait_for` deadline; a thread
that outlives its deadline keeps its slot until its socket timeout ends it,
so a hanging Neutron can never pile up threads. Errors are translated here
and nowhere else: Neutron's own 404 becomes `None` or `[]`; everything that
means "cannot answer now" (including a 404 from anything else: a wrong
endpoint must not make every port "not found") becomes `NeutronUnavailable`,
with a short message naming the endpoint and never a secret. Anything else
is a bug and propagates.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import keystoneauth1.exceptions as ks_exc
import openstack
import openstack.exceptions as sdk_exc
import requests

from osel.model import AddressGroup, FloatingIP, Port, Rule, SecurityGroup
from osel.neutron import NeutronUnavailable, Snapshot

__all__ = ["SdkNeutron"]

_T = TypeVar("_T")
Json = dict[str, Any]

#: Extension that lets `GET /v2.0/ports` filter on `security_groups`.
SG_FILTER_EXTENSION = "port-security-groups-filtering"

#: Keys of an auth dict whose values are secrets contain one of these.
_SECRET_WORDS = ("password", "secret", "token", "passcode")
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_MAX_DETAIL = 240
_MAX_PAGES = 10_000

#: Errors that mean "cannot answer now" (as opposed to bugs).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    sdk_exc.SDKException,
    ks_exc.ClientException,
    requests.exceptions.RequestException,  # includes a reply that is not JSON
    OSError,  # e.g. an unreadable cacert file
)
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*_UNAVAILABLE, ValueError)
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (*_UNAVAILABLE, TimeoutError)


def _is_secret(key: str, value: Any) -> bool:
    return bool(value) and any(word in key for word in _SECRET_WORDS)


def _status(exc: BaseException) -> int | None:
    for attr in ("status_code", "http_status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    return None


class _NotFound(Exception):
    """Neutron itself answered 404: no such resource (or collection)."""


def _is_neutron_error(response: requests.Response) -> bool:
    """Whether a reply is Neutron's own error document, `{"NeutronError": {...}}`.

    A 404 without it comes from something else (a wrong endpoint, a proxy,
    Keystone) and must not be read as "this resource does not exist".
    """
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and "NeutronError" in body


def _get_json(conn: Any, url: str, params: dict[str, Any] | None = None) -> Json:
    """One `GET` on Neutron (path relative to its versioned endpoint, or absolute)."""
    response = conn.network.get(url, params=params)
    if response.status_code == 404 and _is_neutron_error(response):
        raise _NotFound(url)
    sdk_exc.raise_from_response(response)
    body = response.json()
    if not isinstance(body, dict):
        raise sdk_exc.InvalidResponse(f"expected a JSON object from {url}")
    return body


def _get_one(conn: Any, collection: str, key: str, item_id: str) -> Json:
    url = f"/{collection}/{quote(item_id, safe='')}"
    found = _get_json(conn, url).get(key)
    if not isinstance(found, dict):
        raise sdk_exc.InvalidResponse(f"no {key!r} object in the reply to {url}")
    return found


def _get_all(conn: Any, collection: str, params: dict[str, Any] | None = None) -> list[Json]:
    """A whole collection, following Neutron's `<collection>_links` pages."""
    key = collection.replace("-", "_")
    url: str | None = f"/{collection}"
    items: list[Json] = []
    for _ in range(_MAX_PAGES):
        if url is None:
            return items
        body = _get_json(conn, url, params)
        items.extend(body.get(key) or ())
        links = body.get(f"{key}_links") or ()
        url = next((link["href"] for link in links if link.get("rel") == "next"), None)
        params = None  # the next link carries the query
    raise sdk_exc.InvalidResponse(f"more than {_MAX_PAGES} pages of {collection}")


class SdkNeutron:
    """Read-only Neutron through openstacksdk (implements `osel.neutron.NeutronAPI`).

    Give either `cloud`, the name of a clouds.yaml entry (found the usual way:
    `OS_CLIENT_CONFIG_FILE`, `./clouds.yaml`, `~/.config/openstack/`,
    `/etc/openstack/`), or `auth`, an inline keystoneauth auth dict for
    Keystone v3 (`auth_url` with username/password/project/domains, or
    `application_credential_id`/`application_credential_secret`; an
    `auth_type` key overrides the guess). With a cloud, `region_name`,
    `cacert` and non-default `interface`/`verify` override clouds.yaml.

    The user needs role `reader` (or admin) on the admin project: osel reads
    the ports of every project. Nothing is sent before the first call, which
    also builds the connection (no HTTP, but bounded by `timeout` too). Every
    request then returns or raises within `timeout` seconds; a full listing
    (each of `snapshot`'s, or all ports when the `security_groups` filter is
    missing) within `list_timeout`, by default six times `timeout`.
    """

    def __init__(
        self,
        *,
        cloud: str | None = None,
        auth: dict[str, Any] | None = None,
        region_name: str | None = None,
        interface: str = "public",
        verify: bool = True,
        cacert: str | None = None,
        timeout: float = 10.0,
        max_concurrency: int = 4,
        list_timeout: float | None = None,
    ) -> None:
        if (cloud is None) == (auth is None):
            raise ValueError("give exactly one of cloud= or auth=")
        if auth is not None and not auth.get("auth_url"):
            raise ValueError("auth must contain auth_url")
        if timeout <= 0 or max_concurrency < 1:
            raise ValueError("timeout must be > 0 and max_concurrency >= 1")
        self._cloud = cloud
        self._auth = dict(auth) if auth is not None else None
        self._region_name = region_name
        self._interface = interface
        self._verify = verify
        self._cacert = cacert
        self._timeout = float(timeout)
        self._list_timeout = float(list_timeout) if list_timeout else 6 * self._timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_concurrency, thread_name_prefix="osel-neutron"
        )
        self._conn: Any = None
        self._connect_lock = asyncio.Lock()
        self._extensions: frozenset[str] | None = None
        self._secrets = {str(v) for k, v in (auth or {}).items() if _is_secret(k, v)}
        self._auth_url: str | None = self._auth["auth_url"] if self._auth else None
        self._calls = 0
        self._calls_lock = threading.Lock()

    @property
    def calls(self) -> int:
        """HTTP requests sent so far: Neutron's (each page) and Keystone's."""
        return self._calls

    # -- NeutronAPI ------------------------------------------------------

    async def get_security_group(self, sg_id: str) -> SecurityGroup | None:
        found = await self._one("security-groups", "security_group", sg_id)
        return None if found is None else SecurityGroup.from_neutron(found)

    async def rules_of_group(self, sg_id: str) -> list[Rule]:
        found = await self._all("security-group-rules", {"security_group_id": sg_id})
        return [Rule.from_neutron(r) for r in found]

    async def get_rule(self, rule_id: str) -> Rule | None:
        found = await self._one("security-group-rules", "security_group_rule", rule_id)
        return None if found is None else Rule.from_neutron(found)

    async def ports_in_group(self, sg_id: str) -> list[Port]:
        if not sg_id:
            return []
        if SG_FILTER_EXTENSION in await self._neutron_extensions():
            found = await self._all("ports", {"security_groups": sg_id})
        else:
            found = await self._all("ports", deadline=self._list_timeout)
        ports = [Port.from_neutron(p) for p in found]
        return [p for p in ports if sg_id in p.security_groups]

    async def get_port(self, port_id: str) -> Port | None:
        found = await self._one("ports", "port", port_id)
        return None if found is None else Port.from_neutron(found)

    async def fips_of_port(self, port_id: str) -> list[FloatingIP]:
        if not port_id:
            return []
        found = await self._all("floatingips", {"port_id": port_id})
        return [FloatingIP.from_neutron(f) for f in found]

    async def get_floating_ip(self, fip_id: str) -> FloatingIP | None:
        found = await self._one("floatingips", "floatingip", fip_id)
        return None if found is None else FloatingIP.from_neutron(found)

    async def get_address_group(self, ag_id: str) -> AddressGroup | None:
        found = await self._one("address-groups", "address_group", ag_id)
        return None if found is None else AddressGroup.from_neutron(found)

    async def snapshot(self) -> Snapshot:
        """Four listings, run concurrently; the rules come inside their groups.

        Without the address-group extension, `address_groups` is empty.
        """
        groups, ports, fips, ags = await asyncio.gather(
            self._all("security-groups", deadline=self._list_timeout),
            self._all("ports", deadline=self._list_timeout),
            self._all("floatingips", deadline=self._list_timeout),
            self._all("address-groups", deadline=self._list_timeout),
        )
        return Snapshot(
            security_groups=[SecurityGroup.from_neutron(g) for g in groups],
            rules=[
                Rule.from_neutron(r) for g in groups for r in g.get("security_group_rules") or ()
            ],
            ports=[Port.from_neutron(p) for p in ports],
            floating_ips=[FloatingIP.from_neutron(f) for f in fips],
            address_groups=[AddressGroup.from_neutron(a) for a in ags],
        )

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            loop = asyncio.get_running_loop()
            # a failed close leaves nothing behind that process exit will not release
            with contextlib.suppress(*_CLOSE_ERRORS):
                await asyncio.wait_for(loop.run_in_executor(self._pool, conn.close), self._timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- machinery -------------------------------------------------------

    async def _one(self, collection: str, key: str, item_id: str) -> Json | None:
        if not item_id:
            return None
        return await self._call(
            f"get {key} {item_id[:80]}",
            functools.partial(_get_one, collection=collection, key=key, item_id=item_id),
        )

    async def _all(
        self,
        collection: str,
        params: dict[str, Any] | None = None,
        *,
        deadline: float | None = None,
    ) -> list[Json]:
        what = f"list {collection}" + "".join(f" {k}={v}" for k, v in (params or {}).items())
        found = await self._call(
            what, functools.partial(_get_all, collection=collection, params=params), deadline
        )
        return found or []

    async def _neutron_extensions(self) -> frozenset[str]:
        if self._extensions is None:
            found = await self._all("extensions")
            self._extensions = frozenset(str(e.get("alias")) for e in found)
        return self._extensions

    async def _call(
        self, what: str, fn: Callable[[Any], _T], deadline: float | None = None
    ) -> _T | None:
        """Run `fn(connection)` in a worker thread; `None` if Neutron says 404."""
        conn = await self._connection()
        loop = asyncio.get_running_loop()
        limit = deadline or self._timeout
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._pool, fn, conn), limit)
        except TimeoutError:
            raise NeutronUnavailable(
                f"{what}: no answer from Neutron via {self._endpoint()} within {limit:g}s"
            ) from None
        except _NotFound:
            return None
        except _UNAVAILABLE as exc:
            raise self._unavailable(what, exc) from None

    async def _connection(self) -> Any:
        if self._conn is not None:
            return self._conn
        async with self._connect_lock:
            if self._conn is None:
                loop = asyncio.get_running_loop()
                try:
                    conn = await asyncio.wait_for(
                        loop.run_in_executor(self._pool, self._connect), self._timeout
                    )
                except TimeoutError:
                    raise NeutronUnavailable(
                        f"connect: no connection to {self._endpoint()} within {self._timeout:g}s"
                    ) from None
                except _CONNECT_ERRORS as exc:
                    raise self._unavailable("connect", exc) from None
                self._conn = conn
        return self._conn

    def _connect(self) -> Any:
        """Build the openstacksdk connection (no HTTP yet); runs in a worker thread."""
        opts: dict[str, Any] = {"api_timeout": self._timeout}
        if self._region_name:
            opts["region_name"] = self._region_name
        if self._cacert:
            opts["cacert"] = self._cacert
        if self._auth is not None:
            auth = dict(self._auth)
            auth_type = auth.pop("auth_type", None) or (
                "v3applicationcredential" if "application_credential_secret" in auth else "password"
            )
            conn = openstack.connect(
                auth=auth,
                auth_type=auth_type,
                identity_api_version="3",
                interface=self._interface,
                verify=self._verify,
                load_yaml_config=False,
                load_envvars=False,
                **opts,
            )
        else:
            if self._interface != "public":
                opts["interface"] = self._interface
            if not self._verify:
                opts["verify"] = False
            conn = openstack.connect(cloud=self._cloud, **opts)
            cfg_auth = getattr(getattr(conn, "config", None), "auth", None) or {}
            self._secrets |= {str(v) for k, v in cfg_auth.items() if _is_secret(k, v)}
            self._auth_url = cfg_auth.get("auth_url") or self._auth_url
        self._count_requests(conn)
        return conn

    def _count_requests(self, conn: Any) -> None:
        """Wrap the requests.Session under keystoneauth so every request is counted."""
        http: Any = getattr(getattr(conn, "session", None), "session", None)
        send = getattr(http, "send", None)
        if http is None or send is None:
            return

        def counting_send(*args: Any, **kwargs: Any) -> Any:
            with self._calls_lock:
                self._calls += 1
            return send(*args, **kwargs)

        http.send = counting_send

    def _endpoint(self) -> str:
        where = f"cloud {self._cloud!r}" if self._cloud else "inline auth"
        return f"{where} ({self._auth_url})" if self._auth_url else where

    def _unavailable(self, what: str, exc: BaseException) -> NeutronUnavailable:
        status = _status(exc)
        detail = self._scrub(f"{type(exc).__name__}: {exc}")
        source = (
            f"clouds.yaml entry {self._cloud!r} (OS_CLIENT_CONFIG_FILE)"
            if self._cloud
            else "the inline openstack auth settings"
        )
        if status == 401:
            hint = f"Keystone rejected the credentials: check the auth of {source}"
        elif status == 403:
            hint = (
                f"not allowed: the user of {source} needs role 'reader' (or admin) "
                "on the admin project to read the resources of every project"
            )
        else:
            hint = ""
        message = f"{what}: Neutron via {self._endpoint()}: {detail}"
        return NeutronUnavailable(f"{message} -- {hint}" if hint else message)

    def _scrub(self, text: str) -> str:
        text = _USERINFO.sub("***@", text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = " ".join(text.split())
        return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."
