"""The groups' joint ack commit when something fails: a failure is only the failing
group's, and a busy store fails the joint commit's groups at once."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from nbwss import outbox
from nbwss.errors import StoreBusyError, StoreError
from nbwss.store import Store
from nbwss.values import PersistedBatch

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
