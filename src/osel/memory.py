"""Keep a long-running osel's memory from creeping, and its garbage collector cheap.

A daemon that allocates and frees many small objects from several threads (the
event loop, the SQLite and DNS worker threads) leaves glibc holding freed
memory in per-thread arenas: the resident size grows slowly although Python's
own heap stays flat. osel limits the arenas (as ``MALLOC_ARENA_MAX=2`` would)
before it starts its threads, and gives freed memory back to the system now
and then (``malloc_trim``). Written by hand because no maintained library
wraps these two calls; ctypes reaches them directly (elsewhere than glibc they
are no-ops).

Python's cyclic garbage collector, with its default thresholds, ran about 13
full collections of ~100 ms each while osel drained 100,000 messages of the
benchmark's mix: the full collections walk the whole inventory, which lives as
long as the process. osel therefore moves what is alive once it has loaded the
inventory into the collector's permanent generation (`gc.freeze`, again after
each reload of the inventory), and lets the youngest generation grow to 10,000
objects before a collection instead of 700, since a batch of 1,000 messages
allocates far more than that and frees nearly all of it by reference counting.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys
from functools import cache
from typing import Any

log = logging.getLogger(__name__)
M_ARENA_MAX = -8  # mallopt parameter, from glibc's malloc.h
GC_YOUNG_THRESHOLD = 10_000  # allocations less deallocations before a young collection


@cache
def _glibc() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None  # not glibc (musl has neither)
    return libc


def limit_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas; call before starting threads. True if it applied."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arenas))


def trim() -> bool:
    """Give memory malloc holds but does not use back to the system."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))


def tune_collector(young: int = GC_YOUNG_THRESHOLD) -> None:
    """Collect the youngest generation every `young` net allocations (default 700);
    the older generations keep their thresholds."""
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)


def freeze_long_lived() -> int:
    """Collect everything once, then leave what survives (modules, configuration,
    the inventory) out of later collections; what was frozen before is looked at
    again first, so an inventory replaced since can be collected. How many objects
    are frozen."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
