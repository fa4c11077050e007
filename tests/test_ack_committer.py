"""`AckCommitter` when something fails: every group's future is settled and the next
acks are committed (no session hangs in settle), a failure is only the failing
group's, a busy store fails the joint commit's groups at once, and the reads parked
for the end of a commit run one a loop iteration."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from nbwss import outbox
from nbwss.errors import StoreBusyError, StoreError
from nbwss.outboxes import AckCommitter
from nbwss.store import Store
from nbwss.values import PersistedBatch
from tests.conftest import timeout

GROUPS = ("A", "B", "C")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "nbwss.db", tmp_path / "nbwss.key")
    with store.transaction() as conn:
        conn.executemany(
            "INSERT INTO group_cursors (group_id, acked_seq, updated_at) VALUES (?, 0, 0)",
            [(group,) for group in GROUPS],
        )
    yield store
    store.close()


def cursors(store: Store) -> dict[str, int]:
    with store.reading() as conn:
        return dict(conn.execute("SELECT group_id, acked_seq FROM group_cursors"))


class HeldStore:
    """The store's connection held by a worker thread until `release()`: a commit
    started meanwhile is under way (its thread waits for the store)."""

    def __init__(self, store: Store) -> None:
        self._entered, self._release = threading.Event(), threading.Event()

        def hold() -> None:
            with store.transaction():
                self._entered.set()
                self._release.wait(timeout(5))

        self._holder = asyncio.ensure_future(asyncio.to_thread(hold))

    async def entered(self) -> None:
        await asyncio.to_thread(self._entered.wait, timeout(5))

    async def release(self) -> None:
        self._release.set()
        await self._holder


async def test_an_executor_refusing_a_commit_cancels_its_acks_and_later_acks_commit(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At teardown the executor may refuse work: those acks end as cancelled calls
    (nothing committed, nothing for their sessions to report as a failure), and the
    committer is not left believing a commit is under way (every later ack only queued,
    never run)."""
    loop = asyncio.get_running_loop()
    real = loop.run_in_executor
    calls = 0

    def refuse_once(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return real(*args)

    monkeypatch.setattr(loop, "run_in_executor", refuse_once)
    committer = AckCommitter(store)
    refused = committer.commit(outbox.GroupAck("A", 1, 0.0))
    later = committer.commit(outbox.GroupAck("B", 2, 0.0))
    async with asyncio.timeout(timeout(5)):
        with pytest.raises(asyncio.CancelledError):
            await refused
        assert await later == 2
    assert cursors(store) == {"A": 0, "B": 2, "C": 0}


async def test_a_parked_call_that_raises_is_logged_and_the_rest_and_queued_acks_go_on(
    store: Store,
) -> None:
    committer = AckCommitter(store)
    held = HeldStore(store)
    await held.entered()
    first = committer.commit(outbox.GroupAck("A", 1, 0.0))  # under way, waiting
    ran: list[str] = []

    def broken() -> None:
        raise ValueError("a broken parked call")

    assert committer.after_commit(broken)
    assert committer.after_commit(lambda: ran.append("second"))
    queued = committer.commit(outbox.GroupAck("B", 2, 0.0))  # waits for the next commit
    with capture_logs() as logged:
        await held.release()
        async with asyncio.timeout(timeout(5)):
            assert await first == 1
            assert await queued == 2
    assert ran == ["second"]
    assert "outbox.after_commit_failed" in [e["event"] for e in logged]
    assert cursors(store) == {"A": 1, "B": 2, "C": 0}


async def test_parked_calls_run_one_a_loop_iteration_then_the_next_commit(
    store: Store,
) -> None:
    """Each parked call is a read of up to a batch (~0.75 ms at 500 rows): a dozen back
    to back in one callback held the loop for 8-13 ms."""
    committer = AckCommitter(store)
    held = HeldStore(store)
    await held.entered()
    first = committer.commit(outbox.GroupAck("A", 1, 0.0))
    iteration = 0
    stop = False

    def tick() -> None:  # counts the loop's iterations meanwhile
        nonlocal iteration
        iteration += 1
        if not stop:
            asyncio.get_running_loop().call_soon(tick)

    ran_at: list[int] = []
    for _ in range(3):
        assert committer.after_commit(lambda: ran_at.append(iteration))
    queued = committer.commit(outbox.GroupAck("B", 2, 0.0))
    asyncio.get_running_loop().call_soon(tick)
    await held.release()
    async with asyncio.timeout(timeout(5)):
        assert await first == 1
        assert await queued == 2
    stop = True
    assert len(set(ran_at)) == 3, ran_at  # each in its own iteration
    assert committer.commits == 2


async def test_a_joint_commit_failing_on_one_groups_ack_fails_only_that_group(
    store: Store,
) -> None:
    """Not only a StoreError: whatever the joint transaction raises, each group is tried
    alone and the others' acks are committed."""
    committer = AckCommitter(store)
    held = HeldStore(store)
    await held.entered()
    first = committer.commit(outbox.GroupAck("A", 1, 0.0))
    broken_batch: Any = object()  # no message_id: AttributeError in its statements
    together = [
        committer.commit(outbox.GroupAck("B", 2, 0.0, broken_batch)),
        committer.commit(outbox.GroupAck("C", 3, 0.0)),
    ]
    await held.release()
    async with asyncio.timeout(timeout(5)):
        assert await first == 1
        outcomes = await asyncio.gather(*together, return_exceptions=True)
    assert isinstance(outcomes[0], AttributeError)
    assert outcomes[1] == 3
    assert cursors(store) == {"A": 1, "B": 0, "C": 3}


def counting_transactions(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    started: list[int] = []
    real: Callable[[], AbstractContextManager[sqlite3.Connection]] = store.transaction

    def transaction() -> AbstractContextManager[sqlite3.Connection]:
        started.append(1)
        return real()

    monkeypatch.setattr(store, "transaction", transaction)
    return started


def test_a_busy_store_fails_every_group_of_the_joint_commit_without_solo_retries(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holding the write lock past busy_timeout is no group's fault:
    a retry each would wait the timeout again each (5 groups: 2.1 s, not 0.3 s)."""
    store.conn.execute("PRAGMA busy_timeout = 50")
    other = sqlite3.connect(tmp_path / "nbwss.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    started = counting_transactions(store, monkeypatch)
    try:
        outcomes = outbox.acknowledge_together(
            store, [outbox.GroupAck(group, 1, 0.0) for group in GROUPS]
        )
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert len(started) == 1
    assert all(isinstance(outcome, StoreBusyError) for outcome in outcomes), outcomes
    assert "database is locked" in str(outcomes[0])
    assert cursors(store) == {"A": 0, "B": 0, "C": 0}


def test_a_group_specific_failure_still_retries_each_group_alone(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with store.transaction() as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE ON group_cursors WHEN NEW.group_id = 'B'"
            " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    started = counting_transactions(store, monkeypatch)
    batch = PersistedBatch("m1", 2, 2, 0.0)
    outcomes = outbox.acknowledge_together(
        store, [outbox.GroupAck(group, 1, 0.0, batch) for group in GROUPS]
    )
    assert len(started) == 4  # the joint one, then one each
    assert outcomes[0] == 1
    assert outcomes[2] == 1
    assert isinstance(outcomes[1], StoreError)
    assert not isinstance(outcomes[1], StoreBusyError)


def test_a_solo_retry_that_finds_the_store_busy_gives_the_rest_its_error(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a group-specific joint failure, a retry alone that waited the busy timeout
    is no group's fault either: the groups not yet tried are not made to wait it again."""
    batch = PersistedBatch("m1", 2, 2, 0.0)
    broken: Any = object()  # no message_id: the joint transaction fails on it
    tried: list[str] = []
    busy = StoreBusyError("database x: database is locked")

    def acknowledge(store: Store, group_id: str, *args: Any) -> int:
        tried.append(group_id)
        if group_id == "B":
            raise busy
        return 1

    monkeypatch.setattr(outbox, "acknowledge", acknowledge)
    outcomes = outbox.acknowledge_together(
        store,
        [outbox.GroupAck("A", 1, 0.0, batch), outbox.GroupAck("B", 1, 0.0, broken),
         outbox.GroupAck("C", 1, 0.0, batch)],
    )  # fmt: skip
    assert tried == ["A", "B"]
    assert outcomes == [1, busy, busy]


@pytest.mark.parametrize(
    ("code", "busy"),
    [(5, True), (261, True), (517, False), (6, False), (262, False), (1, False)],
    ids=["BUSY", "BUSY_RECOVERY", "BUSY_SNAPSHOT", "LOCKED", "LOCKED_SHAREDCACHE", "ERROR"],
)
def test_only_sqlite_busy_is_a_busy_store(code: int, busy: bool, tmp_path: Path) -> None:
    """StoreBusyError says waiting may help: SQLITE_BUSY after the busy timeout. Not
    BUSY_SNAPSHOT or LOCKED, which SQLite returns at once and waiting does not change."""
    from nbwss.store import store_error

    error = sqlite3.OperationalError("database is locked")
    error.sqlite_errorcode = code
    assert isinstance(store_error(tmp_path / "nbwss.db", error), StoreBusyError) is busy
