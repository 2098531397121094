"""What osel knows about its dependencies: up or down, since when, last error.

The loops report into one `Health`; `/readyz`, `/metrics` and the status page
read it; `Bounded` keeps them from waiting on a dependency that hangs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

T = TypeVar("T")


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


class Bounded:
    """Runs an awaitable in the background and waits for it at most `timeout` seconds,
    so that a store that hangs (it answers nothing and closes nothing) cannot hang the
    HTTP answers that ask it something. What timed out goes on in the background, and
    the next call waits for it again instead of starting another: at most one at a
    time."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._task: asyncio.Future[Any] | None = None

    async def __call__(self, start: Callable[[], Awaitable[T]]) -> T:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(start())
            # one that timed out and later failed is not waited for by anyone: its
            # error is taken here, not logged by asyncio as never retrieved
            self._task.add_done_callback(_retrieve)
        task = self._task
        done, _ = await asyncio.wait({task}, timeout=self.timeout)
        if not done:
            raise TimeoutError(f"no answer within {self.timeout:g} s")
        self._task = None
        return cast(T, task.result())


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
