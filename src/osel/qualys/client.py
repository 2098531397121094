"""The Qualys VM API v2 client (`/api/2.0/fo/...`).

One shared `httpx.AsyncClient` (HTTP Basic, `X-Requested-With`, form-encoded
POSTs), a timeout on every call, one call at a time per instance (Qualys
counts concurrent calls per subscription), every call counted in the shared
`Budget` before it is made and every answer's limit headers kept there.

Answers are XML read by element name and by ITEM KEY, never by position.
Failures become the scheduler's `ScanProblem`s:

- 409 (or 400) with CODE 1920/1960/1965: `Throttled`, with the wait Qualys
  asks for (`X-RateLimit-ToWait-Sec`, `SECONDS_TO_WAIT`) or a backoff delay
  for the concurrency limit; the wait is written to the budget for everyone;
- 401, 403 and the 20xx account codes: `AuthFailed`;
- 5xx, timeouts, network errors: `Unavailable` (`maybe_done` unless the
  request never left: no connection could be made);
- any other refusal: `QualysRejected` (code, text, the parameter it names).

No secret (password, proxy credentials) appears in any message.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import ssl
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

import httpx

from osel import __version__
from osel.backoff import BackoffPolicy, describe_error
from osel.config import MASK, QualysSettings, mask_url
from osel.qualys.budget import Budget, Limits, Ticket
from osel.scan_backend import AuthFailed, Rejected, Throttled, Unavailable

SCAN_API = "/api/2.0/fo/scan/"
ASSET_IP_API = "/api/2.0/fo/asset/ip/"
THROTTLE_CODES = frozenset({"1920", "1960", "1965"})
VULN_TYPES = frozenset({"vuln", "confirmed"})
POTENTIAL_TYPES = frozenset({"potential", "practice"})
OPEN_SERVICES_QIDS = {"82023": "tcp", "82004": "udp"}  # "Open TCP/UDP Services List"
_PARAMETER_RE = re.compile(r"parameter\s+([A-Za-z_]+)", re.I)


class QualysRejected(Rejected):
    """Qualys refused a request for good: its CODE, TEXT and the parameter it names."""

    def __init__(self, reason: str, *, code: str = "", text: str = "", status: int = 0) -> None:
        super().__init__(reason)
        self.code = code
        self.text = text
        self.status = status
        found = _PARAMETER_RE.search(text)
        self.parameter = found.group(1).lower() if found else ""


@dataclass(frozen=True, slots=True)
class SimpleReturn:
    code: str = ""
    text: str = ""
    items: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Launched:
    scan_id: str
    reference: str


@dataclass(frozen=True, slots=True)
class ScanInfo:
    reference: str
    title: str
    state: str
    sub_state: str = ""
    target: str = ""
    launched_at: str = ""
    type: str = ""


# --------------------------------------------------------------------------- pure helpers


def compact(addresses: Iterable[str]) -> str:
    """`ip=` text: sorted, deduplicated, runs of consecutive IPv4 addresses as ranges."""
    parsed = sorted({ipaddress.ip_address(a) for a in addresses}, key=lambda a: (a.version, int(a)))
    parts: list[str] = []
    run: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []

    def flush() -> None:
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
            run.clear()

    for address in parsed:
        if run and address.version == 4 == run[-1].version and int(address) == int(run[-1]) + 1:
            run.append(address)
            continue
        flush()
        run.append(address)
    flush()
    return ",".join(parts)


def in_ranges(address: str, specs: Iterable[str]) -> bool:
    """Whether `address` is one of `specs` (addresses, `a-b` ranges, CIDRs)."""
    ip = ipaddress.ip_address(address)
    for spec in specs:
        spec = spec.strip()
        try:
            if "-" in spec:
                low, high = (ipaddress.ip_address(s.strip()) for s in spec.split("-", 1))
                if low.version == ip.version and int(low) <= int(ip) <= int(high):
                    return True
            elif "/" in spec:
                if ip in ipaddress.ip_network(spec, strict=False):
                    return True
            elif ipaddress.ip_address(spec) == ip:
                return True
        except ValueError:
            continue
    return False


def _text(element: ET.Element | None, path: str) -> str:
    if element is None:
        return ""
    found = element.find(path)
    return (found.text or "").strip() if found is not None else ""


def _xml(text: str) -> ET.Element | None:
    try:
        return ET.fromstring(text)
    except ET.ParseError:
        return None


def parse_simple_return(text: str) -> SimpleReturn | None:
    """SIMPLE_RETURN/RESPONSE/{CODE?, TEXT, ITEM_LIST/ITEM/{KEY, VALUE}}; None otherwise."""
    root = _xml(text)
    if root is None or root.tag != "SIMPLE_RETURN":
        return None
    response = root.find("RESPONSE")
    items: dict[str, str] = {}
    for item in root.iterfind("RESPONSE/ITEM_LIST/ITEM"):
        key = _text(item, "KEY")
        if key:
            items[key.upper()] = _text(item, "VALUE")
    return SimpleReturn(_text(response, "CODE"), _text(response, "TEXT"), items)


def parse_scan_list(text: str) -> list[ScanInfo]:
    """SCAN_LIST_OUTPUT/RESPONSE/SCAN_LIST/SCAN -> ScanInfo, by element name."""
    root = _xml(text)
    if root is None or root.tag != "SCAN_LIST_OUTPUT":
        raise ValueError("not a SCAN_LIST_OUTPUT document")
    return [
        ScanInfo(
            reference=_text(scan, "REF"),
            title=_text(scan, "TITLE"),
            state=_text(scan, "STATUS/STATE"),
            sub_state=_text(scan, "STATUS/SUB_STATE"),
            target=_text(scan, "TARGET"),
            launched_at=_text(scan, "LAUNCH_DATETIME"),
            type=_text(scan, "TYPE"),
        )
        for scan in root.iterfind("RESPONSE/SCAN_LIST/SCAN")
    ]


def parse_ip_list(text: str) -> list[str]:
    """IP_LIST_OUTPUT/RESPONSE/IP_SET/{IP, IP_RANGE} -> address and range texts."""
    root = _xml(text)
    if root is None or root.tag != "IP_LIST_OUTPUT":
        raise ValueError("not an IP_LIST_OUTPUT document")
    ip_set = root.find("RESPONSE/IP_SET")
    if ip_set is None:
        return []
    return [(e.text or "").strip() for e in ip_set if e.tag in ("IP", "IP_RANGE") and e.text]


def _severity(value: Any) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        return 0


def _service_ports(results: str) -> list[tuple[int, str]]:
    """The (port, service) lines of an open-services table (tab separated)."""
    found = []
    for line in results.replace("\\t", "\t").replace("\\n", "\n").splitlines():
        cells = [c.strip() for c in line.split("\t")]
        if cells and cells[0].isdigit():
            service = (
                cells[3] if len(cells) > 3 and cells[3] else (cells[1] if len(cells) > 1 else "")
            )
            found.append((int(cells[0]), service))
    return found


def summarise(rows: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Scan results (`action=fetch`, `output_format=json`) per address: its status, the
    open services, vulnerabilities (confirmed and potential) by severity, and per port."""
    hosts: dict[str, dict[str, Any]] = {}
    for row in rows:
        if not isinstance(row, dict) or not row.get("ip"):
            continue
        host = hosts.setdefault(
            str(row["ip"]),
            {
                "ip_status": "",
                "open": [],
                "services": {},
                "vulnerabilities": {},
                "potential": {},
                "ports": {},
            },
        )
        if row.get("ip_status"):
            host["ip_status"] = str(row["ip_status"])
        if row.get("qid") not in (None, ""):
            _finding(host, row)
    for host in hosts.values():
        host["open"].sort(key=_port_order)
        for name in ("vulnerabilities", "potential"):
            host[name] = dict(sorted(host[name].items()))
    return hosts


