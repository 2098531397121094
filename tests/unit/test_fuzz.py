"""Generated and mutated messages through decoding and handling: nothing escapes.

Mutations start from the real Neutron 29 samples and the hand-written
Icehouse shapes: keys dropped, values replaced by other JSON types, ids
emptied, envelopes broken, bytes corrupted. Every message must end as
recorded, ignored, no_change, duplicate, deferred or quarantined.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from osel.decide import Rules
from osel.inventory import Inventory
from osel.model import FloatingIP, Port, SecurityGroup
from osel.pipeline import Item, Pipeline
from osel.resolver import Resolver
from osel.store.store import Batch, Store
from tests import messages as m
from tests.fakes import FakeNeutron

SAMPLES = Path(__file__).parents[1] / "data" / "neutron-29"
OUTCOMES = {"recorded", "ignored", "no_change", "duplicate", "deferred", "quarantined"}
EXAMPLES = 10_000


def originals() -> list[dict[str, Any]]:
    out = []
    for line in (SAMPLES / "notifications.jsonl").read_text().splitlines():
        body = json.loads(json.loads(line)["body"])
        out.append(json.loads(body["oslo.message"]))
    out += [
        m.notification(
            "security_group_rule.create.end",
            {"security_group_rules": [m.rule("sg1"), m.rule("sg1", low=80, high=90)]},
        ),
        m.notification(
            "security_group_rule.delete.end", {"security_group_rule_id": "r1"}, icehouse=True
        ),
        m.notification(
            "port.update.end",
            {"port": m.port("p1", ["10.0.0.1"], ["sg1"], port_security_enabled=False)},
        ),
        m.notification("port.delete.end", {"port_id": "p1"}),
        m.notification("floatingip.delete.end", {"floatingip_id": "f1"}),
        m.notification("security_group.delete.end", {"security_group_id": "sg1"}),
    ]
    return out


ORIGINALS = originals()
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    message = json.loads(json.dumps(draw(st.sampled_from(ORIGINALS))))
    for _ in range(draw(st.integers(1, 4))):
        targets = [p for p in paths(message) if p]
        if not targets:
            break
        where = draw(st.sampled_from(targets))
        parent = message
        for key in where[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["drop", "replace", "empty"]))
        if action == "drop" and isinstance(parent, dict):
            parent.pop(where[-1], None)
        elif action == "empty":
            parent[where[-1]] = draw(st.sampled_from(["", None, [], {}, 0]))
        else:
            parent[where[-1]] = draw(json_value)
    shape = draw(st.sampled_from(["envelope", "bare", "bad-envelope", "bytes"]))
    if shape == "envelope":
        return m.envelope(message)
    if shape == "bare":
        return m.bare(message)
    if shape == "bad-envelope":
        return json.dumps(
            {
                "oslo.version": draw(json_value),
                "oslo.message": draw(st.one_of(json_value, st.just(json.dumps(message)))),
            }
        ).encode()
    raw = bytearray(m.envelope(message))
    for _ in range(draw(st.integers(1, 3))):
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw)


messages = st.one_of(
    mutated(), st.binary(max_size=200), json_value.map(lambda v: json.dumps(v).encode())
)


def world() -> FakeNeutron:
    n = FakeNeutron()
    n.groups = {"sg1": SecurityGroup("sg1", "p1")}
    n.ports = {"p1": Port.from_neutron(m.port("p1", ["10.0.0.1"], ["sg1"]))}
    n.fips = {"f1": FloatingIP("f1", "203.0.113.10", "p1", "10.0.0.1", "p1")}
    return n


def test_no_exception_escapes_decoding_and_handling(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    store = Store(f"sqlite:///{tmp_path}/fuzz.db")
    loop.run_until_complete(store.migrate())
    inventory = Inventory()
    neutron = world()
    pipeline = Pipeline(
        store,
        inventory,
        Resolver(inventory, neutron),
        Rules(),
        instance="f",
        max_message_bytes=4096,
    )
    seen: list[str] = []

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(body=messages, neutron_down=st.booleans())
    def run(body: bytes, neutron_down: bool) -> None:
        neutron.down = neutron_down
        pipeline.deferring = False
        batch = Batch()
        stats = loop.run_until_complete(pipeline.process([Item(body)], batch))
        inventory.take_dirty()
        (outcome,) = stats.outcomes
        assert outcome in OUTCOMES
        seen.append(outcome)

    try:
        run()
    finally:
        loop.run_until_complete(store.close())
        loop.close()
    assert len(seen) >= EXAMPLES
    assert {"quarantined", "ignored"} <= set(seen)
    report = Path(__file__).parents[2] / "var" / "reports" / "fuzz.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(
        json.dumps(
            {"messages": len(seen), "outcomes": {o: seen.count(o) for o in sorted(set(seen))}},
            indent=2,
        )
    )
