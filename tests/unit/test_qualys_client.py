"""The Qualys API client: request shape, XML read by key, limits and errors."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from osel.backoff import BackoffPolicy
from osel.config import QualysSettings
from osel.qualys.budget import Budget
from osel.qualys.client import (
    ASSET_IP_API,
    SCAN_API,
    QualysClient,
    QualysRejected,
    compact,
    in_ranges,
    parse_ip_list,
    parse_scan_list,
    parse_simple_return,
    summarise,
)
from osel.scan_backend import AuthFailed, Throttled, Unavailable
from osel.store.store import Store
from simulators.qualys import QualysSimulator, simple_return

PASSWORD = "S3cret-Qualys-pw"
FAST = BackoffPolicy(initial=0.05, cap=0.2)


def qualys_settings(**over: Any) -> QualysSettings:
    values: dict[str, Any] = {
        "api_url": "https://qualysapi.example.test",
        "username": "osel",
        "password": PASSWORD,
        "timeout_seconds": 5,
        "poll_seconds": 0.1,
        **over,
    }
    return QualysSettings(**values)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite:///{tmp_path}/osel.db")
    await store.migrate()
    yield store
    await store.close()


Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A transport answering canned responses and keeping every request."""

    def __init__(self, *responses: httpx.Response | Exception) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.responses.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def form(self, i: int = -1) -> dict[str, str]:
        return dict(parse_qsl(self.requests[i].content.decode(), keep_blank_values=True))


def client_for(db: Store, recorder: Recorder, **over: Any) -> QualysClient:
    settings = qualys_settings(**over)
    return QualysClient(
        settings,
        Budget(db, min_remaining=settings.min_remaining),
        backoff=FAST,
        transport=httpx.MockTransport(recorder),
    )


LAUNCHED = simple_return("New vm scan launched", items={"REFERENCE": "scan/1.2", "ID": "77"})


# --------------------------------------------------------------------------- pure parts


def test_ip_parameter_is_compacted_into_ranges():
    text = compact(["10.0.0.3", "10.0.0.1", "10.0.0.2", "10.0.0.7", "2001:db8::1", "10.0.0.2"])
    assert text == "10.0.0.1-10.0.0.3,10.0.0.7,2001:db8::1"
    assert compact(["192.0.2.255", "192.0.3.0"]) == "192.0.2.255-192.0.3.0"
    assert in_ranges("10.0.0.2", ["10.0.0.1-10.0.0.3"])
    assert in_ranges("10.1.2.3", ["10.1.0.0/16"])
    assert not in_ranges("10.0.0.4", ["10.0.0.1-10.0.0.3", "10.0.0.5"])


def test_simple_return_is_read_by_key_not_position():
    result = parse_simple_return(LAUNCHED)
    assert result is not None
    assert result.items == {"REFERENCE": "scan/1.2", "ID": "77"}
    assert result.code == "" and result.text == "New vm scan launched"
    error = parse_simple_return(simple_return("Bad Login/Password", "2000"))
    assert error is not None and error.code == "2000"
    assert parse_simple_return("<html>proxy error</html>") is None


def test_scan_list_is_read_by_element_name():
    xml = """<?xml version="1.0" encoding="UTF-8" ?>
<SCAN_LIST_OUTPUT><RESPONSE><DATETIME>2026-11-28T05:00:00Z</DATETIME><SCAN_LIST>
<SCAN><TITLE><![CDATA[osel abc (2 address(es))]]></TITLE><REF>scan/1.1</REF><TYPE>API</TYPE>
 <STATUS><SUB_STATE>No_Vuln</SUB_STATE><STATE>Finished</STATE></STATUS>
 <LAUNCH_DATETIME>2026-11-28T04:59:00Z</LAUNCH_DATETIME><TARGET><![CDATA[10.0.0.1-10.0.0.2]]></TARGET>
</SCAN>
<SCAN><REF>scan/1.2</REF><STATUS><STATE>Running</STATE></STATUS></SCAN>
</SCAN_LIST></RESPONSE></SCAN_LIST_OUTPUT>"""
    first, second = parse_scan_list(xml)
    assert (first.reference, first.title, first.state, first.sub_state) == (
        "scan/1.1",
        "osel abc (2 address(es))",
        "Finished",
        "No_Vuln",
    )
    assert first.target == "10.0.0.1-10.0.0.2"
    assert (second.reference, second.state, second.title) == ("scan/1.2", "Running", "")
    with pytest.raises(ValueError):
        parse_scan_list(LAUNCHED)
    ips = "<IP_LIST_OUTPUT><RESPONSE><IP_SET><IP>10.0.0.1</IP><IP_RANGE>10.0.0.5-10.0.0.9</IP_RANGE></IP_SET></RESPONSE></IP_LIST_OUTPUT>"  # noqa: E501
    assert parse_ip_list(ips) == ["10.0.0.1", "10.0.0.5-10.0.0.9"]