def _finding(host: dict[str, Any], row: dict[str, Any]) -> None:
    qid = str(row["qid"])
    protocol = str(row.get("protocol") or "").lower()
    port_text = str(row.get("port") or "").strip()
    key = f"{protocol}/{port_text}" if protocol in ("tcp", "udp") and port_text.isdigit() else ""
    if qid in OPEN_SERVICES_QIDS:
        for port, service in _service_ports(str(row.get("results") or "")):
            _open(host, f"{OPEN_SERVICES_QIDS[qid]}/{port}", service)
    if key:
        _open(host, key, "")
    kind = str(row.get("type") or "").lower()
    if kind not in VULN_TYPES and kind not in POTENTIAL_TYPES:
        return
    severity = _severity(row.get("severity"))
    bucket = host["vulnerabilities"] if kind in VULN_TYPES else host["potential"]
    bucket[str(severity)] = bucket.get(str(severity), 0) + 1
    if key and kind in VULN_TYPES:
        port = host["ports"].setdefault(key, {"max_severity": 0, "vulnerabilities": 0, "qids": []})
        port["vulnerabilities"] += 1
        port["max_severity"] = max(port["max_severity"], severity)
        if qid not in port["qids"]:
            port["qids"].append(qid)


def _open(host: dict[str, Any], key: str, service: str) -> None:
    if key not in host["open"]:
        host["open"].append(key)
    if service and not host["services"].get(key):
        host["services"][key] = service


