"""glibc's malloc can be told to keep fewer arenas and to give memory back."""

from __future__ import annotations

import sys

from osel import memory


def test_arenas_are_limited_and_memory_is_given_back_on_linux():
    expected = sys.platform.startswith("linux")  # these machines run glibc
    assert memory.limit_arenas(2) is expected
    junk = [bytes(1000) for _ in range(10_000)]
    del junk
    assert memory.trim() in ((True, False) if expected else (False,))
