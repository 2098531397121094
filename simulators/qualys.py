"""A simulator of the Qualys VM API v2, for osel's tests, the demo and operators.

This is NOT Qualys and not production code. It was written from Qualys's
public documentation (the VM/PC API user guide and docs.qualys.com pages
"Launch VM scan", "List VM scans", "Fetch VM scan results", "Add IPs", "List
IPs", "HTTP response headers", "API limits" and the error-code appendix) so
that osel can be tested, demonstrated and tried without a Qualys
subscription. Point `qualys.api_url` at it:

    python -m simulators.qualys --port 9443        # user osel, password osel-secret

Behaviours modelled:

- The same HTTP and XML as Qualys: form-encoded requests to
  `/api/2.0/fo/scan/` (`action=launch|list|fetch|cancel`) and
  `/api/2.0/fo/asset/ip/` (`action=list|add`); HTTP Basic authentication
  (401 with CODE 2000 "Bad Login/Password" otherwise); the
  `X-Requested-With` header required; answers as `SIMPLE_RETURN`,
  `SCAN_LIST_OUTPUT` and `IP_LIST_OUTPUT` documents, scan results as the
  JSON list `output_format=json` returns (a user block, a scan block, one
  object per finding).
- launch: `scan_title` (at most 2000 characters), `ip` (addresses, `a-b`
  ranges, CIDRs), exactly one of `option_id`/`option_title` (1903 when
  neither, 1904 when both, 1905 for an unknown profile), `iscanner_name`
  (1905 for an unknown appliance; none: the external scanners), `priority`
  0-9. Addresses outside the subscription, and IPv6 addresses while the
  subscription has no IPv6 option, are refused with 400 CODE 1905
  "parameter ip has invalid value" naming them (the exact words Qualys uses
  here are not documented; this is a stand-in). The answer carries the scan
  `ID` and `REFERENCE` (`scan/<epoch>.<n>`).
- Scans move Queued -> Running -> Finished over time (`queued_seconds`,
  `running_seconds`), or end in Error or Canceled on request; `list`
  filters by `scan_ref`, `state`, `launched_after_datetime`,
  `launched_before_datetime`, `type` and `user_login`; `fetch` answers only
  for a Finished scan, with plausible results for every scanned address:
  the open services of that address (tcp/22 always; others chosen from the
  address, or set per address with `services`), an "Open TCP/UDP Services
  List" row (QIDs 82023/82004) and information-gathered and vulnerability
  rows. The other QIDs and titles are illustrative, not KnowledgeBase
  entries.
- Limits per API (per path), as Qualys describes them: a sliding window of
  `rate_limit` calls per `rate_window` seconds and `concurrency_limit`
  calls at once. Every answer carries `X-RateLimit-Limit`,
  `X-RateLimit-Window-Sec`, `X-RateLimit-Remaining`,
  `X-RateLimit-ToWait-Sec`, `X-Concurrency-Limit-Limit` and
  `X-Concurrency-Limit-Running` (which counts the call itself). A call over
  the concurrency limit gets 409 CODE 1960 (`CALLS_TO_FINISH`, concurrency
  headers only); over the rate limit, 409 CODE 1965 (`SECONDS_TO_WAIT`). The
  concurrency check comes first; blocked calls are not counted.
- Failure switches (`Switches`, also `POST /_sim/switches` with JSON): the
  next calls answered with given HTTP statuses (500, 503, ...), refused with
  409 and given codes (a burst of 1960/1965), or cut off without an answer;
  a delay on every call; new scans ending in Error or Canceled; a different
  password (bad credentials). `GET /_sim/state` shows scans, calls and
  switches.

Not modelled: session login, asset groups, tags, networks, IPv4/IPv6
mapping records, report generation, scan schedules, anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import json
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

import httpx
from aiohttp import web

SCAN_API = "/api/2.0/fo/scan/"
ASSET_IP_API = "/api/2.0/fo/asset/ip/"
APIS = (SCAN_API, ASSET_IP_API)
STATES = ("Queued", "Running", "Finished", "Error", "Canceled")

# (protocol, port, service, information-gathered title, vulnerability title, severity)
CATALOGUE: dict[tuple[str, int], tuple[str, str, str, int]] = {
    ("tcp", 22): ("ssh", "SSH Server Version Detected", "SSH Weak Algorithms Supported", 2),
    ("tcp", 80): ("http", "Web Server Version", "HTTP TRACE / TRACK Methods Enabled", 2),
    ("tcp", 443): ("https", "SSL Server Information Retrieval", "TLS Version 1.0 Enabled", 3),
    ("tcp", 3306): ("mysql", "MySQL Server Detected", "MySQL Server Reachable Without TLS", 3),
    ("tcp", 3389): ("ms-wbt-server", "RDP Service Detected", "RDP NLA Not Enforced", 3),
    ("tcp", 5432): ("postgresql", "PostgreSQL Detected", "PostgreSQL Weak Authentication", 4),
    ("udp", 161): ("snmp", "SNMP Service Detected", "SNMP Default Community Name", 4),
}
EXTRA_SERVICES = [k for k in CATALOGUE if k != ("tcp", 22)]
BASE_QID = {k: 90000 + 10 * i for i, k in enumerate(CATALOGUE)}


@dataclass
class Switches:
    """Failures to inject, consumed one per call (lists) or applied to every call."""

    fail_status: list[int] = field(default_factory=list)  # next calls: these HTTP statuses
    throttle: list[str] = field(default_factory=list)  # next calls: 409 with "1960"/"1965"
    throttle_wait: int = 2  # X-RateLimit-ToWait-Sec of an injected 1965
    drop: int = 0  # next N calls: the connection is closed without an answer
    delay: float = 0.0  # every call waits this long before it is handled
    end_scans_in: str = "Finished"  # new scans end so: Finished | Error | Canceled


@dataclass
class Call:
    at: float  # wall clock (epoch seconds)
    api: str
    action: str
    params: dict[str, str]
    status: int
    code: str = ""


@dataclass
class SimScan:
    id: int
    ref: str
    title: str
    targets: list[str]
    target_text: str
    user: str
    option: str
    scanner: str
    priority: int
    started: float  # monotonic
    launched: datetime
    end_state: str
    canceled: bool = False


@dataclass(frozen=True)
class Reply:
    status: int
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "text/xml"
    drop: bool = False


def simple_return(text: str, code: str = "", items: Mapping[str, str] | None = None) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    parts = [
        '<?xml version="1.0" encoding="UTF-8" ?>',
        '<!DOCTYPE SIMPLE_RETURN SYSTEM "https://qualysapi.qualys.com/api/2.0/simple_return.dtd">',
        f"<SIMPLE_RETURN><RESPONSE><DATETIME>{now}</DATETIME>",
    ]
    if code:
        parts.append(f"<CODE>{escape(code)}</CODE>")
    parts.append(f"<TEXT>{escape(text)}</TEXT>")
    if items:
        parts.append("<ITEM_LIST>")
        parts += [
            f"<ITEM><KEY>{escape(k)}</KEY><VALUE>{escape(v)}</VALUE></ITEM>"
            for k, v in items.items()
        ]
        parts.append("</ITEM_LIST>")
    parts.append("</RESPONSE></SIMPLE_RETURN>")
    return "\n".join(parts)


def _cdata(text: str) -> str:
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _digest(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:4], "big")


def expand(spec: str, *, cap: int = 65536) -> list[str]:
    """`ip=` text -> addresses (ranges and CIDRs expanded); ValueError when malformed."""
    found: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if "-" in part:
            low, high = (ipaddress.ip_address(s.strip()) for s in part.split("-", 1))
            if low.version != high.version or int(high) < int(low):
                raise ValueError(part)
            if int(high) - int(low) >= cap:
                raise ValueError(part)
            found += [
                str(ipaddress.ip_address(int(low) + i)) for i in range(int(high) - int(low) + 1)
            ]
        elif "/" in part:
            net = ipaddress.ip_network(part, strict=False)
            if net.num_addresses > cap:
                raise ValueError(part)
            found += [str(a) for a in net]
        else:
            found.append(str(ipaddress.ip_address(part)))
    return found


def _qualys_time(text: str) -> datetime:
    text = text.strip().replace("Z", "+00:00")
    stamp = datetime.fromisoformat(text)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


class QualysSimulator:
    """The simulated subscription: state, limits, switches and the request handler."""

    def __init__(
        self,
        *,
        username: str = "osel",
        password: str = "osel-secret",
        subscription: list[str] | None = None,
        ipv6: bool = False,
        option_profiles: Mapping[int, str] | None = None,
        scanners: tuple[str, ...] = ("scanner1",),
        rate_limit: int = 300,
        rate_window: float = 3600.0,
        concurrency_limit: int = 2,
        queued_seconds: float = 1.0,
        running_seconds: float = 2.0,
        services: Mapping[str, list[tuple[str, int]]] | None = None,
    ) -> None:
        self.username = username
        self.password = password
        self.subscription: list[str] | None = (
            list(subscription) if subscription is not None else None
        )
        self.ipv6 = ipv6
        self.option_profiles = dict(option_profiles or {1001: "Initial Options"})
        self.scanners = scanners
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.concurrency_limit = concurrency_limit
        self.queued_seconds = queued_seconds
        self.running_seconds = running_seconds
        self.services = dict(services or {})
        self.switches = Switches()
        self.calls: list[Call] = []
        self.scans: dict[str, SimScan] = {}
        self.added: list[str] = []
        self._window: dict[str, deque[float]] = {api: deque() for api in APIS}
        self._running: dict[str, int] = dict.fromkeys(APIS, 0)
        self._next_id = 1000

    # --- what tests look at ------------------------------------------------------

    def launches(self, title: str | None = None) -> list[Call]:
        """Launch calls that started a scan (optionally only those with this title)."""
        return [
            c
            for c in self.calls
            if c.action == "launch"
            and c.status == 200
            and (title is None or c.params.get("scan_title") == title)
        ]

    def refused(self, code: str) -> list[Call]:
        return [c for c in self.calls if c.code == code]

    def in_subscription(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        if ip.version == 6 and not self.ipv6:
            return False
        if address in self.added:
            return True
        if self.subscription is None:
            return True
        for spec in self.subscription:
            with contextlib.suppress(ValueError):
                if address in expand(spec):
                    return True
        return False

    def state_of(self, scan: SimScan) -> str:
        if scan.canceled:
            return "Canceled"
        elapsed = time.monotonic() - scan.started
        if elapsed < self.queued_seconds:
            return "Queued"
        if elapsed < self.queued_seconds + self.running_seconds:
            return "Running"
        return scan.end_state

    # --- the handler ---------------------------------------------------------------

    async def handle(
        self, method: str, path: str, headers: Mapping[str, str], params: dict[str, str]
    ) -> Reply:
        api = path if path.endswith("/") else path + "/"
        action = params.get("action", "")
        logged = {k: v for k, v in params.items()}
        reply = await self._handle(method, api, headers, params)
        code = ""
        if reply.body.startswith("<?xml") and "<CODE>" in reply.body:
            code = reply.body.split("<CODE>", 1)[1].split("</CODE>", 1)[0]
        self.calls.append(Call(time.time(), api, action, logged, reply.status, code))
        return reply

    async def _handle(
        self, method: str, api: str, headers: Mapping[str, str], params: dict[str, str]
    ) -> Reply:
        if api not in APIS:
            return Reply(404, "<html><body>Not Found</body></html>", content_type="text/html")
        lowered = {k.lower(): v for k, v in headers.items()}
        if not self._authorized(lowered.get("authorization", "")):
            return Reply(401, simple_return("Bad Login/Password", "2000"))
        if not lowered.get("x-requested-with"):
            return Reply(400, simple_return("Missing required header: X-Requested-With", "1903"))
        sw = self.switches
        if sw.drop > 0:
            sw.drop -= 1
            return Reply(0, drop=True)
        if sw.fail_status:
            status = sw.fail_status.pop(0)
            return Reply(
                status, "<html><body>Service Unavailable</body></html>", content_type="text/html"
            )
        forced = sw.throttle.pop(0) if sw.throttle else ""
        if forced == "1960" or self._running[api] >= self.concurrency_limit:
            return self._too_many(api)
        now = time.monotonic()
        window = self._window[api]
        while window and window[0] <= now - self.rate_window:
            window.popleft()
        if forced == "1965" or len(window) >= self.rate_limit:
            return self._over_rate(api, now, forced=forced == "1965")
        window.append(now)
        self._running[api] += 1
        try:
            if sw.delay:
                await asyncio.sleep(sw.delay)
            status, body, content_type = self._dispatch(method, api, params)
            running = self._running[api]
        finally:
            self._running[api] -= 1
        return Reply(status, body, self._headers(api, running), content_type)

    def _authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return (user, password) == (self.username, self.password)

    def _headers(self, api: str, running: int) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Window-Sec": str(int(self.rate_window)),
            "X-RateLimit-Remaining": str(max(0, self.rate_limit - len(self._window[api]))),
            "X-RateLimit-ToWait-Sec": "0",
            "X-Concurrency-Limit-Limit": str(self.concurrency_limit),
            "X-Concurrency-Limit-Running": str(running),
        }

    def _too_many(self, api: str) -> Reply:
        running = max(self._running[api], 1)
        text = (
            f"This API cannot be run again until {running} currently running API "
            "instance(s) has finished."
        )
        return Reply(
            409,
            simple_return(text, "1960", {"CALLS_TO_FINISH": str(running)}),
            {
                "X-Concurrency-Limit-Limit": str(self.concurrency_limit),
                "X-Concurrency-Limit-Running": str(running),
            },
        )

    def _over_rate(self, api: str, now: float, *, forced: bool) -> Reply:
        window = self._window[api]
        if forced or not window:
            wait = self.switches.throttle_wait
        else:
            wait = max(1, int(window[0] + self.rate_window - now + 0.999))
        text = f"This API cannot be run again for another {wait} seconds."
        headers = self._headers(api, self._running[api])
        headers["X-RateLimit-Remaining"] = "0"
        headers["X-RateLimit-ToWait-Sec"] = str(wait)
        return Reply(409, simple_return(text, "1965", {"SECONDS_TO_WAIT": str(wait)}), headers)

    def _dispatch(self, method: str, api: str, params: dict[str, str]) -> tuple[int, str, str]:
        action = params.get("action", "")
        handlers = {
            (SCAN_API, "launch"): self._launch,
            (SCAN_API, "list"): self._list,
            (SCAN_API, "fetch"): self._fetch,
            (SCAN_API, "cancel"): self._cancel,
            (ASSET_IP_API, "list"): self._ip_list,
            (ASSET_IP_API, "add"): self._ip_add,
        }
        if not action:
            return 400, simple_return("Missing required parameter: action", "1903"), "text/xml"
        handler = handlers.get((api, action))
        if handler is None:
            text = f"parameter action has invalid value: {action}"
            return 400, simple_return(text, "1905"), "text/xml"
        if method != "POST" and action in ("launch", "cancel", "add"):
            text = f"Wrong HTTP method {method} for action {action}; use POST"
            return 400, simple_return(text, "1908"), "text/xml"
        try:
            return handler(params)
        except _Refusal as refusal:
            return 400, simple_return(refusal.text, refusal.code), "text/xml"

    # --- scan API ------------------------------------------------------------------

    def _launch(self, params: dict[str, str]) -> tuple[int, str, str]:
        title = params.get("scan_title", "")
        if len(title) > 2000:
            raise _Refusal("1905", "parameter scan_title has invalid value: longer than 2000")
        option = self._option(params)
        scanner = params.get("iscanner_name", "")
        if scanner and scanner not in self.scanners:
            raise _Refusal("1905", f"parameter iscanner_name has invalid value: {scanner}")
        priority_text = params.get("priority", "0")
        if not priority_text.isdigit() or int(priority_text) > 9:
            raise _Refusal("1905", f"parameter priority has invalid value: {priority_text}")
        spec = params.get("ip", "")
        if not spec.strip():
            raise _Refusal("1903", "Missing required parameter: ip (or asset_groups)")
        try:
            targets = expand(spec)
        except ValueError as exc:
            raise _Refusal("1905", f"parameter ip has invalid value: {exc}") from None
        v6 = [a for a in targets if ipaddress.ip_address(a).version == 6 and not self.ipv6]
        outside = [a for a in targets if a not in v6 and not self.in_subscription(a)]
        if v6:
            raise _Refusal(
                "1905",
                f"parameter ip has invalid value: {', '.join(v6)} (IPv6 scanning is not "
                "enabled for this subscription)",
            )
        if outside:
            raise _Refusal(
                "1905",
                f"parameter ip has invalid value: {', '.join(outside)} (not in the subscription)",
            )
        self._next_id += 1
        now = datetime.now(UTC)
        ref = f"scan/{int(now.timestamp())}.{self._next_id:05d}"
        self.scans[ref] = SimScan(
            id=self._next_id,
            ref=ref,
            title=title,
            targets=targets,
            target_text=spec,
            user=self.username,
            option=option,
            scanner=scanner or "External",
            priority=int(priority_text),
            started=time.monotonic(),
            launched=now,
            end_state=self.switches.end_scans_in,
        )
        items = {"ID": str(self._next_id), "REFERENCE": ref}
        return 200, simple_return("New vm scan launched", items=items), "text/xml"

    def _option(self, params: dict[str, str]) -> str:
        by_id, by_title = params.get("option_id"), params.get("option_title")
        if by_id and by_title:
            raise _Refusal("1904", "parameters option_id and option_title are mutually exclusive")
        if not by_id and not by_title:
            raise _Refusal("1903", "Missing required parameter: option_id or option_title")
        if by_id:
            if not by_id.isdigit() or int(by_id) not in self.option_profiles:
                raise _Refusal("1905", f"parameter option_id has invalid value: {by_id}")
            return self.option_profiles[int(by_id)]
        if by_title not in self.option_profiles.values():
            raise _Refusal("1905", f"parameter option_title has invalid value: {by_title}")
        return str(by_title)

    def _list(self, params: dict[str, str]) -> tuple[int, str, str]:
        scans = list(self.scans.values())
        if params.get("scan_ref"):
            scans = [s for s in scans if s.ref == params["scan_ref"]]
        if params.get("state"):
            wanted = {s.strip() for s in params["state"].split(",")}
            scans = [s for s in scans if self.state_of(s) in wanted]
        try:
            if params.get("launched_after_datetime"):
                after = _qualys_time(params["launched_after_datetime"])
                scans = [s for s in scans if s.launched >= after]
            if params.get("launched_before_datetime"):
                before = _qualys_time(params["launched_before_datetime"])
                scans = [s for s in scans if s.launched <= before]
        except ValueError:
            raise _Refusal("1905", "parameter launched_after_datetime has invalid value") from None
        if params.get("type") and params["type"] != "API":
            scans = []
        if params.get("user_login"):
            scans = [s for s in scans if s.user == params["user_login"]]
        show_status = params.get("show_status", "1") != "0"
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        out = [
            '<?xml version="1.0" encoding="UTF-8" ?>',
            "<!DOCTYPE SCAN_LIST_OUTPUT SYSTEM "
            '"https://qualysapi.qualys.com/api/2.0/fo/scan/scan_list_output.dtd">',
            f"<SCAN_LIST_OUTPUT><RESPONSE><DATETIME>{now}</DATETIME>",
        ]
        if scans:
            out.append("<SCAN_LIST>")
            for s in sorted(scans, key=lambda s: s.launched, reverse=True):
                state = self.state_of(s)
                sub = (
                    "<SUB_STATE>No_Vuln</SUB_STATE>"
                    if state == "Finished" and not any(self._findings(a) for a in s.targets)
                    else ""
                )
                status = f"<STATUS><STATE>{state}</STATE>{sub}</STATUS>" if show_status else ""
                duration = (
                    "Pending"
                    if state in ("Queued", "Running")
                    else f"00:00:{int(self.queued_seconds + self.running_seconds):02d}"
                )
                out.append(
                    f"<SCAN><REF>{s.ref}</REF><TYPE>API</TYPE><TITLE>{_cdata(s.title)}</TITLE>"
                    f"<USER_LOGIN>{escape(s.user)}</USER_LOGIN>"
                    f"<LAUNCH_DATETIME>{s.launched.strftime('%Y-%m-%dT%H:%M:%SZ')}"
                    f"</LAUNCH_DATETIME><DURATION>{duration}</DURATION>"
                    f"<PROCESSING_PRIORITY>{s.priority} - "
                    f"{'No Priority' if s.priority == 0 else 'Priority'}</PROCESSING_PRIORITY>"
                    f"<PROCESSED>{1 if state == 'Finished' else 0}</PROCESSED>{status}"
                    f"<TARGET>{_cdata(s.target_text)}</TARGET>"
                    f"<OPTION_PROFILE><TITLE>{_cdata(s.option)}</TITLE>"
                    "<DEFAULT_FLAG>0</DEFAULT_FLAG></OPTION_PROFILE></SCAN>"
                )
            out.append("</SCAN_LIST>")
        out.append("</RESPONSE></SCAN_LIST_OUTPUT>")
        return 200, "\n".join(out), "text/xml"

    def _fetch(self, params: dict[str, str]) -> tuple[int, str, str]:
        scan = self.scans.get(params.get("scan_ref", ""))
        if scan is None:
            raise _Refusal(
                "1905", f"parameter scan_ref has invalid value: {params.get('scan_ref')}"
            )
        state = self.state_of(scan)
        if state != "Finished":
            raise _Refusal("1905", f"Scan results are not available: the scan is {state}")
        if params.get("output_format", "csv") not in ("json", "json_extended"):
            raise _Refusal("1905", "parameter output_format: the simulator answers json only")
        return 200, json.dumps(self._results(scan)), "application/json"

    def _cancel(self, params: dict[str, str]) -> tuple[int, str, str]:
        scan = self.scans.get(params.get("scan_ref", ""))
        if scan is None:
            raise _Refusal(
                "1905", f"parameter scan_ref has invalid value: {params.get('scan_ref')}"
            )
        scan.canceled = True
        return 200, simple_return("Scan canceled"), "text/xml"

    # --- asset IP API ----------------------------------------------------------------

    def _ip_list(self, params: dict[str, str]) -> tuple[int, str, str]:
        if params.get("ips"):
            try:
                asked = expand(params["ips"])
            except ValueError as exc:
                raise _Refusal("1905", f"parameter ips has invalid value: {exc}") from None
            held = [a for a in asked if self.in_subscription(a)]
        else:
            held = list(self.subscription or []) + self.added
        out = ['<?xml version="1.0" encoding="UTF-8" ?>', "<IP_LIST_OUTPUT><RESPONSE>"]
        if held:
            out.append("<IP_SET>")
            for entry in held:
                tag = "IP_RANGE" if ("-" in entry or "/" in entry) else "IP"
                out.append(f"<{tag}>{escape(entry)}</{tag}>")
            out.append("</IP_SET>")
        out.append("</RESPONSE></IP_LIST_OUTPUT>")
        return 200, "\n".join(out), "text/xml"

    def _ip_add(self, params: dict[str, str]) -> tuple[int, str, str]:
        if not params.get("ips"):
            raise _Refusal("1903", "Missing required parameter: ips")
        if params.get("enable_vm") not in ("0", "1") and params.get("enable_pc") not in ("0", "1"):
            raise _Refusal("1903", "Missing required parameter: enable_vm or enable_pc")
        try:
            asked = expand(params["ips"])
        except ValueError as exc:
            raise _Refusal("1905", f"parameter ips has invalid value: {exc}") from None
        v6 = [a for a in asked if ipaddress.ip_address(a).version == 6 and not self.ipv6]
        if v6:
            raise _Refusal(
                "1905",
                f"parameter ips has invalid value: {', '.join(v6)} (IPv6 addresses need the "
                "IPv6 option of the subscription and an IPv4 mapping)",
            )
        self.added += [a for a in asked if a not in self.added]
        return 200, simple_return("IPs successfully added to Vulnerability Management"), "text/xml"

    # --- results ---------------------------------------------------------------------

    def services_of(self, address: str) -> list[tuple[str, int]]:
        if address in self.services:
            return list(self.services[address])
        picked = [("tcp", 22)]
        seed = _digest(address)
        for i, extra in enumerate(EXTRA_SERVICES):
            if (seed >> i) & 1 and len(picked) < 3:
                picked.append(extra)
        return picked

    def _findings(self, address: str) -> list[tuple[str, int]]:
        """The services of `address` that carry a vulnerability."""
        return [s for s in self.services_of(address) if _digest(address, *s) % 2 == 0]

    def _results(self, scan: SimScan) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = [
            {
                "username": scan.user,
                "company": "osel Qualys simulator",
                "scan_report_template_title": "Scan Results",
                "result_date": datetime.now(UTC).strftime("%m/%d/%Y %H:%M:%S"),
                "role": "Manager",
            },
            {
                "status": "Finished",
                "reference": scan.ref,
                "scan_title": scan.title,
                "ips": scan.target_text,
                "launch_date": scan.launched.strftime("%m/%d/%Y %H:%M:%S"),
                "option_profile": scan.option,
                "scanner_appliance": scan.scanner,
                "type": "API",
                "active_hosts": str(len(scan.targets)),
                "total_hosts": str(len(scan.targets)),
                "network": "Global Default Network",
                "duration": f"00:00:{int(self.queued_seconds + self.running_seconds):02d}",
                "excluded_ips": "",
                "asset_groups": None,
            },
        ]
        for address in scan.targets:
            services = self.services_of(address)
            vulnerable = self._findings(address)
            status = "host scanned, found vuln" if vulnerable else "host scanned, no vulns"
            base = {"ip": address, "dns": "", "netbios": "", "os": "Linux 5.x", "ip_status": status}
            for protocol, table_qid in (("tcp", 82023), ("udp", 82004)):
                lines = [
                    "\t".join([str(port), *[_name(protocol, port)] * 3])
                    for p, port in services
                    if p == protocol
                ]
                if lines:
                    table = "Port\tIANA Assigned Ports/Services\tDescription\tService Detected\n"
                    rows.append(
                        {
                            **base,
                            "qid": table_qid,
                            "title": f"Open {protocol.upper()} Services List",
                            "type": "Ig",
                            "severity": "1",
                            "port": "",
                            "protocol": "",
                            "results": table + "\n".join(lines),
                            "category": "TCP/IP" if protocol == "tcp" else "UDP/IP",
                        }
                    )
            for protocol, port in services:
                name, info, vuln, severity = CATALOGUE.get(
                    (protocol, port), (f"port{port}", "Service Detected", "Service Exposed", 2)
                )
                qid = BASE_QID.get((protocol, port), 99000 + port)
                row = {**base, "protocol": protocol, "port": str(port), "ssl": "no"}
                rows.append(
                    {
                        **row,
                        "qid": qid,
                        "title": info,
                        "type": "Ig",
                        "severity": "1",
                        "results": f"{name} detected on {protocol}/{port}",
                        "category": "Information",
                    }
                )
                if (protocol, port) in vulnerable:
                    rows.append(
                        {
                            **row,
                            "qid": qid + 1,
                            "title": vuln,
                            "type": "Vuln",
                            "severity": str(severity),
                            "results": f"{name}: {vuln}",
                            "solution": "Restrict access or fix the configuration.",
                            "category": "General remote services",
                        }
                    )
        return rows

    # --- the HTTP faces ------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/_sim/state", self._state)
        app.router.add_post("/_sim/switches", self._set_switches)
        app.router.add_route("*", "/{tail:.*}", self._aiohttp)
        return app

    async def _aiohttp(self, request: web.Request) -> web.StreamResponse:
        params = dict(request.query)
        if request.method == "POST":
            params.update({k: str(v) for k, v in (await request.post()).items()})
        reply = await self.handle(request.method, request.path, dict(request.headers), params)
        if reply.drop:
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("the simulator dropped the connection")
        return web.Response(
            status=reply.status,
            text=reply.body,
            headers=dict(reply.headers),
            content_type=reply.content_type,
        )

    async def _state(self, _request: web.Request) -> web.Response:
        scans = [
            {"ref": s.ref, "title": s.title, "state": self.state_of(s), "targets": s.targets}
            for s in self.scans.values()
        ]
        calls = [asdict(c) for c in self.calls[-200:]]
        return web.json_response(
            {"scans": scans, "calls": calls, "switches": asdict(self.switches), "added": self.added}
        )

    async def _set_switches(self, request: web.Request) -> web.Response:
        data = await request.json()
        if "password" in data:
            self.password = str(data.pop("password"))
        for key, value in data.items():
            if not hasattr(self.switches, key):
                return web.json_response({"error": f"unknown switch {key}"}, status=400)
            setattr(self.switches, key, value)
        return web.json_response(asdict(self.switches))

    def transport(self) -> httpx.MockTransport:
        """An httpx transport that answers from this simulator without a socket."""

        async def handler(request: httpx.Request) -> httpx.Response:
            params = dict(request.url.params)
            body = (await request.aread()).decode()
            params.update(dict(parse_qsl(body, keep_blank_values=True)))
            reply = await self.handle(
                request.method, request.url.path, dict(request.headers), params
            )
            if reply.drop:
                raise httpx.ReadError("the simulator dropped the connection", request=request)
            return httpx.Response(
                reply.status,
                text=reply.body,
                headers={**reply.headers, "Content-Type": reply.content_type},
            )

        return httpx.MockTransport(handler)


class _Refusal(Exception):
    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def _name(protocol: str, port: int) -> str:
    entry = CATALOGUE.get((protocol, port))
    return entry[0] if entry else "unknown"


# --------------------------------------------------------------------------- running it


async def start(
    sim: QualysSimulator, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Serve `sim` on host:port (0: a free port); returns the runner and the base URL."""
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    return runner, f"http://{host}:{bound[1]}"


