"""`OutboxWatch`: one read of the outbox's head a period wakes every connection when it moved."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from nbwss import outbox
from nbwss.store import Store
from nbwss.wake import OutboxWatch, Waker
from tests.conftest import timeout


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "nbwss.db", tmp_path / "nbwss.key")
    yield store
    store.close()


async def reads_reach(watch: OutboxWatch, count: int) -> None:
    watch.read_done = watch.read_done or asyncio.Event()
    async with asyncio.timeout(timeout(10)):
        while watch.reads < count:
            watch.read_done.clear()
            await watch.read_done.wait()


async def test_rows_queued_without_a_wake_wake_every_connection_once(store: Store) -> None:
    waker = Waker()
    connections = [asyncio.Event(), asyncio.Event()]
    for event in connections:
        waker.register(event)
    with store.transaction() as conn:  # queued before the watch starts: not news to it
        outbox.enqueue(conn, [("JOB", {"jobId": 1})], 0.0)
    watch = OutboxWatch(store, waker, period_s=0.01)
    task = asyncio.create_task(watch.run())
    try:
        await reads_reach(watch, 3)
        assert not any(event.is_set() for event in connections)  # the head did not move
        with store.transaction() as conn:  # another process's commit, its datagram lost
            outbox.enqueue(conn, [("JOB", {"jobId": 2})], 0.0)
        async with asyncio.timeout(timeout(10)):
            await asyncio.gather(*(event.wait() for event in connections))
        for event in connections:
            event.clear()
        await reads_reach(watch, watch.reads + 3)
        assert not any(event.is_set() for event in connections)  # woken once, not every period
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_rows_queued_between_start_and_run_are_news(store: Store) -> None:
    """`start()` reads the head before any connection reads: a row committed after it
    wakes every connection at the first period, though nothing moved since `run()`."""
    waker = Waker()
    connection = asyncio.Event()
    waker.register(connection)
    watch = OutboxWatch(store, waker, period_s=0.01)
    await watch.start()
    with store.transaction() as conn:  # committed after the head was read, datagram lost
        outbox.enqueue(conn, [("JOB", {"jobId": 1})], 0.0)
    task = asyncio.create_task(watch.run())
    try:
        async with asyncio.timeout(timeout(10)):
            await connection.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_failing_store_is_logged_and_read_again_without_stopping(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "nbwss.db", tmp_path / "nbwss.key")
    waker = Waker()
    connection = asyncio.Event()
    waker.register(connection)
    watch = OutboxWatch(store, waker, period_s=0.01)
    await watch.start()
    store.close()  # every read fails from now on
    task = asyncio.create_task(watch.run())
    try:
        with capture_logs() as logged:
            await reads_reach(watch, 3)  # still running
        assert {e["event"] for e in logged} == {"wake.watch_failed"}
        assert not connection.is_set()  # a failed read is no news
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_first_read_that_failed_wakes_every_connection_at_the_first_that_works(
    tmp_path: Path,
) -> None:
    """Rows may have been committed (their datagram lost) between the failed first read
    and the first that works: the watch cannot tell, so it wakes every connection."""
    path = tmp_path / "nbwss.db"
    failing = Store(path, tmp_path / "nbwss.key")
    failing.close()  # the first read fails
    waker, connection = Waker(), asyncio.Event()
    waker.register(connection)
    watch = OutboxWatch(failing, waker, period_s=0.01)
    with capture_logs():
        await watch.start()
    working = Store(path, tmp_path / "nbwss.key")
    try:
        with working.transaction() as conn:  # committed meanwhile, no datagram
            outbox.enqueue(conn, [("JOB", {"jobId": 1})], 0.0)
        watch._store = working  # the store works again
        task = asyncio.create_task(watch.run())
        try:
            async with asyncio.timeout(timeout(5)):
                await connection.wait()
        finally:
            task.cancel()
    finally:
        working.close()