def _port_order(key: str) -> tuple[str, int]:
    protocol, _, port = key.partition("/")
    return (protocol, int(port) if port.isdigit() else 0)


def qualys_datetime(stamp: datetime) -> str:
    return stamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- the client


class QualysClient:
    def __init__(
        self,
        settings: QualysSettings,
        budget: Budget,
        *,
        backoff: BackoffPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.budget = budget
        self.calls: Counter[tuple[str, str]] = Counter()  # (action, HTTP status) -> calls
        self.backoff = backoff or BackoffPolicy(initial=5.0, cap=120.0)
        self.username = settings.username or ""
        self._secrets = [
            s
            for s in (
                settings.password.get_secret_value() if settings.password else "",
                settings.proxy_url.get_secret_value() if settings.proxy_url else "",
            )
            if len(s) >= 4
        ]
        self.where = mask_url(settings.api_url.rstrip("/"))
        verify: ssl.SSLContext | bool = settings.verify
        if settings.verify and settings.ca_file:
            verify = ssl.create_default_context(cafile=settings.ca_file)
        proxy = settings.proxy_url.get_secret_value() if settings.proxy_url else None
        self.http = httpx.AsyncClient(
            base_url=settings.api_url.rstrip("/"),
            auth=httpx.BasicAuth(
                self.username, settings.password.get_secret_value() if settings.password else ""
            ),
            headers={"X-Requested-With": "osel", "User-Agent": f"osel/{__version__}"},
            timeout=httpx.Timeout(settings.timeout_seconds),
            verify=verify,
            proxy=proxy if transport is None else None,
            transport=transport,
            follow_redirects=False,
        )
        self._one_at_a_time = asyncio.Lock()
        self._concurrency_refusals = 0

    async def close(self) -> None:
        await self.http.aclose()

    # --- the calls -----------------------------------------------------------------

    async def launch(self, title: str, addresses: Sequence[str]) -> Launched:
        s = self.settings
        params = {
            "action": "launch",
            "scan_title": title[:2000],
            "ip": compact(addresses),
            "priority": str(s.priority),
        }
        if s.option_id is not None:
            params["option_id"] = str(s.option_id)
        else:
            params["option_title"] = s.option_title or ""
        if s.scanner_name:
            params["iscanner_name"] = s.scanner_name
        response = await self._call(SCAN_API, params, "launching a scan", launch=True)
        result = parse_simple_return(response.text)
        reference = result.items.get("REFERENCE", "") if result else ""
        if not reference:
            raise Unavailable(
                f"Qualys answered the scan launch at {self.where} without a scan REFERENCE"
            )
        return Launched(result.items.get("ID", "") if result else "", reference)

    async def list_scans(
        self,
        *,
        scan_ref: str | None = None,
        launched_after: datetime | None = None,
        for_launch: bool = False,
    ) -> list[ScanInfo]:
        params = {"action": "list", "show_status": "1"}
        if scan_ref:
            params["scan_ref"] = scan_ref
        if launched_after is not None:
            params["launched_after_datetime"] = qualys_datetime(launched_after)
        response = await self._call(SCAN_API, params, "listing scans", launch=for_launch)
        try:
            return parse_scan_list(response.text)
        except ValueError as exc:
            raise Unavailable(f"Qualys scan list from {self.where} is unreadable: {exc}") from None

    async def fetch(self, scan_ref: str) -> list[Any]:
        params = {
            "action": "fetch",
            "scan_ref": scan_ref,
            "output_format": "json",
            "mode": "extended",
        }
        response = await self._call(SCAN_API, params, f"fetching the results of {scan_ref}")
        try:
            rows = json.loads(response.text or "[]")
        except ValueError:
            raise Unavailable(f"Qualys results of {scan_ref} are not JSON") from None
        if not isinstance(rows, list):
            raise Unavailable(f"Qualys results of {scan_ref} are not a JSON list")
        return rows

    async def list_ips(self, addresses: Sequence[str]) -> set[str]:
        """Which of `addresses` are in the subscription."""
        params = {"action": "list", "ips": compact(addresses)}
        response = await self._call(
            ASSET_IP_API, params, "listing subscription addresses", launch=True
        )
        try:
            specs = parse_ip_list(response.text)
        except ValueError as exc:
            raise Unavailable(f"Qualys address list is unreadable: {exc}") from None
        return {a for a in addresses if in_ranges(a, specs)}

    async def add_ips(self, addresses: Sequence[str]) -> str:
        params = {"action": "add", "ips": compact(addresses), "enable_vm": "1", "enable_pc": "0"}
        response = await self._call(
            ASSET_IP_API, params, "adding addresses to the subscription", launch=True
        )
        result = parse_simple_return(response.text)
        return result.text if result else ""

    # --- one call ------------------------------------------------------------------

    async def _call(
        self, api: str, params: dict[str, str], what: str, *, launch: bool = False
    ) -> httpx.Response:
        ticket = await self.budget.take(api, launch=launch)
        if ticket.wait > 0:
            floor = f" (qualys.min_remaining: {self.settings.min_remaining})" if launch else ""
            raise Throttled(
                f"Qualys API budget for {api} is spent{floor}: {what} waits {ticket.wait:.0f}s",
                ticket.wait,
            )
        action = params.get("action", "")
        async with self._one_at_a_time:
            try:
                response = await self.http.post(api, data=params)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                self.calls[(action, "unreachable")] += 1
                raise Unavailable(
                    self._scrub(f"cannot reach Qualys at {self.where}: {describe_error(exc)}"),
                    maybe_done=False,
                ) from None
            except httpx.TransportError as exc:
                self.calls[(action, "no_answer")] += 1
                raise Unavailable(
                    self._scrub(
                        f"no answer from Qualys at {self.where} while {what}: {describe_error(exc)}"
                    )
                ) from None
        self.calls[(action, str(response.status_code))] += 1
        limits = Limits.from_headers(response.headers)
        await self.budget.observe(api, limits)
        return await self._check(ticket, response, limits, what)

    async def _check(
        self, ticket: Ticket, response: httpx.Response, limits: Limits, what: str
    ) -> httpx.Response:
        api = ticket.api
        status = response.status_code
        body = response.text
        result = parse_simple_return(body)
        code = result.code if result else ""
        message = self._scrub((result.text if result else "") or _short(body))
        said = (
            f"HTTP {status}"
            + (f", code {code}" if code else "")
            + (f": {message}" if message else "")
        )
        if code in THROTTLE_CODES:
            await self.budget.refund(ticket)
            await self._throttled(api, code, limits, result, said, what)
        self._concurrency_refusals = 0
        if status == 401 or (code.startswith("20") and len(code) == 4):
            raise AuthFailed(
                f"Qualys at {self.where} refuses the login of qualys.username "
                f"{self.username!r} ({said}); check qualys.username and qualys.password "
                "(or qualys.password_file)"
            )
        if status == 403:
            raise AuthFailed(
                f"Qualys at {self.where} does not let qualys.username {self.username!r} "
                f"do this ({what}: {said}); the user needs API access and the rights to "
                "launch scans on these addresses (Manager, or Unit Manager/Scanner with them)"
            )
        if status >= 500:
            raise Unavailable(f"Qualys at {self.where} failed while {what} ({said})")
        if status >= 400 or (result is not None and code):
            raise QualysRejected(
                f"Qualys refused {what} ({said})", code=code, text=message, status=status
            )
        if 300 <= status < 400:
            raise QualysRejected(
                f"Qualys at {self.where} redirects ({said}); check qualys.api_url "
                "(the API server of your Qualys platform)",
                status=status,
            )
        return response

    async def _throttled(
        self,
        api: str,
        code: str,
        limits: Limits,
        result: SimpleReturn | None,
        said: str,
        what: str,
    ) -> NoReturn:
        items = result.items if result else {}
        if code == "1965":
            wait = float(limits.to_wait or _int(items.get("SECONDS_TO_WAIT")) or 0)
            if wait <= 0:
                wait = self.backoff.delay(1) + 1
            reason = f"Qualys rate limit reached for {api} ({said}): {what} waits {wait:.1f}s"
        else:
            self._concurrency_refusals += 1
            wait = max(1.0, self.backoff.delay(self._concurrency_refusals))
            reason = (
                f"Qualys concurrency limit reached for {api} ({said}): {what} waits {wait:.0f}s"
            )
        await self.budget.block(api, wait)
        raise Throttled(reason, wait)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _short(body: str, limit: int = 200) -> str:
    text = " ".join(body.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
