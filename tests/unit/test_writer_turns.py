"""Turns at SQLite's write lock: urgent writers first, arrival order within each kind."""

from __future__ import annotations

import asyncio

import pytest

from osel.store.writers import WriterTurns


async def _queue(turns: WriterTurns, order: list[str], name: str, *, urgent: bool) -> None:
    async with turns.turn(urgent=urgent):
        order.append(name)
        await asyncio.sleep(0)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_urgent_writers_go_before_those_already_waiting_each_kind_in_arrival_order():
    turns = WriterTurns()
    order: list[str] = []
    await turns.acquire()  # a writer holds the lock while the others arrive
    tasks = []
    arrivals = [("other1", False), ("urgent1", True), ("other2", False), ("urgent2", True)]
    for name, urgent in arrivals:
        tasks.append(asyncio.create_task(_queue(turns, order, name, urgent=urgent)))
        await _settle()
    assert order == []  # all of them wait
    turns.release()
    await asyncio.gather(*tasks)
    assert order == ["urgent1", "urgent2", "other1", "other2"]
    assert not turns.held


async def test_a_free_lock_is_taken_at_once_whatever_the_kind():
    turns = WriterTurns()
    async with asyncio.timeout(1):
        async with turns.turn():
            assert turns.held
        async with turns.turn(urgent=True):
            assert turns.held
    assert not turns.held


@pytest.mark.parametrize(
    "handed",
    [False, True],
    ids=["cancelled-while-queued", "cancelled-just-as-it-was-handed-the-lock"],
)
async def test_a_cancelled_waiter_never_keeps_the_lock_from_the_next_one(handed: bool):
    turns = WriterTurns()
    order: list[str] = []
    await turns.acquire()
    gone = asyncio.create_task(_queue(turns, order, "gone", urgent=True))
    kept = asyncio.create_task(_queue(turns, order, "kept", urgent=False))
    await _settle()
    if handed:
        turns.release()  # hands the lock to `gone`, which has not run yet
        gone.cancel()  # ... and is cancelled before it does: it passes the lock on
    else:
        gone.cancel()  # cancelled in the queue: release() skips it
        await _settle()
        turns.release()
    async with asyncio.timeout(1):
        await kept
    assert order == ["kept"] and gone.cancelled() and not turns.held


async def test_a_writer_that_fails_gives_its_turn_to_the_next():
    turns = WriterTurns()
    order: list[str] = []

    async def failing() -> None:
        async with turns.turn():
            await asyncio.sleep(0)
            raise RuntimeError("boom")

    failed = asyncio.create_task(failing())
    await _settle()
    waiting = asyncio.create_task(_queue(turns, order, "next", urgent=False))
    with pytest.raises(RuntimeError):
        await failed
    async with asyncio.timeout(1):
        await waiting
    assert order == ["next"] and not turns.held


def test_releasing_a_lock_nobody_holds_is_a_bug_said_plainly():
    with pytest.raises(RuntimeError, match="without a turn held"):
        WriterTurns().release()
