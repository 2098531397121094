"""`EventFilter`: bodies recognised as unhandled without decoding are never handled ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from osel.decode import BadMessage, EventFilter, decode
from osel.handlers import HANDLERS
from tests import messages as m

SAMPLES = Path(__file__).parents[1] / "data" / "neutron-29"
FILTER = EventFilter(HANDLERS)


def sample_bodies() -> list[bytes]:
    lines = (SAMPLES / "notifications.jsonl").read_text().splitlines()
    return [json.loads(line)["body"].encode() for line in lines if line.strip()]


def test_every_sample_is_named_or_left_to_decode() -> None:
    for body in sample_bodies():
        event_type = decode(body).event_type
        found = FILTER.ignorable(body)
        if event_type in HANDLERS:
            assert found is None, event_type
        else:
            assert found == event_type


@pytest.mark.parametrize("wrap", [m.envelope, m.bare])
def test_both_shapes(wrap: Any) -> None:
    ignored = wrap(m.notification("network.create.end", {"network": {"id": "n1"}}))
    handled = wrap(m.notification("port.update.end", {"port": m.port("p1", [], [])}))
    assert FILTER.ignorable(ignored) == "network.create.end"
    assert FILTER.ignorable(handled) is None


def test_doubtful_bodies_are_left_to_decode() -> None:
    # an escaped event type could spell a handled one
    escaped = b'{"event_type": "port.update.en\\u0064", "message_id": "x", "payload": {}}'
    assert FILTER.ignorable(escaped) is None
    assert decode(escaped).event_type == "port.update.end"
    # a handled type anywhere in the body, even after an ignored one
    nested = m.bare(
        {
            "payload": {"event_type": "network.create.end"},
            "event_type": "port.update.end",
            "message_id": "x",
        }
    )
    assert FILTER.ignorable(nested) is None
    # not JSON, no event type, oversized: decode says why it is quarantined
    assert FILTER.ignorable(b"not json") is None
    assert FILTER.ignorable(b'{"message_id": "x"}') is None
    big = m.envelope(m.notification("network.create.end", {"network": {"x": "y" * 100}}))
    assert FILTER.ignorable(big, max_bytes=100) is None
    assert FILTER.ignorable(big, max_bytes=len(big)) == "network.create.end"


@pytest.mark.parametrize("wrap", [m.envelope, m.bare])
def test_a_wanted_name_counts_only_as_a_whole_string(wrap: Any) -> None:
    # names with no common ending (each found by its last bytes) and with one
    odd = EventFilter(["compute.instance.create.end", "abc"])
    neutron = EventFilter(["port.create.end", "port.update.end"])

    def body(event_type: str, **extra: Any) -> bytes:
        raw: bytes = wrap({"event_type": event_type, "message_id": "x", "payload": extra})
        return raw

    assert odd.ignorable(body("abc")) is None
    assert odd.ignorable(body("compute.instance.create.end")) is None
    assert odd.ignorable(body("xabc")) == "xabc"
    assert odd.ignorable(body("other", note="abc")) is None  # a wanted name, somewhere
    assert neutron.ignorable(body("port.update.end")) is None
    assert neutron.ignorable(body("export.create.end")) == "export.create.end"
    assert neutron.ignorable(body("port.delete.end", see="port.create.end")) is None
    with pytest.raises(ValueError, match="quote or a backslash"):
        EventFilter(['a"b'])


names = st.sampled_from([*HANDLERS, "network.create.end", "port.create.start", "x"])
text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    message: dict[str, Any] = {}
    keys = draw(st.lists(st.sampled_from(["event_type", "message_id", "payload", "x"])))
    for key in keys:
        message[key] = draw(st.one_of(names, text, st.dictionaries(text, names, max_size=2)))
    raw = m.envelope(message) if draw(st.booleans()) else m.bare(message)
    if draw(st.booleans()):  # corrupt a byte
        data = bytearray(raw)
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        raw = bytes(data)
    return raw


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies())
def test_a_body_named_unhandled_never_decodes_to_a_handled_message(body: bytes) -> None:
    if FILTER.ignorable(body) is None:
        return
    try:
        notification = decode(body)
    except BadMessage:
        return
    assert notification.event_type not in HANDLERS