def test_results_are_summarised_per_address_and_port():
    rows = [
        {"username": "u", "role": "Manager"},
        {"status": "Finished", "reference": "scan/1.1", "ips": "198.51.100.7"},
        {
            "ip": "198.51.100.7",
            "ip_status": "host scanned, found vuln",
            "qid": 82023,
            "type": "Ig",
            "severity": "1",
            "port": "",
            "protocol": "",
            "results": "Port\tIANA Assigned Ports/Services\tDescription\tService Detected\n"
            "22\tssh\tSSH Remote Login Protocol\tssh\n443\thttps\thttp protocol over TLS\thttps",
        },
        {
            "ip": "198.51.100.7",
            "qid": 38050,
            "type": "Ig",
            "severity": "1",
            "port": "22",
            "protocol": "tcp",
        },
        {
            "ip": "198.51.100.7",
            "qid": 38739,
            "type": "Vuln",
            "severity": "3",
            "port": "22",
            "protocol": "tcp",
        },
        {
            "ip": "198.51.100.7",
            "qid": 38740,
            "type": "Vuln",
            "severity": "2",
            "port": "22",
            "protocol": "tcp",
        },
        {
            "ip": "198.51.100.7",
            "qid": 11827,
            "type": "Potential",
            "severity": "4",
            "port": "443",
            "protocol": "tcp",
        },
        {"ip": "198.51.100.8", "ip_status": "host scanned, no vulns"},
    ]
    hosts = summarise(rows)
    host = hosts["198.51.100.7"]
    assert host["open"] == ["tcp/22", "tcp/443"]
    assert host["services"] == {"tcp/22": "ssh", "tcp/443": "https"}
    assert host["vulnerabilities"] == {"2": 1, "3": 1}
    assert host["potential"] == {"4": 1}
    assert host["ports"] == {
        "tcp/22": {"max_severity": 3, "vulnerabilities": 2, "qids": ["38739", "38740"]}
    }
    assert hosts["198.51.100.8"]["open"] == [] and hosts["198.51.100.8"]["ip_status"]


# --------------------------------------------------------------------------- requests


async def test_launch_sends_what_qualys_expects(db: Store):
    recorder = Recorder(httpx.Response(200, text=LAUNCHED))
    client = client_for(db, recorder, scanner_name="scanner1", priority=3)
    launched = await client.launch("osel b1 (3 address(es))", ["10.0.0.2", "10.0.0.1", "10.0.0.9"])
    await client.close()
    assert (launched.reference, launched.scan_id) == ("scan/1.2", "77")
    request = recorder.requests[0]
    assert request.method == "POST" and request.url.path == SCAN_API
    assert request.headers["X-Requested-With"]
    user, _, password = (
        base64.b64decode(request.headers["Authorization"][6:]).decode().partition(":")
    )
    assert (user, password) == ("osel", PASSWORD)
    assert recorder.form() == {
        "action": "launch",
        "scan_title": "osel b1 (3 address(es))",
        "ip": "10.0.0.1-10.0.0.2,10.0.0.9",
        "priority": "3",
        "option_title": "Initial Options",
        "iscanner_name": "scanner1",
    }


async def test_option_id_replaces_the_title_and_no_scanner_means_external(db: Store):
    recorder = Recorder(httpx.Response(200, text=LAUNCHED))
    client = client_for(db, recorder, option_id=42)
    await client.launch("t", ["192.0.2.1"])
    await client.close()
    form = recorder.form()
    assert form["option_id"] == "42"
    assert "option_title" not in form and "iscanner_name" not in form


async def test_limit_headers_feed_the_shared_budget(db: Store):
    headers = {
        "X-RateLimit-Limit": "10",
        "X-RateLimit-Window-Sec": "3600",
        "X-RateLimit-Remaining": "3",
        "X-RateLimit-ToWait-Sec": "0",
        "X-Concurrency-Limit-Limit": "2",
        "X-Concurrency-Limit-Running": "1",
    }
    recorder = Recorder(httpx.Response(200, text=LAUNCHED, headers=headers))
    client = client_for(db, recorder, min_remaining=3)
    await client.launch("t", ["192.0.2.1"])
    assert await Budget(db, min_remaining=1).wait(SCAN_API) == 0  # with 1, a poll may go
    (seen,) = await client.budget.snapshot()
    assert (seen["api"], seen["remaining"], seen["rate_limit"], seen["concurrency_limit"]) == (
        SCAN_API,
        3,
        10,
        2,
    )
    # three calls left and min_remaining 3: no launch, no poll (it keeps twice that)
    assert await client.budget.wait(SCAN_API, launch=True) > 0
    assert await client.budget.wait(SCAN_API) > 0
    with pytest.raises(Throttled) as caught:
        await client.launch("t2", ["192.0.2.2"])
    assert "min_remaining" in caught.value.reason
    assert len(recorder.requests) == 1  # the refused launch never left osel
    await client.close()


