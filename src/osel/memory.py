"""Keep a long-running osel's memory from creeping (glibc's malloc; elsewhere a no-op).

A daemon that allocates and frees many small objects from several threads (the
event loop, the SQLite and DNS worker threads) leaves glibc holding freed
memory in per-thread arenas: the resident size grows slowly although Python's
own heap stays flat. osel limits the arenas (as ``MALLOC_ARENA_MAX=2`` would)
before it starts its threads, and gives freed memory back to the system now
and then (``malloc_trim``). Written by hand because no maintained library
wraps these two calls; ctypes reaches them directly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from functools import cache
from typing import Any

log = logging.getLogger(__name__)
M_ARENA_MAX = -8  # mallopt parameter, from glibc's malloc.h


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
