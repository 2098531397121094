"""A simulator of Splunk's HTTP Event Collector (HEC), for osel's tests.

This is NOT Splunk and not production code. It was written from Splunk's
public documentation ("Format events for HTTP Event Collector", "HTTP Event
Collector REST API endpoints", "About HTTP Event Collector Indexer
Acknowledgment" and the reply-code table of "Troubleshoot HTTP Event
Collector") so that osel's HEC sink can be tested without a Splunk indexer.

Behaviours modelled:

- ``POST /services/collector/event`` (also ``/services/collector`` and
  ``/services/collector/event/1.0``): ``Authorization: Splunk <token>``
  required (401 code 2 without it, 401 code 3 without the ``Splunk`` prefix,
  403 code 4 for an unknown token, 403 code 1 for a disabled one, 400 code 16
  for a ``?token=`` query); the body is one or more JSON event objects one
  after another (no array, no commas); 400 code 5 for no data, code 6 for a
  body that is not such JSON (``invalid-event-number``), code 12 for an event
  without ``event``, code 13 for a blank one, code 7 for an index the token may
  not write to, code 15 for ``fields`` that are not strings or lists of
  strings. A request is accepted or rejected whole.
- Indexer acknowledgement, per token: every request must then carry a channel
  GUID (``X-Splunk-Request-Channel`` header or ``?channel=``; 400 code 10 when
  missing, code 11 when not a GUID); an accepted request returns an ``ackId``
  counted per channel from 0. ``POST /services/collector/ack`` with
  ``{"acks": [ids]}`` answers ``{"acks": {"id": bool}}``; an id reported true
  is forgotten (later asked: false). 400 code 14 when the token has ack off.
- Late and out-of-order acks: `HecSimulator.ack_delays` gives each ackId a
  delay (cycling through a list, so later ids can be ready before earlier
  ones); events count as indexed when their ack is ready. `lose_acks(n)`
  makes the next n requests vanish (accepted, never indexed, never acked).
- Failure: `busy` answers 503 code 9 ("Server is busy") for the next n event
  requests or for some seconds (or another status such as 500 code 8);
  `GET /services/collector/health` answers code 17, or 503 code 18 while busy.
- A control API for a running process: ``GET /_sim/events``, ``GET
  /_sim/requests``, ``POST /_sim/control`` (JSON: busy_requests, busy_seconds,
  busy_status, ack_delays, lose_acks, tokens).

Run it alone: ``python -m simulators.hec --port 8088 --token T [--ack]``.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

EVENT_PATHS = ("/services/collector/event", "/services/collector", "/services/collector/event/1.0")
ACK_PATH = "/services/collector/ack"
HEALTH_PATH = "/services/collector/health"

TEXTS = {
    0: "Success",
    1: "Token disabled",
    2: "Token is required",
    3: "Invalid authorization",
    4: "Invalid token",
    5: "No data",
    6: "Invalid data format",
    7: "Incorrect index",
    8: "Internal server error",
    9: "Server is busy",
    10: "Data channel is missing",
    11: "Invalid data channel",
    12: "Event field is required",
    13: "Event field cannot be blank",
    14: "ACK is disabled",
    15: "Error in handling indexed fields",
    16: "Query string authorization is not enabled",
    17: "HEC is healthy",
    18: "HEC is unhealthy, queues are full",
}
STATUS = {0: 200, 1: 403, 2: 401, 3: 401, 4: 403, 8: 500, 9: 503, 17: 200, 18: 503}

Reply = tuple[int, dict[str, Any]]


def reply(code: int, **extra: Any) -> Reply:
    return STATUS.get(code, 400), {"text": TEXTS[code], "code": code, **extra}


class Refused(Exception):
    """A request HEC turns down, with its reply."""

    def __init__(self, code: int, **extra: Any) -> None:
        super().__init__(TEXTS[code])
        self.reply = reply(code, **extra)


@dataclass
class Token:
    ack: bool = False
    disabled: bool = False
    indexes: set[str] | None = None  # None: any index


@dataclass
class Pending:
    ready_at: float
    events: list[dict[str, Any]]
    token: str
    lost: bool = False


@dataclass
class Channel:
    next_ack: int = 0
    pending: dict[int, Pending] = field(default_factory=dict)


@dataclass
class Indexed:
    event: dict[str, Any]
    token: str
    channel: str | None
    ack_id: int | None


class HecSimulator:
    """The simulated collector's state and rules; thread-safe (the server runs in a thread)."""

    def __init__(
        self,
        tokens: dict[str, Token] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tokens: dict[str, Token] = dict(tokens or {})
        self.clock = clock
        self.lock = threading.Lock()
        self.channels: dict[str, Channel] = {}
        self.indexed: list[Indexed] = []
        self.requests: list[tuple[str, int, int | None]] = []  # (path, status, code)
        self.acks_reported: list[int] = []  # ackIds in the order they were reported true
        self._delays: list[float] = [0.0]
        self._busy_requests = 0
        self._busy_after = 0
        self._busy_until = 0.0
        self._busy_status = 9
        self._lose = 0

    # --- switches -----------------------------------------------------------

    def busy(
        self, *, requests: int = 0, seconds: float = 0.0, code: int = 9, after: int = 0
    ) -> None:
        """Answer ``requests`` event requests (after letting ``after`` more through), or all
        for ``seconds``, with ``code`` (9: 503 server busy; 8: 500 internal error)."""
        with self.lock:
            self._busy_after = after
            self._busy_requests = requests
            self._busy_until = self.clock() + seconds if seconds else 0.0
            self._busy_status = code

    def ack_delays(self, delays: list[float]) -> None:
        """AckId n becomes true delays[n % len(delays)] seconds after its request."""
        with self.lock:
            self._delays = list(delays) or [0.0]

    def lose_acks(self, n: int) -> None:
        """The next n acknowledged requests are never indexed and never acked."""
        with self.lock:
            self._lose = n

    def set_token(self, token: str, **settings: Any) -> None:
        with self.lock:
            self.tokens[token] = Token(**settings)

    # --- reading ------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        """The events indexed so far (those acked, or accepted when ack is off)."""
        with self.lock:
            self._ripen(self.clock())
            return [i.event for i in self.indexed]

    # --- the endpoints -----------------------------------------------------

    def _auth(self, headers: dict[str, str], query: dict[str, str]) -> tuple[str, Token]:
        if "token" in query:
            raise Refused(16)
        value = headers.get("authorization")
        if value is None:
            raise Refused(2)
        scheme, _, token = value.partition(" ")
        if scheme != "Splunk" or not token:
            raise Refused(3)
        conf = self.tokens.get(token)
        if conf is None:
            raise Refused(4)
        if conf.disabled:
            raise Refused(1)
        return token, conf

    @staticmethod
    def _channel(headers: dict[str, str], query: dict[str, str]) -> str:
        channel = headers.get("x-splunk-request-channel") or query.get("channel")
        if not channel:
            raise Refused(10)
        try:
            uuid.UUID(channel)
        except ValueError:
            raise Refused(11) from None
        return channel

    def _check_busy(self) -> None:
        if self._busy_after > 0:
            self._busy_after -= 1
            return
        if self._busy_requests > 0:
            self._busy_requests -= 1
            raise Refused(self._busy_status)
        if self.clock() < self._busy_until:
            raise Refused(self._busy_status)

    def post_events(self, headers: dict[str, str], query: dict[str, str], body: bytes) -> Reply:
        return self._answer("event", self._post_events, headers, query, body)

    def post_acks(self, headers: dict[str, str], query: dict[str, str], body: bytes) -> Reply:
        return self._answer("ack", self._post_acks, headers, query, body)

    def _answer(
        self,
        kind: str,
        handler: Callable[[dict[str, str], dict[str, str], bytes], Reply],
        headers: dict[str, str],
        query: dict[str, str],
        body: bytes,
    ) -> Reply:
        with self.lock:
            try:
                result = handler(headers, query, body)
            except Refused as refused:
                result = refused.reply
            self.requests.append((kind, result[0], result[1].get("code")))
            return result

    def _post_events(self, headers: dict[str, str], query: dict[str, str], body: bytes) -> Reply:
        token, conf = self._auth(headers, query)
        self._check_busy()
        channel = self._channel(headers, query) if conf.ack else None
        events = parse_events(body)
        for number, ev in enumerate(events):
            problem = check_event(ev, conf)
            if problem is not None:
                raise Refused(problem, **{"invalid-event-number": number})
        if channel is None:
            self.indexed += [Indexed(ev, token, None, None) for ev in events]
            return reply(0)
        state = self.channels.setdefault(channel, Channel())
        ack_id = state.next_ack
        state.next_ack += 1
        delay = self._delays[ack_id % len(self._delays)]
        lost = self._lose > 0
        if lost:
            self._lose -= 1
        state.pending[ack_id] = Pending(self.clock() + delay, events, token, lost)
        return reply(0, ackId=ack_id)

    def _post_acks(self, headers: dict[str, str], query: dict[str, str], body: bytes) -> Reply:
        _token, conf = self._auth(headers, query)
        if not conf.ack:
            raise Refused(14)
        channel = self._channel(headers, query)
        try:
            asked = json.loads(body)["acks"]
            if not isinstance(asked, list) or not all(isinstance(a, int) for a in asked):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise Refused(6) from None
        now = self.clock()  # one instant: what is reported ready has been indexed
        self._ripen(now)
        state = self.channels.setdefault(channel, Channel())
        answer: dict[str, bool] = {}
        for ack_id in asked:
            p = state.pending.get(ack_id)
            ready = p is not None and not p.lost and p.ready_at <= now
            answer[str(ack_id)] = ready
            if ready:
                del state.pending[ack_id]  # reported once, then forgotten
                self.acks_reported.append(ack_id)
        return 200, {"acks": answer}

    def health(self) -> Reply:
        with self.lock:
            busy = self._busy_requests > 0 or self.clock() < self._busy_until
            return reply(18 if busy else 17)

    def _ripen(self, now: float) -> None:
        """Index the events of every request whose ack is ready at ``now`` (once)."""
        for name, state in self.channels.items():
            for ack_id, p in state.pending.items():
                if not p.lost and p.ready_at <= now and p.events:
                    self.indexed += [Indexed(ev, p.token, name, ack_id) for ev in p.events]
                    p.events = []


def parse_events(body: bytes) -> list[dict[str, Any]]:
    """Concatenated JSON objects -> list; `Refused` (code 5 or 6) when that is not what it is."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(6, **{"invalid-event-number": 0}) from None
    decoder = json.JSONDecoder()
    events: list[dict[str, Any]] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            break
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except ValueError:
            raise Refused(6, **{"invalid-event-number": len(events)}) from None
        if not isinstance(obj, dict):
            raise Refused(6, **{"invalid-event-number": len(events)})
        events.append(obj)
    if not events:
        raise Refused(5)
    return events


def check_event(ev: dict[str, Any], token: Token) -> int | None:
    """The reply code for a bad event, or None."""
    if "event" not in ev:
        return 12
    value = ev["event"]
    if value is None or (isinstance(value, str) and not value.strip()):
        return 13
    t = ev.get("time")
    if t is not None and not isinstance(t, int | float):
        try:
            float(t)
        except (TypeError, ValueError):
            return 6
    index = ev.get("index")
    if index is not None and token.indexes is not None and index not in token.indexes:
        return 7
    fields = ev.get("fields")
    if fields is not None:
        if not isinstance(fields, dict):
            return 15
        for v in fields.values():
            strings = isinstance(v, list) and all(isinstance(x, str) for x in v)
            if not (isinstance(v, str) or strings):
                return 15
    return None


# --------------------------------------------------------------------------- HTTP


def create_app(sim: HecSimulator) -> Starlette:
    async def events(request: Request) -> Response:
        status, body = sim.post_events(
            {k.lower(): v for k, v in request.headers.items()},
            dict(request.query_params),
            await request.body(),
        )
        return JSONResponse(body, status_code=status)

    async def acks(request: Request) -> Response:
        status, body = sim.post_acks(
            {k.lower(): v for k, v in request.headers.items()},
            dict(request.query_params),
            await request.body(),
        )
        return JSONResponse(body, status_code=status)

    async def health(_request: Request) -> Response:
        status, body = sim.health()
        return JSONResponse(body, status_code=status)

    async def sim_events(_request: Request) -> Response:
        return JSONResponse(sim.events())

    async def sim_requests(_request: Request) -> Response:
        with sim.lock:
            return JSONResponse([list(r) for r in sim.requests])

    async def sim_control(request: Request) -> Response:
        data = await request.json()
        if "busy_requests" in data or "busy_seconds" in data:
            sim.busy(
                requests=int(data.get("busy_requests", 0)),
                seconds=float(data.get("busy_seconds", 0)),
                code=int(data.get("busy_status", 9)),
            )
        if "ack_delays" in data:
            sim.ack_delays([float(d) for d in data["ack_delays"]])
        if "lose_acks" in data:
            sim.lose_acks(int(data["lose_acks"]))
        for token, settings in (data.get("tokens") or {}).items():
            sim.set_token(token, **settings)
        return JSONResponse({"ok": True})

    routes = [Route(p, events, methods=["POST"]) for p in EVENT_PATHS]
    routes += [
        Route(ACK_PATH, acks, methods=["POST"]),
        Route(HEALTH_PATH, health, methods=["GET"]),
        Route("/_sim/events", sim_events, methods=["GET"]),
        Route("/_sim/requests", sim_requests, methods=["GET"]),
        Route("/_sim/control", sim_control, methods=["POST"]),
    ]
    return Starlette(routes=routes)


class RunningSimulator:
    """The simulator served on 127.0.0.1 (a free port) from a thread; ``with`` stops it."""

    def __init__(
        self,
        sim: HecSimulator,
        *,
        port: int = 0,
        certfile: str | None = None,
        keyfile: str | None = None,
    ) -> None:
        self.sim = sim
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.port = int(self.sock.getsockname()[1])
        self.scheme = "https" if certfile else "http"
        config = uvicorn.Config(
            create_app(sim),
            log_level="warning",
            access_log=False,
            lifespan="off",
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> RunningSimulator:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the HEC simulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> RunningSimulator:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.hec",
        description="A Splunk HTTP Event Collector simulator for tests (not Splunk).",
    )
    parser.add_argument("--port", type=int, default=8088)
    parser.add_argument("--token", action="append", default=[], help="an accepted token")
    parser.add_argument("--ack", action="store_true", help="indexer acknowledgement on")
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    args = parser.parse_args(argv)
    sim = HecSimulator({t: Token(ack=args.ack) for t in args.token})
    running = RunningSimulator(sim, port=args.port, certfile=args.certfile, keyfile=args.keyfile)
    running.start()
    print(f"HEC simulator on {running.url} (not Splunk); Ctrl-C stops it", flush=True)
    try:
        running.thread.join()
    except KeyboardInterrupt:
        running.stop()


if __name__ == "__main__":
    main()