def _reason(exc: pytest.ExceptionInfo[Any]) -> str:
    return str(exc.value)


async def test_409_codes_are_throttling_with_the_wait_qualys_asks(db: Store):
    rate = httpx.Response(
        409,
        text=simple_return(
            "This API cannot be run again for another 7 seconds.", "1965", {"SECONDS_TO_WAIT": "7"}
        ),
        headers={
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-ToWait-Sec": "7",
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Window-Sec": "60",
        },
    )
    concurrency = httpx.Response(
        409,
        text=simple_return(
            "This API cannot be run again until 2 currently running API instance(s) has finished.",
            "1960",
            {"CALLS_TO_FINISH": "2"},
        ),
        headers={"X-Concurrency-Limit-Limit": "2", "X-Concurrency-Limit-Running": "2"},
    )
    recorder = Recorder(rate)
    client = client_for(db, recorder)
    with pytest.raises(Throttled) as caught:
        await client.list_scans(scan_ref="scan/1.1")
    assert caught.value.wait == 7 and "rate limit" in caught.value.reason
    assert 6 < await client.budget.wait(SCAN_API) <= 7  # every instance waits now
    await client.close()

    recorder = Recorder(concurrency)
    other = client_for(db, recorder)
    with pytest.raises(Throttled) as caught:
        await other.list_ips(["192.0.2.1"])
    assert caught.value.wait >= 1 and "concurrency" in caught.value.reason
    assert recorder.requests[0].url.path == ASSET_IP_API
    await other.close()


@pytest.mark.parametrize(
    ("answer", "problem", "words"),
    [
        (
            httpx.Response(401, text=simple_return("Bad Login/Password", "2000")),
            AuthFailed,
            "qualys.password",
        ),
        (httpx.Response(403, text="Forbidden"), AuthFailed, "rights"),
        (
            httpx.Response(
                409,
                text=simple_return(
                    "Registration must be completed before API requests will be processed.", "2003"
                ),
            ),
            AuthFailed,
            "Registration",
        ),
        (httpx.Response(503, text="<html>maintenance</html>"), Unavailable, "HTTP 503"),
        (
            httpx.Response(
                400, text=simple_return("parameter option_title has invalid value: Nope", "1905")
            ),
            QualysRejected,
            "option_title",
        ),
        (
            httpx.Response(200, text=simple_return("New vm scan launched")),
            Unavailable,
            "without a scan REFERENCE",
        ),
        (httpx.ConnectError("connection refused"), Unavailable, "cannot reach"),
        (httpx.ReadTimeout("timed out"), Unavailable, "no answer"),
    ],
)
async def test_failures_become_clear_problems_without_secrets(db: Store, answer, problem, words):
    recorder = Recorder(answer)
    client = client_for(db, recorder, proxy_url=None)
    with pytest.raises(problem) as caught:
        await client.launch("t", ["192.0.2.1"])
    await client.close()
    assert words in caught.value.reason
    assert PASSWORD not in caught.value.reason and PASSWORD not in repr(caught.value)
    if isinstance(caught.value, Unavailable):
        # no connection could be made: the launch certainly did not happen
        assert caught.value.maybe_done is not isinstance(answer, httpx.ConnectError)
    if isinstance(caught.value, QualysRejected):
        assert (caught.value.code, caught.value.parameter) == ("1905", "option_title")


async def test_the_simulator_speaks_the_same_protocol(db: Store):
    sim = QualysSimulator(
        password=PASSWORD,
        queued_seconds=0,
        running_seconds=0,
        services={"198.51.100.7": [("tcp", 22), ("tcp", 5432)]},
    )
    settings = qualys_settings()
    client = QualysClient(
        settings, Budget(db, min_remaining=5), backoff=FAST, transport=sim.transport()
    )
    launched = await client.launch("osel t (1 address(es))", ["198.51.100.7"])
    (info,) = await client.list_scans(scan_ref=launched.reference)
    assert (info.title, info.state) == ("osel t (1 address(es))", "Finished")
    hosts = summarise(await client.fetch(launched.reference))
    assert hosts["198.51.100.7"]["open"] == ["tcp/22", "tcp/5432"]
    assert await client.list_ips(["198.51.100.7", "2001:db8::5"]) == {"198.51.100.7"}
    (seen,) = [b for b in await client.budget.snapshot() if b["api"] == SCAN_API]
    assert seen["remaining"] == 300 - 3 and seen["rate_limit"] == 300
    await client.close()
