"""The shared Qualys budget: limits seen in headers, calls counted, waits computed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from osel.qualys.budget import Budget, Limits
from osel.store.store import Store

API = "/api/2.0/fo/scan/"
T0 = datetime(2026, 11, 28, 5, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def limits(remaining: int, *, limit: int = 5, window: int = 60, to_wait: int = 0) -> Limits:
    return Limits(rate_limit=limit, window_seconds=window, remaining=remaining, to_wait=to_wait)


def test_headers_are_read_case_insensitively_and_missing_ones_are_none():
    seen = Limits.from_headers(
        {
            "x-ratelimit-limit": "300",
            "X-RATELIMIT-REMAINING": "299",
            "X-Concurrency-Limit-Limit": "2",
        }
    )
    assert (seen.rate_limit, seen.remaining, seen.concurrency_limit) == (300, 299, 2)
    assert seen.window_seconds is None and seen.to_wait is None
    assert not Limits.from_headers({"Content-Type": "text/xml"})


async def test_nothing_known_means_go_and_every_call_is_counted(store: Store):
    clock = Clock()
    budget = Budget(store, min_remaining=1, clock=clock)
    assert await budget.wait(API, launch=True) == 0
    assert (await budget.take(API, launch=True)).wait == 0
    await budget.observe(API, limits(4))  # the answer: 4 left of 5
    assert (await budget.take(API)).wait == 0  # a poll may go: 3 left
    assert (await budget.take(API)).wait == 0  # 2 left
    assert await budget.wait(API) > 0  # following scans keeps twice min_remaining back
    assert (await budget.take(API, launch=True)).wait == 0  # a launch may go: 1 left
    assert (await budget.take(API, launch=True)).wait > 0  # min_remaining is kept back
    floor = Budget(store, min_remaining=0, clock=clock)
    assert (await floor.take(API)).wait == 0  # 0 left now
    assert (await floor.take(API)).wait > 0


async def test_calls_leaving_the_sliding_window_free_the_budget(store: Store):
    clock = Clock()
    budget = Budget(store, min_remaining=0, clock=clock)
    for _ in range(3):  # calls at T0, T0+10, T0+20
        assert (await budget.take(API)).wait == 0
        clock.advance(10)
    clock.advance(-10)
    await budget.observe(API, limits(0, limit=3, window=60))  # seen at T0+20: none left
    wait = await budget.wait(API)
    assert wait == pytest.approx(40, abs=0.01)  # the call at T0 leaves the window at T0+60
    clock.advance(wait + 0.001)
    assert await budget.wait(API) == 0
    assert (await budget.take(API)).wait == 0
    assert await budget.wait(API) > 0  # the call at T0+10 leaves at T0+70
    clock.advance(120)  # the observation is older than the window: only recent calls count
    assert await budget.wait(API) == 0


async def test_calls_of_others_are_taken_as_leaving_the_window_evenly(store: Store):
    clock = Clock()
    budget = Budget(store, min_remaining=1, clock=clock)
    await budget.observe(API, limits(1, limit=300, window=3600))  # other tools spent 299
    assert await budget.wait(API) == pytest.approx(2 * 3600 / 299, abs=0.01)
    wait = await budget.wait(API, launch=True)
    assert wait == pytest.approx(3600 / 299, abs=0.01)  # the next of theirs to leave
    clock.advance(wait + 0.01)
    assert (await budget.take(API, launch=True)).wait == 0


async def test_after_a_rate_refusal_one_call_is_free_when_qualys_said(store: Store):
    clock = Clock()
    budget = Budget(store, min_remaining=0, clock=clock)
    await budget.observe(API, limits(0, limit=300, window=3600, to_wait=3))
    assert await budget.wait(API) == pytest.approx(3)
    clock.advance(3.01)
    assert (await budget.take(API)).wait == 0
    assert (await budget.take(API)).wait > 0  # only that one, until more leave the window


async def test_to_wait_and_blocks_stop_every_call(store: Store):
    clock = Clock()
    budget = Budget(store, min_remaining=0, clock=clock)
    await budget.observe(API, limits(0, to_wait=30))
    assert await budget.wait(API) == pytest.approx(30)
    assert (await budget.take(API)).wait == pytest.approx(30)
    clock.advance(31)
    await budget.block(API, 5)  # a 409 for concurrency
    assert await budget.wait(API) == pytest.approx(5)
    await budget.observe(API, limits(4))  # an answer without ToWait keeps the block
    assert await budget.wait(API) == pytest.approx(5)
    clock.advance(6)
    assert await budget.wait(API) == 0


async def test_the_newest_observation_wins_and_apis_are_separate(store: Store):
    clock = Clock()
    budget = Budget(store, min_remaining=0, clock=clock)
    await budget.observe(API, limits(4), at=T0 + timedelta(seconds=5))
    await budget.observe(API, limits(0), at=T0)  # late answer of an older call
    (seen,) = await budget.snapshot()
    assert seen["remaining"] == 4
    await budget.observe("/api/2.0/fo/asset/ip/", limits(0, to_wait=9))
    assert await budget.wait(API) == 0
    assert await budget.wait("/api/2.0/fo/asset/ip/") > 0


async def test_two_instances_share_one_budget(store: Store):
    clock = Clock()
    one = Budget(store, min_remaining=1, clock=clock)
    two = Budget(store, min_remaining=1, clock=clock)
    await one.observe(API, limits(3))
    assert (await one.take(API, launch=True)).wait == 0  # 2 left
    assert (await two.take(API, launch=True)).wait == 0  # 1 left: the floor
    assert (await one.take(API, launch=True)).wait > 0
    assert (await two.take(API, launch=True)).wait > 0


async def test_a_call_qualys_blocked_is_given_back(store: Store):
    clock = Clock()
    budget = Budget(store, min_remaining=0, clock=clock)
    await budget.observe(API, limits(1, limit=3, window=60))
    ticket = await budget.take(API)
    assert ticket.wait == 0 and (await budget.take(API)).wait > 0
    await budget.refund(ticket)  # the answer was a 409 for concurrency: not counted
    assert (await budget.take(API)).wait == 0
