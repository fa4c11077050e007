"""`nbwss notify -`'s spool (issue 14, item 4): a private temporary database attached for
one intake and detached after it, whether the input was queued or refused, so nothing of
it stays on the connection or goes into the store's own file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbwss import intake
from nbwss.errors import NotificationError
from nbwss.notifications import encode_data
from nbwss.store import Store

JOB = {
    "scheduleType": "ST_FULL", "clientName": "c1", "status": 0, "startTime": 1459829698,
    "state": "DONE", "policyName": "p", "parentJobId": 1, "policyType": "VMWARE",
    "jobType": "BACKUP",
}  # fmt: skip


def rows(count: int, refuse_at: int | None = None) -> Iterator[tuple[str, str]]:
    for n in range(1, count + 1):
        if n == refuse_at:
            raise NotificationError(f"line {n}: refused")
        yield "JOB", encode_data({**JOB, "jobId": n})


def databases(store: Store) -> list[str]:
    with store.reading() as conn:
        return [name for _, name, _ in conn.execute("PRAGMA database_list")]


def tables(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [name for (name,) in conn.execute("SELECT name FROM sqlite_master")]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "nbwss.db", tmp_path / "nbwss.key")
    yield opened
    opened.close()


def test_the_spool_is_detached_after_a_queued_intake(store: Store) -> None:
    before = tables(store.path)
    queued = intake.queue_stream(store, rows(12), lambda: 1.0, chunk_size=5)
    assert (queued.count, queued.last_seq - queued.first_seq) == (12, 11)
    assert databases(store) == ["main"]
    assert tables(store.path) == before


def test_the_spool_is_detached_after_a_refused_intake(store: Store) -> None:
    with pytest.raises(NotificationError, match="line 7"):
        intake.queue_stream(store, rows(12, refuse_at=7), lambda: 1.0)
    assert databases(store) == ["main"]
    with store.reading() as conn:
        assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone() == (0,)
        assert not conn.in_transaction


def test_a_spool_left_attached_is_replaced_not_appended_to(store: Store) -> None:
    with store.reading() as conn:  # as a failed tidy-up would leave it
        conn.execute("ATTACH DATABASE '' AS intake_spool")
        conn.execute("CREATE TABLE intake_spool.rows (object TEXT NOT NULL, data TEXT NOT NULL)")
        conn.execute("INSERT INTO intake_spool.rows VALUES ('JOB', '{}')")
    queued = intake.queue_stream(store, rows(3), lambda: 1.0)
    assert queued.count == 3
    with store.reading() as conn:
        texts = [t for (t,) in conn.execute("SELECT data FROM outbox ORDER BY seq")]
    assert texts == [encode_data({**JOB, "jobId": n}) for n in (1, 2, 3)]
    assert databases(store) == ["main"]
