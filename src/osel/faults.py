"""Crash points for the crash-safety tests.

`OSEL_CRASH_AT=<point>[:<n>]` makes the process SIGKILL itself the n-th time
(default: first) it reaches `<point>`. Unset, as it always is in production,
a crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get("OSEL_CRASH_AT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
