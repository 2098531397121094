"""The Splunk HTTP Event Collector sink.

Records go to ``POST <url>/services/collector/event`` with ``Authorization:
Splunk <token>``, several events a request (concatenated JSON objects, each
request at most ``max_batch_bytes``), each event carrying ``time`` (the
change's timestamp), ``host``, ``source``, ``sourcetype`` and ``index`` and the
record, unchanged, as ``event``.

Without ``ack`` a record is delivered when HEC answered the request with
code 0. With ``ack: true`` every request carries this osel instance's channel
GUID (``X-Splunk-Request-Channel``; kept in the store, so it survives
restarts) and a record is delivered only when ``/services/collector/ack``
reported its request's ackId true. Acks may come late and in any order;
`send` polls until every request of the call is acknowledged. The ackIds
waiting and the requests already acknowledged are kept in the store too: a
retry after an error, or a restarted osel, polls them again instead of
sending their records a second time, so a record that HEC acknowledged is
never sent again. A request still unacknowledged after ``ack_timeout`` seconds
is taken as lost and sent again with a new ackId; if HEC had in fact indexed
the first copy (its acknowledgement lost, not its events), Splunk holds that
record twice: de-duplicate on ``record_id``.

Errors: server busy (503, code 9), 429, 5xx and network errors are retried
(`HecUnavailable`, with the outbox's backoff). A bad or disabled token, an
index the token may not write to, ack disabled on the token, a wrong URL or a
request above HEC's size limit raise `PermanentSinkError`: the outbox stops
this sink with one error line and its records wait for a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import httpx

from osel.backoff import describe_error
from osel.config import SplunkHecSink as HecSettings
from osel.outbox import MetaStore, PermanentSinkError
from osel.sinks.syslog import record_time

log = logging.getLogger(__name__)

EVENT_PATH = "/services/collector/event"
ACK_PATH = "/services/collector/ack"
CHANNEL_HEADER = "X-Splunk-Request-Channel"
CONTENT_TYPE = "application/json; charset=utf-8"
_TOKEN_CODES = {1, 2, 3, 4}  # token disabled / required / invalid authorization / invalid


class HecUnavailable(ConnectionError):
    """HEC is busy, failing or unreachable: retried with backoff."""


@dataclass(slots=True)
class Request:
    """One POSTed batch: records ``first``..``last`` (ids), its ackId, when it was sent."""

    first: int
    last: int
    count: int
    ack: int | None = None
    posted_at: float = 0.0  # wall clock (seconds since the epoch): survives restarts
    done: bool = False

    def covers(self, record_id: int) -> bool:
        return self.first <= record_id <= self.last


class HecSink:
    """Delivers audit records to Splunk HEC; with ack, only acknowledged records count."""

    def __init__(
        self,
        *,
        sink_id: str,
        url: str,
        token: str,
        instance: str,
        index: str | None = None,
        sourcetype: str = "osel:audit",
        source: str = "osel",
        host: str | None = None,
        ack: bool = False,
        verify: bool = True,
        ca_file: str | None = None,
        max_batch_bytes: int = 1_000_000,
        timeout: float = 10.0,
        ack_timeout: float = 300.0,
        poll_initial: float = 0.2,
        poll_max: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sink_id = sink_id
        self.url = url.rstrip("/")
        self._token = token
        self.instance = instance
        self.index = index
        self.sourcetype = sourcetype
        self.source = source
        self.host = host or instance
        self.ack = ack
        self.verify = verify
        self.ca_file = ca_file
        self.max_batch_bytes = max_batch_bytes
        self.timeout = timeout
        self.ack_timeout = ack_timeout
        self.poll_initial = poll_initial
        self.poll_max = poll_max
        self.clock = clock
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._meta: MetaStore | None = None
        self.channel: str | None = None
        self.requests: list[Request] = []  # posted and not yet passed by the outbox's cursor
        self._broken: str | None = None
        self.resent_requests = 0

    def __repr__(self) -> str:
        return f"HecSink({self.sink_id!r}, ack={self.ack})"

    @classmethod
    def from_settings(cls, cfg: HecSettings, *, instance: str) -> HecSink:
        """The sink for one ``audit.sinks`` entry of type splunk_hec."""
        assert cfg.token is not None  # the settings model requires it
        return cls(
            sink_id=cfg.sink_id,
            url=cfg.url,
            token=cfg.token.get_secret_value(),
            instance=instance,
            index=cfg.index,
            sourcetype=cfg.sourcetype,
            source=cfg.source,
            host=cfg.host,
            ack=cfg.ack,
            verify=cfg.verify,
            ca_file=cfg.ca_file,
            max_batch_bytes=cfg.max_batch_bytes,
            timeout=cfg.timeout_seconds,
        )

    # --- state kept in the store ------------------------------------------

    @property
    def _state_key(self) -> str:
        return f"hec_pending:{self.instance}:{self.sink_id}"

    async def attach(self, meta: MetaStore) -> None:
        """Load this instance's channel GUID (made once) and the requests awaiting acks."""
        self._meta = meta
        key = f"hec_channel:{self.instance}"
        channel = await meta.get_meta(key)
        if not channel:
            channel = str(uuid.uuid4())
            await meta.set_meta(key, channel)
        self.channel = channel
        saved = await meta.get_meta(self._state_key)
        if saved:
            try:
                self.requests = [Request(**r) for r in json.loads(saved)]
            except (ValueError, TypeError) as exc:
                log.warning("audit sink %s: ignoring unreadable saved ack state: %s",
                            self.sink_id, exc)  # fmt: skip
                self.requests = []

    async def _save(self) -> None:
        if self._meta is not None and self.ack:
            kept = [asdict(r) for r in self.requests if r.ack is not None or r.done]
            await self._meta.set_meta(self._state_key, json.dumps(kept))

    # --- events --------------------------------------------------------------

    def event(self, body: str) -> str:
        """The HEC event for one stored record: metadata plus the record as ``event``."""
        try:
            record = json.loads(body)
        except ValueError:
            record = None
        when = record_time(record if isinstance(record, dict) else {}, lambda: datetime.now(UTC))
        meta: dict[str, Any] = {
            "time": round(when.timestamp(), 3),
            "host": self.host,
            "source": self.source,
            "sourcetype": self.sourcetype,
        }
        if self.index:
            meta["index"] = self.index
        return json.dumps(meta)[:-1] + ', "event": ' + body + "}"

    def batches(self, records: list[tuple[int, str]]) -> list[tuple[Request, str]]:
        """Runs of records no request covers yet, cut into bodies of at most max_batch_bytes."""
        out: list[tuple[Request, str]] = []
        ids: list[int] = []
        parts: list[str] = []
        size = 0

        def flush() -> None:
            nonlocal ids, parts, size
            if ids:
                out.append((Request(ids[0], ids[-1], len(ids)), "".join(parts)))
            ids, parts, size = [], [], 0

        for record_id, body in records:
            if any(r.covers(record_id) for r in self.requests):
                flush()  # a request never spans a record another request holds
                continue
            ev = self.event(body)
            n = len(ev.encode("utf-8"))
            if parts and size + n > self.max_batch_bytes:
                flush()
            ids.append(record_id)
            parts.append(ev)
            size += n
        flush()
        return out

    # --- delivery ------------------------------------------------------------

    async def send(self, records: list[tuple[int, str]]) -> None:
        if self._broken is not None:
            raise PermanentSinkError(self._broken)
        if not records:
            return
        if self.channel is None:
            self.channel = str(uuid.uuid4())
        first = records[0][0]
        self.requests = [r for r in self.requests if r.last >= first]  # behind the cursor
        ids = [record_id for record_id, _ in records]
        pause = self.poll_initial
        while True:
            for request, body in self.batches(records):
                await self._post(request, body)
            if all(any(r.done and r.covers(i) for r in self.requests) for i in ids):
                return
            progressed = await self._poll()
            if self._expire():
                progressed = True
                await self._save()
            if progressed:
                pause = self.poll_initial
                continue
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.poll_max)

    async def _post(self, request: Request, body: str) -> None:
        headers = {"Content-Type": CONTENT_TYPE}
        if self.ack:
            assert self.channel is not None
            headers[CHANNEL_HEADER] = self.channel
        reply = await self._call(EVENT_PATH, body.encode("utf-8"), headers, what="events")
        if not self.ack:
            request.done = True
        else:
            ack_id = reply.get("ackId")
            if not isinstance(ack_id, int):
                self._stop(
                    "ack is true but HEC returned no ackId: enable indexer acknowledgement on "
                    "the token, or set ack: false for this sink, and restart osel"
                )
            request.ack = ack_id
            request.posted_at = self.clock()
        self.requests.append(request)
        await self._save()

    async def _poll(self) -> bool:
        """Ask HEC about the ackIds waiting; True when some were acknowledged."""
        waiting = {r.ack: r for r in self.requests if r.ack is not None and not r.done}
        if not waiting:
            return False
        assert self.channel is not None
        body = json.dumps({"acks": sorted(waiting)}).encode()
        reply = await self._call(
            f"{ACK_PATH}?channel={self.channel}",
            body,
            {"Content-Type": CONTENT_TYPE, CHANNEL_HEADER: self.channel},
            what="acks",
        )
        acks = reply.get("acks")
        if not isinstance(acks, dict):
            raise HecUnavailable(f"HEC at {self.url}: the ack reply has no acks object")
        done = 0
        for key, value in acks.items():
            request = waiting.get(int(key)) if str(key).isdigit() else None
            if request is not None and value is True:
                request.done = True
                request.ack = None
                done += 1
        if done:
            await self._save()
        return done > 0

    def _expire(self) -> bool:
        """Forget requests unacknowledged for ack_timeout: their records are sent again."""
        now = self.clock()
        stale = [
            r
            for r in self.requests
            if r.ack is not None and not r.done and now - r.posted_at > self.ack_timeout
        ]
        for r in stale:
            log.warning(
                "audit sink %s: no acknowledgement for ackId %d (records %d..%d) after %.0fs; "
                "sending them again (if HEC did index the first copy, Splunk holds them twice: "
                "de-duplicate on record_id)",
                self.sink_id,
                r.ack,
                r.first,
                r.last,
                now - r.posted_at,
            )
            self.requests.remove(r)
            self.resent_requests += 1
        return bool(stale)

    async def _call(
        self, path: str, body: bytes, headers: dict[str, str], *, what: str
    ) -> dict[str, Any]:
        client = self._http()
        try:
            response = await client.post(path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise HecUnavailable(f"HEC at {self.url}: {describe_error(exc)}") from None
        try:
            reply = response.json()
        except ValueError:
            reply = {}
        if not isinstance(reply, dict):
            reply = {}
        code = reply.get("code")
        if response.status_code == 200 and code in (0, None):
            return reply
        self._fail(response.status_code, code, str(reply.get("text", "")), reply, what)

    def _fail(
        self, status: int, code: Any, text: str, reply: dict[str, Any], what: str
    ) -> NoReturn:
        """Raise for an HEC error reply: HecUnavailable to retry, PermanentSinkError to stop."""
        said = f"HTTP {status}" + (f", code {code} {text!r}" if code is not None else "")
        if status in (401, 403) or code in _TOKEN_CODES:
            self._stop(
                f"HEC refused the token ({said}): put a valid, enabled HEC token in this "
                "sink's token or token_file and restart osel"
            )
        if code == 7:
            self._stop(
                f"HEC refused the index {self.index!r} ({said}): set index to one this token "
                "may write to (or leave it out for the token's default) and restart osel"
            )
        if code == 14:
            self._stop(
                f"ack is true but indexer acknowledgement is disabled on the token ({said}): "
                "enable it on the token, or set ack: false for this sink, and restart osel"
            )
        if status == 404:
            self._stop(
                f"no HTTP Event Collector at {self.url}{EVENT_PATH} ({said}): set url to the "
                "HEC base URL (e.g. https://splunk:8088) and restart osel"
            )
        if status == 413:
            self._stop(
                f"HEC refused a request as too large ({said}): lower max_batch_bytes "
                f"(now {self.max_batch_bytes}) and restart osel"
            )
        if status == 429 or status >= 500:
            raise HecUnavailable(f"HEC at {self.url} is busy or failing ({said})")
        if 400 <= status < 500:
            bad = reply.get("invalid-event-number")
            where = f" (event {bad} of the request)" if bad is not None else ""
            self._stop(f"HEC rejected the {what}{where} ({said}); fix the cause and restart osel")
        raise HecUnavailable(f"HEC at {self.url} answered unexpectedly ({said})")

    def _stop(self, why: str) -> NoReturn:
        self._broken = f"audit sink {self.sink_id}: {why}"
        raise PermanentSinkError(self._broken)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            verify: bool | ssl.SSLContext = self.verify
            if self.verify and self.ca_file:
                try:
                    verify = ssl.create_default_context(cafile=self.ca_file)
                except (OSError, ssl.SSLError) as exc:
                    self._stop(
                        f"cannot load ca_file {self.ca_file!r} ({describe_error(exc)}); fix "
                        "this sink's ca_file and restart osel"
                    )
            self._client = httpx.AsyncClient(
                base_url=self.url,
                headers={"Authorization": f"Splunk {self._token}"},
                verify=verify,
                timeout=self.timeout,
                transport=self._transport,
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
