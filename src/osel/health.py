"""What osel knows about its dependencies: up or down, since when, last error.

The loops report into one `Health`; `/readyz`, `/metrics` and the status page
read it. Nothing here does I/O.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(slots=True)
class DependencyState:
    up: bool | None = None  # None: not seen yet
    since: float = 0.0  # wall-clock time of the last change of `up`
    checked: float = 0.0  # wall-clock time of the last report
    error: str = ""


class Health:
    """Dependency name -> state. Names: amqp, neutron, store, sink:<id>, qualys."""

    def __init__(self) -> None:
        self.deps: dict[str, DependencyState] = {}

    def report(self, name: str, up: bool, error: str = "") -> None:
        now = time.time()
        state = self.deps.setdefault(name, DependencyState())
        if state.up is not up:
            state.up = up
            state.since = now
        state.checked = now
        state.error = "" if up else error[:300]

    def is_up(self, name: str, *, within: float | None = None) -> bool:
        state = self.deps.get(name)
        if state is None or not state.up:
            return False
        return within is None or time.time() - state.checked <= within

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {
            name: {"up": s.up, "since": s.since, "checked": s.checked, "error": s.error}
            for name, s in sorted(self.deps.items())
        }
