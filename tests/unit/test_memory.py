"""glibc's malloc can be told to keep fewer arenas and to give memory back; the garbage
collector, to look less often and not at what lives as long as the process."""

from __future__ import annotations

import gc
import sys
import weakref

import pytest

from osel import memory


def test_arenas_are_limited_and_memory_is_given_back_on_linux():
    expected = sys.platform.startswith("linux")  # these machines run glibc
    assert memory.limit_arenas(2) is expected
    junk = [bytes(1000) for _ in range(10_000)]
    del junk
    assert memory.trim() in ((True, False) if expected else (False,))


@pytest.fixture
def collector():
    """Put the collector back as it was: thresholds, and nothing frozen."""
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()


def test_the_young_generation_is_collected_less_often_and_the_old_ones_keep_theirs(collector):
    gc.set_threshold(700, 11, 12)
    memory.tune_collector()
    assert gc.get_threshold() == (memory.GC_YOUNG_THRESHOLD, 11, 12)
    memory.tune_collector(5_000)
    assert gc.get_threshold() == (5_000, 11, 12)


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_what_lives_is_frozen_and_what_died_since_is_collected_on_the_next_freeze(collector):
    node = _Node()
    gone = weakref.ref(node)
    count = memory.freeze_long_lived()
    assert count == gc.get_freeze_count() > 0
    del node  # garbage now, but frozen: a collection does not look at it
    gc.collect()
    assert gone() is not None
    memory.freeze_long_lived()  # as after an inventory reload: frozen ones are looked at again
    assert gone() is None
