"""`decode`: what osel accepts from the bus, and why it refuses the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from osel.decode import BadMessage, decode
from tests import messages as m

SAMPLES = Path(__file__).parents[1] / "data" / "neutron-29"


def test_every_sample_decodes_as_the_json_module_reads_it() -> None:
    lines = (SAMPLES / "notifications.jsonl").read_text().splitlines()
    bodies = [json.loads(line)["body"] for line in lines if line.strip()]
    assert bodies
    for body in bodies:
        inner = json.loads(json.loads(body)["oslo.message"])
        n = decode(body.encode())
        assert (n.message_id, n.event_type, n.payload) == (
            inner["message_id"],
            inner["event_type"],
            inner["payload"],
        )


def test_what_the_json_module_accepts_is_accepted() -> None:
    # not strict JSON, but what Python's json module (and oslo's jsonutils) may write
    body = m.envelope(m.notification("port.update.end", {"port": {"id": "p1"}}))
    loose = body.replace(b'\\"id\\": \\"p1\\"', b'\\"id\\": \\"p1\\", \\"load\\": NaN, '
                         b'\\"big\\": 123456789012345678901234567890')  # fmt: skip
    n = decode(loose)
    assert n.payload["port"]["big"] == 123456789012345678901234567890
    assert n.payload["port"]["load"] != n.payload["port"]["load"]  # NaN


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "body is not JSON: Expecting value at position 0"),
        (b'{"a": 1,}', "body is not JSON: Expecting property name enclosed in double quotes"),
        (b'{"event_type": "\xff"}', "body is not UTF-8: invalid start byte at byte 16"),
        (b"[" * 100_000 + b"]" * 100_000, "body is nested too deeply"),
        (b'{"oslo.version": "2.0", "oslo.message": "{x"}', "oslo.message is not JSON"),
        (b"[1]", "body is a JSON list, expected an object"),
    ],
)
def test_refusals_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(BadMessage) as refused:
        decode(body)
    assert reason in refused.value.reason
