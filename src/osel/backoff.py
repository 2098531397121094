"""The one reconnect policy (capped exponential backoff with full jitter) and
bounded outage logging.

While a dependency is down, osel logs the outage once, then at most one
summary line per ``cap`` seconds, then one line when it is back: never one
line per attempt (the predecessor filled disks that way).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential
from tenacity.wait import wait_base

__all__ = ["BackoffPolicy", "OutageLog", "Stopped", "describe_error", "retry_forever"]

T = TypeVar("T")

_MAX_ERROR_CHARS = 500


class Stopped(Exception):
    """Raised by `retry_forever` when its stop event is set before success."""


@dataclass(frozen=True)
class BackoffPolicy:
    """Exponential backoff with full jitter: attempt n waits a random time in
    ``[0, min(cap, initial * multiplier ** (n - 1))]`` seconds."""

    initial: float = 1.0
    cap: float = 60.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.cap < self.initial or self.multiplier < 1:
            raise ValueError(
                "backoff needs initial > 0, cap >= initial and multiplier >= 1 "
                f"(got initial={self.initial}, cap={self.cap}, multiplier={self.multiplier})"
            )

    def wait(self) -> wait_base:
        """The tenacity wait strategy for this policy."""
        return wait_random_exponential(
            multiplier=self.initial, max=self.cap, exp_base=self.multiplier
        )

    def delay(self, attempt: int) -> float:
        """One jittered delay for the given attempt number (1-based); the same
        distribution as `wait`, for callers that are not tenacity loops."""
        exponent = min(max(attempt, 1) - 1, 64)
        return random.uniform(0, min(self.cap, self.initial * self.multiplier**exponent))


def describe_error(exc: BaseException) -> str:
    """A short one-line description of an exception for log lines."""
    text = str(exc).strip().replace("\n", " ")
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if len(described) > _MAX_ERROR_CHARS:
        described = described[: _MAX_ERROR_CHARS - 3] + "..."
    return described


class OutageLog:
    """Logs the outages of one named dependency ("amqp", "neutron", ...) in a
    bounded number of lines.

    - `failed` on the first failure: one WARNING ("amqp down: ...").
    - `failed` while down: at most one summary WARNING per ``cap`` seconds.
    - `recovered`: one INFO ("amqp back after ...").

    Flapping is damped as well: an outage that starts less than ``cap``
    seconds after the previous line stays silent until ``cap`` has passed
    (and its recovery is then silent too if nothing was said about it), so
    the log never carries more than about two lines per ``cap`` seconds.
    """

    def __init__(
        self,
        name: str,
        logger: logging.Logger,
        *,
        cap: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._logger = logger
        self._cap = cap
        self._clock = clock
        self._down_since: float | None = None
        self._attempts = 0
        self._last_line: float | None = None
        self._announced = False
        self._silent_outages = 0

    @property
    def is_down(self) -> bool:
        return self._down_since is not None

    @property
    def attempts(self) -> int:
        """Failed attempts in the current outage (0 while up)."""
        return self._attempts

    @property
    def down_since(self) -> float | None:
        """Clock time of the first failure of the current outage, or None."""
        return self._down_since

    def failed(self, exc: BaseException, *, trace: bool = False) -> None:
        """Record one failed attempt (or the loss of a working connection). With `trace`,
        the line that says it is down carries the traceback (for faults that are not
        a dependency being away, where the one line would not say where it broke)."""
        now = self._clock()
        if self._down_since is None:
            self._down_since = now
            self._attempts = 0
            self._announced = False
        self._attempts += 1
        if not self._line_due(now):
            return
        error = describe_error(exc)
        facts = self._facts(now, error)
        if not self._announced:
            flaps = ""
            if self._silent_outages:
                flaps = f" ({self._silent_outages} brief outages not logged before this one)"
                self._silent_outages = 0
            self._logger.warning(
                "%s down: %s; retrying with backoff (cap %gs)%s",
                self.name,
                error,
                self._cap,
                flaps,
                extra=facts,
                exc_info=exc if trace else None,
            )
        else:
            self._logger.warning(
                "%s still down after %s over %.0fs; last error: %s",
                self.name,
                _attempts(self._attempts),
                now - self._down_since,
                error,
                extra=facts,
            )
        self._announced = True
        self._last_line = now

    def recovered(self) -> None:
        """Record success; logs once if the outage was logged."""
        if self._down_since is None:
            return
        now = self._clock()
        if self._announced:
            self._logger.info(
                "%s back after %.1fs and %s",
                self.name,
                now - self._down_since,
                _attempts(self._attempts),
                extra=self._facts(now, None),
            )
            self._last_line = now
        else:
            self._silent_outages += 1
        self._down_since = None
        self._attempts = 0
        self._announced = False

    def _line_due(self, now: float) -> bool:
        return self._last_line is None or now - self._last_line >= self._cap

    def _facts(self, now: float, error: str | None) -> dict[str, object]:
        down_since = self._down_since if self._down_since is not None else now
        return {
            "dependency": self.name,
            "attempts": self._attempts,
            "down_seconds": round(now - down_since, 3),
            "last_error": error,
        }


def _attempts(count: int) -> str:
    return "1 attempt" if count == 1 else f"{count} attempts"


async def retry_forever(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: BackoffPolicy,
    what: str,
    outage: OutageLog,
    stop_event: asyncio.Event | None = None,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    retry_if: Callable[[BaseException], bool] | None = None,
) -> T:
    """Call ``fn`` until it succeeds, waiting per ``policy`` between attempts.

    Every failure matching ``retry_on`` (and ``retry_if``, when given) is reported
    to ``outage`` (which keeps the log bounded) and success to
    ``outage.recovered()``. Other exceptions
    propagate at once. When ``stop_event`` is set (before an attempt or
    during a wait) this raises `Stopped`; an attempt already running is not
    interrupted (cancel the task for that). ``what`` names the operation in
    `Stopped`'s message.
    """

    async def attempt() -> T:
        if stop_event is not None and stop_event.is_set():
            raise Stopped(what)
        return await fn()

    async def sleep(seconds: float) -> None:
        if stop_event is None:
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(stop_event.wait(), timeout=seconds)
        except TimeoutError:
            return
        raise Stopped(what)

    def should_retry(exc: BaseException) -> bool:
        if not isinstance(exc, retry_on) or isinstance(exc, Stopped):
            return False
        return retry_if is None or retry_if(exc)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is not None:
            outage.failed(exc)

    retrying = AsyncRetrying(
        sleep=sleep,
        wait=policy.wait(),
        retry=retry_if_exception(should_retry),
        before_sleep=before_sleep,
        reraise=True,
    )
    result: T = await retrying(attempt)
    outage.recovered()
    return result
