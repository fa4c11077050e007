"""`Flag`: asyncio.Event's contract without its per-instance deque (issue 14)."""

from __future__ import annotations

import asyncio

import pytest

from nbwss.flag import Flag
from tests.conftest import timeout


async def test_set_wakes_every_waiter_and_stays_set_until_cleared() -> None:
    flag = Flag()
    waiting = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(task.done() for task in waiting)
    flag.set()
    async with asyncio.timeout(timeout(1)):
        assert await asyncio.gather(*waiting) == [True, True, True]
    assert flag.is_set()
    assert await flag.wait() is True  # set: at once
    flag.clear()
    assert not flag.is_set()
    again = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    assert not again.done()
    flag.set()
    async with asyncio.timeout(timeout(1)):
        await again


async def test_a_cancelled_wait_leaves_nothing_and_spares_the_others() -> None:
    flag = Flag()
    cancelled = asyncio.create_task(flag.wait())
    other = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    flag.set()
    async with asyncio.timeout(timeout(1)):
        assert await other is True
    assert flag._waiters is None

