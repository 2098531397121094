from __future__ import annotations

import uuid

import pytest

from osel.decide import ADMIN_PORTS, random_id, risk_priority
from osel.exposure import Permit


def permit(protocol: str | None, low: int, high: int) -> Permit:
    return Permit(protocol, low, high, "0.0.0.0/0", True)


@pytest.mark.parametrize(
    ("protocol", "low", "high", "admin"),
    [
        ("tcp", 20, 21, False),
        ("tcp", 20, 22, True),
        ("tcp", 22, 22, True),
        ("udp", 23, 134, True),
        ("tcp", 24, 134, False),
        ("tcp", 27017, 65535, True),
        ("tcp", 27018, 65535, False),
        ("tcp", 1, 65535, True),
        (None, 1, 65535, True),
        ("icmp", 1, 65535, False),
    ],
)
def test_risk_priority_finds_admin_ports_in_ranges(
    protocol: str | None, low: int, high: int, admin: bool
) -> None:
    expected = any(low <= port <= high for port in ADMIN_PORTS) and protocol != "icmp"
    assert expected == admin  # the table itself agrees with ADMIN_PORTS
    assert risk_priority([permit(protocol, low, high)], internet=True) == (0 if admin else 1)
    assert risk_priority([permit(protocol, low, high)], internet=False) == (2 if admin else 3)


def test_risk_priority_of_several_permits() -> None:
    quiet, ssh = permit("tcp", 8000, 8080), permit("tcp", 22, 22)
    assert risk_priority([quiet], internet=True) == 1
    assert risk_priority([quiet, ssh], internet=True) == 0
    assert risk_priority([], internet=False) == 3


def test_random_ids_are_version_4_uuids_in_their_canonical_text() -> None:
    ids = [random_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text  # lower case, dashes where str(uuid4()) puts them
    # every other bit is random: over 2000 ids, each hex digit outside the fixed ones varies
    fixed = {14}  # the version digit; the variant digit (19) takes 8, 9, a or b
    for at in range(36):
        if at in (8, 13, 18, 23) or at in fixed:
            continue
        assert len({text[at] for text in ids}) >= (4 if at == 19 else 16), at