@contextlib.contextmanager
def serve_in_thread(sim: QualysSimulator, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `sim` from a thread of its own (for synchronous tests); yields the URL."""
    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        ready["runner"], ready["url"] = loop.run_until_complete(start(sim, host))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="qualys-simulator", daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the Qualys simulator did not start")
    try:
        yield str(ready["url"])
    finally:
        asyncio.run_coroutine_threadsafe(ready["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.qualys",
        description="A Qualys VM API v2 simulator (not Qualys) for trying osel.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9443)
    parser.add_argument("--username", default="osel")
    parser.add_argument("--password", default="osel-secret")
    parser.add_argument(
        "--subscription",
        action="append",
        metavar="CIDR|RANGE|IP",
        help="addresses the subscription holds (repeat; default: every IPv4)",
    )
    parser.add_argument("--ipv6", action="store_true", help="the subscription has IPv6")
    parser.add_argument("--scanner", action="append", default=None, help="appliance names")
    parser.add_argument("--rate-limit", type=int, default=300)
    parser.add_argument("--rate-window", type=float, default=3600.0)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--queued-seconds", type=float, default=5.0)
    parser.add_argument("--running-seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    sim = QualysSimulator(
        username=args.username,
        password=args.password,
        subscription=args.subscription,
        ipv6=args.ipv6,
        scanners=tuple(args.scanner or ("scanner1",)),
        rate_limit=args.rate_limit,
        rate_window=args.rate_window,
        concurrency_limit=args.concurrency,
        queued_seconds=args.queued_seconds,
        running_seconds=args.running_seconds,
    )

    async def serve() -> None:
        runner, url = await start(sim, args.host, args.port)
        print(
            f"Qualys API simulator (not Qualys) on {url}: user {args.username!r}, "
            f"{args.rate_limit} calls per {args.rate_window:g}s per API, concurrency "
            f"{args.concurrency}; switches: POST {url}/_sim/switches, state: GET {url}/_sim/state",
            flush=True,
        )
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
