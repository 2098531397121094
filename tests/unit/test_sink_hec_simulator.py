"""The HEC simulator answers as Splunk's documentation says HEC does."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from simulators.hec import HecSimulator, Token

TOKEN = "tok-1"
CHANNEL = str(uuid.uuid4())


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sim(**token: Any) -> HecSimulator:
    return HecSimulator({TOKEN: Token(**token), "off": Token(disabled=True)}, clock=Clock())


def auth(token: str = TOKEN, **more: str) -> dict[str, str]:
    return {"authorization": f"Splunk {token}", **more}


def events(*bodies: Any) -> bytes:
    return "".join(json.dumps({"event": b}) for b in bodies).encode()


@pytest.mark.parametrize(
    ("headers", "query", "status", "code"),
    [
        ({}, {}, 401, 2),
        ({"authorization": f"Bearer {TOKEN}"}, {}, 401, 3),
        (auth("unknown"), {}, 403, 4),
        (auth("off"), {}, 403, 1),
        ({}, {"token": TOKEN}, 400, 16),
    ],
)
def test_authorization(headers, query, status, code):
    s = sim()
    got_status, body = s.post_events(headers, query, events("x"))
    assert (got_status, body["code"]) == (status, code)
    assert s.events() == []


@pytest.mark.parametrize(
    ("body", "code", "number"),
    [
        (b"", 5, None),
        (b"   ", 5, None),
        (b'{"event": "a"}{"event": ', 6, 1),
        (b'[{"event": "a"}]', 6, 0),
        (b'{"event": "a"}{"time": 1}', 12, 1),
        (b'{"event": ""}', 13, 0),
        (b'{"event": "a", "time": "soon"}', 6, 0),
        (b'{"event": "a", "fields": {"k": 1}}', 15, 0),
        (b'{"event": "a", "index": "secret"}', 7, 0),
    ],
)
def test_bad_bodies_are_rejected_whole(body, code, number):
    s = HecSimulator({TOKEN: Token(indexes={"main"})})
    status, reply = s.post_events(auth(), {}, body)
    assert (status, reply["code"]) == (400, code)
    assert reply.get("invalid-event-number") == number
    assert s.events() == []


def test_concatenated_events_are_indexed_without_ack():
    s = sim()
    status, reply = s.post_events(auth(), {}, events({"a": 1}, "two") + b"\n" + events(3))
    assert (status, reply) == (200, {"text": "Success", "code": 0})
    assert [e["event"] for e in s.events()] == [{"a": 1}, "two", 3]


def test_ack_needs_a_channel_guid():
    s = sim(ack=True)
    assert s.post_events(auth(), {}, events(1))[1]["code"] == 10
    assert (
        s.post_events(auth(**{"x-splunk-request-channel": "nope"}), {}, events(1))[1]["code"] == 11
    )
    status, reply = s.post_events(auth(), {"channel": CHANNEL}, events(1))
    assert (status, reply["ackId"]) == (200, 0)


def test_acks_are_late_out_of_order_reported_once_then_forgotten():
    s = sim(ack=True)
    clock: Clock = s.clock  # type: ignore[assignment]
    s.ack_delays([2.0, 1.0])
    h = auth(**{"x-splunk-request-channel": CHANNEL})
    assert s.post_events(h, {}, events("a"))[1]["ackId"] == 0
    assert s.post_events(h, {}, events("b"))[1]["ackId"] == 1
    ask = json.dumps({"acks": [0, 1]}).encode()
    assert s.post_acks(h, {}, ask) == (200, {"acks": {"0": False, "1": False}})
    assert s.events() == []
    clock.now += 1.5
    assert s.post_acks(h, {}, ask) == (200, {"acks": {"0": False, "1": True}})
    assert [e["event"] for e in s.events()] == ["b"]
    clock.now += 1.0
    assert s.post_acks(h, {}, ask) == (200, {"acks": {"0": True, "1": False}})
    assert s.acks_reported == [1, 0]
    assert sorted(e["event"] for e in s.events()) == ["a", "b"]


def test_an_ack_reported_true_has_its_events_indexed_even_as_the_clock_moves():
    """Readiness is judged at one instant: an ack that turns ready between two readings
    of the clock is reported true only with its events indexed (else they were lost)."""

    class Ticking:
        def __init__(self) -> None:
            self.now = 100.0

        def __call__(self) -> float:
            self.now += 0.01  # every reading later than the one before
            return self.now

    s = HecSimulator({TOKEN: Token(ack=True)}, clock=Ticking())
    s.ack_delays([0.015])
    h = auth(**{"x-splunk-request-channel": CHANNEL})
    ask = json.dumps({"acks": [0]}).encode()
    assert s.post_events(h, {}, events("a"))[1]["ackId"] == 0
    while not s.post_acks(h, {}, ask)[1]["acks"]["0"]:
        pass
    assert [i.event["event"] for i in s.indexed] == ["a"]


def test_lost_acks_never_come_and_their_events_are_not_indexed():
    s = sim(ack=True)
    clock: Clock = s.clock  # type: ignore[assignment]
    s.lose_acks(1)
    h = auth(**{"x-splunk-request-channel": CHANNEL})
    s.post_events(h, {}, events("lost"))
    s.post_events(h, {}, events("kept"))
    clock.now += 60
    assert s.post_acks(h, {}, b'{"acks": [0, 1]}')[1] == {"acks": {"0": False, "1": True}}
    assert [e["event"] for e in s.events()] == ["kept"]


def test_ack_endpoint_errors():
    s = sim()
    h = auth(**{"x-splunk-request-channel": CHANNEL})
    assert s.post_acks(h, {}, b'{"acks": [0]}')[1]["code"] == 14
    acked = sim(ack=True)
    assert acked.post_acks(auth(), {}, b'{"acks": [0]}')[1]["code"] == 10
    assert acked.post_acks(h, {}, b'{"acks": "0"}')[1]["code"] == 6


def test_busy_for_requests_and_for_a_while_and_health():
    s = sim()
    clock: Clock = s.clock  # type: ignore[assignment]
    s.busy(requests=1, after=1)
    assert s.post_events(auth(), {}, events(1))[0] == 200
    assert s.post_events(auth(), {}, events(2))[1] == {"text": "Server is busy", "code": 9}
    assert s.post_events(auth(), {}, events(3))[0] == 200
    s.busy(seconds=5, code=8)
    assert s.health() == (503, {"text": "HEC is unhealthy, queues are full", "code": 18})
    assert s.post_events(auth(), {}, events(4))[0] == 500
    clock.now += 6
    assert s.health()[1]["code"] == 17
    assert s.post_events(auth(), {}, events(5))[0] == 200
    assert [e["event"] for e in s.events()] == [1, 3, 5]
