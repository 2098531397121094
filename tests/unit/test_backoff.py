"""Backoff policy, bounded outage logging and retry_forever."""

from __future__ import annotations

import asyncio
import logging

import pytest
from tenacity import RetryCallState

from osel.backoff import BackoffPolicy, OutageLog, Stopped, retry_forever

LOGGER = "osel.test.backoff"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def outage(clock: FakeClock) -> OutageLog:
    return OutageLog("amqp", logging.getLogger(LOGGER), cap=60.0, clock=clock)


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


class TestBackoffPolicy:
    @pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 30])
    def test_wait_is_full_jitter_capped(self, attempt: int) -> None:
        """Each wait lies in [0, min(cap, initial * multiplier ** (n - 1))]."""
        policy = BackoffPolicy(initial=0.5, cap=10.0, multiplier=3.0)
        wait = policy.wait()
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        bound = min(10.0, 0.5 * 3.0 ** (attempt - 1))

        waits = [wait(state) for _ in range(200)]
        delays = [policy.delay(attempt) for _ in range(200)]

        assert all(0 <= w <= bound for w in waits + delays)
        assert max(waits) > bound / 2  # jittered over the whole range, not fixed

    @pytest.mark.parametrize(
        "kwargs",
        [{"initial": 0}, {"initial": 5, "cap": 1}, {"multiplier": 0.5}],
        ids=["zero-initial", "cap-below-initial", "shrinking"],
    )
    def test_rejects_nonsense(self, kwargs: dict[str, float]) -> None:
        """A policy that cannot back off is refused."""
        with pytest.raises(ValueError, match="backoff"):
            BackoffPolicy(**kwargs)


class TestOutageLog:
    def test_first_failure_logs_once(
        self, outage: OutageLog, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The first failure logs one warning naming the error and the cap."""
        caplog.set_level(logging.DEBUG, LOGGER)

        outage.failed(ConnectionRefusedError("connection refused"))

        [record] = records(caplog)
        assert record.levelno == logging.WARNING
        assert record.getMessage() == (
            "amqp down: ConnectionRefusedError: connection refused; retrying with backoff (cap 60s)"
        )
        assert outage.is_down
        assert outage.attempts == 1
        assert outage.down_since == 1000.0

    def test_long_outage_is_bounded(
        self, outage: OutageLog, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """10,000 failures over 10 minutes give one line, one summary per
        minute, and one line on recovery."""
        caplog.set_level(logging.DEBUG, LOGGER)

        for _ in range(10_000):
            outage.failed(OSError("unreachable"))
            clock.now += 0.06
        outage.recovered()

        lines = [r.getMessage() for r in records(caplog)]
        assert len(lines) == 1 + 9 + 1
        assert lines[0].startswith("amqp down: OSError: unreachable")
        assert all(line.startswith("amqp still down after ") for line in lines[1:-1])
        assert "last error: OSError: unreachable" in lines[1]
        assert lines[-1] == "amqp back after 600.0s and 10000 attempts"
        assert not outage.is_down
        assert outage.attempts == 0
        assert outage.down_since is None

    def test_summary_reports_attempts_and_duration(
        self, outage: OutageLog, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The summary line carries the attempt count and the time down."""
        caplog.set_level(logging.DEBUG, LOGGER)

        outage.failed(OSError("a"))
        clock.now += 30
        outage.failed(OSError("b"))
        clock.now += 30
        outage.failed(OSError("c"))

        lines = [r.getMessage() for r in records(caplog)]
        assert lines[1] == "amqp still down after 3 attempts over 60s; last error: OSError: c"
        assert records(caplog)[1].attempts == 3  # type: ignore[attr-defined]

    def test_flapping_is_bounded(
        self, outage: OutageLog, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A dependency that drops and comes back every second for 10 minutes
        logs about two lines per cap interval, not two per flap."""
        caplog.set_level(logging.DEBUG, LOGGER)

        for _ in range(600):
            outage.failed(ConnectionResetError("reset"))
            clock.now += 0.5
            outage.recovered()
            clock.now += 0.5

        lines = [r.getMessage() for r in records(caplog)]
        assert len(lines) <= 2 * (600 // 60 + 1)
        assert any("brief outages not logged" in line for line in lines)

    def test_recovered_while_up_is_silent(
        self, outage: OutageLog, caplog: pytest.LogCaptureFixture
    ) -> None:
        """recovered() without an outage logs nothing."""
        caplog.set_level(logging.DEBUG, LOGGER)

        outage.recovered()

        assert records(caplog) == []

    def test_long_error_is_truncated(
        self, outage: OutageLog, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A huge error message cannot make a huge line."""
        caplog.set_level(logging.DEBUG, LOGGER)

        outage.failed(RuntimeError("x" * 100_000))

        assert len(records(caplog)[0].getMessage()) < 700


class TestRetryForever:
    policy = BackoffPolicy(initial=0.001, cap=0.01)

    async def test_retries_until_success(
        self, outage: OutageLog, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Failures are retried and reported; success ends the outage."""
        caplog.set_level(logging.DEBUG, LOGGER)
        calls = 0

        async def flaky() -> str:
            nonlocal calls
            calls += 1
            if calls < 5:
                raise ConnectionError(f"attempt {calls}")
            return "ok"

        result = await retry_forever(flaky, policy=self.policy, what="connect", outage=outage)

        assert (result, calls) == ("ok", 5)
        lines = [r.getMessage() for r in records(caplog)]
        assert lines == [
            "amqp down: ConnectionError: attempt 1; retrying with backoff (cap 60s)",
            "amqp back after 0.0s and 4 attempts",
        ]

    async def test_other_errors_propagate(self, outage: OutageLog) -> None:
        """An exception outside retry_on is raised at once."""

        async def broken() -> None:
            raise KeyError("bug")

        with pytest.raises(KeyError):
            await retry_forever(
                broken, policy=self.policy, what="x", outage=outage, retry_on=(OSError,)
            )
        assert not outage.is_down

    async def test_stop_event_ends_retrying(self, outage: OutageLog) -> None:
        """Setting the stop event during the wait raises Stopped."""
        stop = asyncio.Event()
        slow = BackoffPolicy(initial=30, cap=30)

        async def failing() -> None:
            raise OSError("down")

        task = asyncio.create_task(
            retry_forever(failing, policy=slow, what="x", outage=outage, stop_event=stop)
        )
        await asyncio.sleep(0.05)
        stop.set()

        with pytest.raises(Stopped):
            await asyncio.wait_for(task, 2)

    async def test_stopped_before_first_attempt(self, outage: OutageLog) -> None:
        """No attempt is made once stop is set."""
        stop = asyncio.Event()
        stop.set()
        calls = 0

        async def fn() -> None:
            nonlocal calls
            calls += 1

        with pytest.raises(Stopped):
            await retry_forever(fn, policy=self.policy, what="x", outage=outage, stop_event=stop)
        assert calls == 0
