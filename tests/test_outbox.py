"""The durable outbox over a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from nbwss import outbox
from nbwss.endpoints import EndpointDetails
from nbwss.errors import NotificationError, StoreError
from nbwss.notifications import encode_data
from nbwss.outbox import Queued
from nbwss.store import Store
from nbwss.values import GroupPosition, OutboxEvent, PersistedBatch

T0 = 1_700_000_000.0
DAY = 86_400.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "nbwss.db", tmp_path / "nbwss.key")
    yield store
    store.close()


def job(job_id: int) -> dict[str, Any]:
    return {"jobId": job_id, "state": "ACTIVE", "clientName": "vm1"}


def add_group(store: Store, group_id: str) -> None:
    """A server group as `endpoint add` makes one (its cursor starts at the head)."""
    details = EndpointDetails(
        token="token-of-the-endpoint==", priority=1, group_id=group_id,
        host_name=f"{group_id.lower()}.test", url="wss://127.0.0.1:1/cfs",
    )  # fmt: skip
    store.add_endpoint(details, b"certificate", "00:11")


def put(store: Store, *job_ids: int, now: float = T0) -> int:
    with store.transaction() as conn:
        return outbox.enqueue(conn, [("JOB", job(j)) for j in job_ids], now)


def seqs(store: Store) -> list[int]:
    with store.reading() as conn:
        return [seq for (seq,) in conn.execute("SELECT seq FROM outbox ORDER BY seq")]


def test_enqueue_returns_last_seq_and_is_durable_only_on_commit(store: Store) -> None:
    assert put(store, 1, 2, 3) == 3

    def failing_poll() -> None:
        with store.transaction() as conn:
            assert outbox.enqueue(conn, [("IMAGE", {"backupId": "b"})], T0) == 4
            raise RuntimeError("the caller's watermark update failed")

    with pytest.raises(RuntimeError):
        failing_poll()
    assert seqs(store) == [1, 2, 3]
    events = outbox.read_events(store, 0, 10)
    assert events[0] == OutboxEvent(1, "JOB", encode_data(job(1)))


def test_enqueue_of_nothing_returns_the_head(store: Store) -> None:
    put(store, 1, 2)
    assert put(store) == 2


def test_seq_is_never_reused_after_a_purge(store: Store) -> None:
    add_group(store, "G1")
    put(store, 1, 2)
    outbox.acknowledge(store, "G1", 2, T0)
    assert outbox.purge(store) == 2
    assert seqs(store) == []
    assert put(store, 3) == 3


def test_queue_chunked_commits_each_chunk_and_reports_the_range(store: Store) -> None:
    put(store, 1)
    commits: list[int] = []
    rows = [("JOB", encode_data(job(n))) for n in range(12)]
    queued = outbox.queue_chunked(
        store, rows, lambda: T0, chunk_size=5, after_commit=lambda: commits.append(len(seqs(store)))
    )
    assert queued == Queued(12, 2, 13)
    assert commits == [6, 11, 13]  # each chunk visible (committed) before the next
    assert [e.data for e in outbox.read_events(store, 1, 100)] == [text for _, text in rows]


def test_a_new_group_starts_at_the_head(store: Store) -> None:
    put(store, 1, 2)
    add_group(store, "G1")
    assert outbox.load_position(store, "G1", T0) == GroupPosition(2, None)
    put(store, 3)
    assert [e.seq for e in outbox.read_events(store, 2, 10)] == [3]


def test_a_group_without_endpoints_gets_no_cursor(store: Store) -> None:
    add_group(store, "G1")
    put(store, 1, 2)
    assert outbox.load_position(store, "GONE", T0) == GroupPosition(2, None)
    outbox.acknowledge(store, "G1", 2, T0)
    outbox.purge(store)
    assert seqs(store) == []  # the forgotten group held nothing back


def test_read_events_in_order_with_limit_and_ceiling(store: Store) -> None:
    put(store, *range(1, 11))
    assert [e.seq for e in outbox.read_events(store, 3, 4)] == [4, 5, 6, 7]
    assert [e.seq for e in outbox.read_events(store, 3, 100, up_to_seq=5)] == [4, 5]
    assert outbox.read_events(store, 10, 5) == []


def test_read_events_if_free_reads_or_says_the_store_is_busy(store: Store) -> None:
    put(store, *range(1, 6))
    assert outbox.read_events_if_free(store, 1, 2) == outbox.read_events(store, 1, 2)
    assert [e.seq for e in outbox.read_events_if_free(store, 3, 9) or []] == [4, 5]
    with store.reading():  # another user of the connection: no waiting for it
        assert outbox.read_events_if_free(store, 1, 2) is None
    assert outbox.read_events_if_free(store, 5, 2) == []


def test_persisted_batch_survives_a_reopen_and_ack_clears_it(tmp_path: Path) -> None:
    first = Store(tmp_path / "db", tmp_path / "key")
    add_group(first, "G1")
    put(first, 1, 2, 3)
    outbox.persist_batch(first, "G1", PersistedBatch("ID-A", 1, 2, T0))
    first.close()

    second = Store(tmp_path / "db", tmp_path / "key")
    try:
        position = outbox.load_position(second, "G1", T0 + 9)
        assert position == GroupPosition(0, PersistedBatch("ID-A", 1, 2, T0))
        outbox.acknowledge(second, "G1", 2, T0 + 10)
        assert outbox.load_position(second, "G1", T0 + 11) == GroupPosition(2, None)
    finally:
        second.close()


def test_batch_of_a_deleted_group_is_not_persisted(store: Store) -> None:
    put(store, 1)
    outbox.persist_batch(store, "GONE", PersistedBatch("ID", 1, 1, T0))
    with store.reading() as conn:
        assert conn.execute("SELECT COUNT(*) FROM group_batches").fetchone() == (0,)


def test_cursor_never_moves_back(store: Store) -> None:
    add_group(store, "G1")
    put(store, 1, 2, 3)
    outbox.acknowledge(store, "G1", 3, T0)
    outbox.acknowledge(store, "G1", 1, T0)
    assert outbox.load_position(store, "G1", T0).acked_seq == 3


def test_purge_keeps_what_any_group_still_needs(store: Store) -> None:
    add_group(store, "G1")
    add_group(store, "G2")
    put(store, 1, 2, 3, 4)
    outbox.acknowledge(store, "G1", 4, T0)
    assert outbox.purge(store) == 0
    assert seqs(store) == [1, 2, 3, 4]
    outbox.acknowledge(store, "G2", 2, T0)
    assert seqs(store) == [1, 2, 3, 4]  # an acknowledgement deletes nothing itself
    assert outbox.purge(store) == 2
    assert seqs(store) == [3, 4]


def test_purge_goes_in_chunks_and_deletes_all_that_every_group_acknowledged(
    store: Store,
) -> None:
    add_group(store, "G1")
    put(store, *range(1, 12))
    outbox.acknowledge(store, "G1", 10, T0)
    assert outbox.purge(store, chunk=3) == 10
    assert seqs(store) == [11]


def test_purge_without_any_group_drops_what_nobody_can_receive(store: Store) -> None:
    put(store, 1, 2)
    assert outbox.purge(store) == 2
    assert seqs(store) == []


def test_retention_drops_old_events_loudly_and_moves_cursors(store: Store) -> None:
    add_group(store, "G1")
    add_group(store, "G2")
    put(store, 1, 2, 3, now=T0)
    put(store, 4, now=T0 + 20 * DAY)
    outbox.acknowledge(store, "G1", 2, T0)
    outbox.persist_batch(store, "G2", PersistedBatch("ID", 1, 3, T0))
    with capture_logs() as logged:
        expired = outbox.expire(store, T0 + 31 * DAY, retention_days=30)
    assert expired.deleted == 3
    assert expired.unacked_by_group == {"G1": 1, "G2": 3}
    [event] = [e for e in logged if e["event"] == "outbox.expired_unacknowledged"]
    assert event["log_level"] == "error"
    assert event["dropped"] == 4
    assert event["groups"] == ["G1", "G2"]
    assert seqs(store) == [4]
    assert outbox.load_position(store, "G2", T0) == GroupPosition(3, None)
    assert outbox.load_position(store, "G1", T0).acked_seq == 3


def test_retention_of_acknowledged_events_is_quiet(store: Store) -> None:
    add_group(store, "G1")
    put(store, 1, 2, now=T0)
    put(store, 3, now=T0 + 40 * DAY)
    with store.transaction() as conn:  # acknowledged, but not purged yet
        conn.execute("UPDATE group_cursors SET acked_seq = 2")
    with capture_logs() as logged:
        expired = outbox.expire(store, T0 + 40 * DAY, retention_days=30)
    assert expired.deleted == 2
    assert expired.unacked_by_group == {}
    assert logged == []
    assert outbox.expire(store, T0 + 40 * DAY, retention_days=30).deleted == 0


def test_backlog_per_group(store: Store) -> None:
    add_group(store, "G1")
    add_group(store, "G2")
    put(store, 1, 2, now=T0)
    put(store, 3, now=T0 + 5)
    outbox.acknowledge(store, "G1", 2, T0)
    outbox.persist_batch(store, "G2", PersistedBatch("ID-2", 1, 3, T0))
    g1, g2 = outbox.backlog(store, T0 + 10)
    assert (g1.group_id, g1.acked_seq, g1.backlog, g1.outstanding_id) == ("G1", 2, 1, None)
    assert g1.oldest_unacked_age_s == pytest.approx(5)
    assert (g2.backlog, g2.outstanding_id) == (3, "ID-2")
    assert g2.oldest_unacked_age_s == pytest.approx(10)
    outbox.acknowledge(store, "G1", 3, T0)
    assert outbox.backlog(store, T0)[0].oldest_unacked_age_s is None


def test_an_ack_behind_the_cursor_persists_no_next_batch_and_says_the_cursor(
    store: Store,
) -> None:
    add_group(store, "G1")
    put(store, 1, 2, 3)
    next_batch = PersistedBatch("ID-B", 2, 2, T0)
    assert outbox.acknowledge(store, "G1", 1, T0, next_batch) == 1
    assert outbox.load_position(store, "G1", T0) == GroupPosition(1, next_batch)
    with store.transaction() as conn:  # the group deleted and added again at the head
        conn.execute("UPDATE group_cursors SET acked_seq = 3")
    assert outbox.acknowledge(store, "G1", 2, T0, PersistedBatch("ID-C", 3, 3, T0)) == 3
    assert outbox.load_position(store, "G1", T0) == GroupPosition(3, None)
    assert outbox.acknowledge(store, "GONE", 2, T0) is None


def test_ack_and_the_next_batch_are_one_transaction(store: Store) -> None:
    add_group(store, "G1")
    put(store, 1, 2, 3)
    outbox.persist_batch(store, "G1", PersistedBatch("ID-A", 1, 2, T0))
    outbox.acknowledge(store, "G1", 2, T0, next_batch=PersistedBatch("ID-B", 3, 3, T0 + 1))
    assert outbox.load_position(store, "G1", T0) == GroupPosition(
        2, PersistedBatch("ID-B", 3, 3, T0 + 1)
    )


def test_queue_stream_commits_in_chunks_in_order_once_every_row_is_in(store: Store) -> None:
    put(store, 1)
    commits: list[int] = []
    texts = [encode_data(job(n)) for n in range(12)]
    other = sqlite3.connect(store.path)  # another process's view (the store is busy)

    def rows() -> Iterator[tuple[str, str]]:
        for text in texts:
            (count,) = other.execute("SELECT COUNT(*) FROM outbox").fetchone()
            assert count == 1, "a row was committed before the input was all read"
            yield "JOB", text

    queued = outbox.queue_stream(
        store, rows(), lambda: T0, chunk_size=5,
        after_commit=lambda: commits.append(len(seqs(store))),
    )  # fmt: skip
    assert queued == Queued(12, 2, 13)
    assert commits == [6, 11, 13]  # each chunk visible (committed) before the next
    assert [e.data for e in outbox.read_events(store, 1, 100)] == texts
    other.close()


def test_queue_stream_refused_mid_stream_queues_nothing_and_leaves_no_spool(
    store: Store,
) -> None:
    def rows() -> Iterator[tuple[str, str]]:
        yield "JOB", encode_data(job(1))
        raise NotificationError("line 2: refused")

    with pytest.raises(NotificationError, match="line 2"):
        outbox.queue_stream(store, rows(), lambda: T0)
    assert seqs(store) == []
    # The next intake on the same connection starts from an empty spool.
    queued = outbox.queue_stream(store, iter([("JOB", encode_data(job(2)))]), lambda: T0)
    assert queued.count == 1
    assert [json.loads(e.data)["jobId"] for e in outbox.read_events(store, 0, 10)] == [2]
    with store.reading() as conn:
        assert conn.execute("SELECT name FROM temp.sqlite_master").fetchall() == []


def test_a_known_group_loads_its_position_without_the_write_lock(tmp_path: Path) -> None:
    """A reconnect only reads: it must not queue behind a writer (the intake, 999 others)."""
    store = Store(tmp_path / "nbwss.db", tmp_path / "nbwss.key")
    writer = sqlite3.connect(tmp_path / "nbwss.db", isolation_level=None)
    try:
        add_group(store, "G1")
        put(store, 1, 2, 3)
        outbox.persist_batch(store, "G1", PersistedBatch("ID-A", 1, 2, T0))
        store.conn.execute("PRAGMA busy_timeout = 0")  # a wait for the lock fails at once
        writer.execute("BEGIN IMMEDIATE")
        assert outbox.load_position(store, "G1", T0) == GroupPosition(
            0, PersistedBatch("ID-A", 1, 2, T0)
        )
        writer.execute("ROLLBACK")
        outbox.acknowledge(store, "G1", 2, T0)
        writer.execute("BEGIN IMMEDIATE")
        assert outbox.load_position(store, "G1", T0) == GroupPosition(2, None)
    finally:
        writer.close()
        store.close()


def test_backlog_counts_match_the_rows_after_each_cursor(store: Store) -> None:
    """The backlog is arithmetic on the seq run (no COUNT): it must agree with counting,
    through intake, a rolled-back intake, acks, purges, retention and a group added
    after the outbox emptied (its cursor is then below the run)."""

    def check() -> None:
        with store.reading() as conn:
            counted = dict(conn.execute(
                "SELECT c.group_id, (SELECT COUNT(*) FROM outbox o WHERE o.seq > c.acked_seq)"
                " FROM group_cursors c"
            ).fetchall())  # fmt: skip
        assert {g.group_id: g.backlog for g in outbox.backlog(store, T0)} == counted

    add_group(store, "G1")
    check()
    put(store, 1, 2, 3)
    add_group(store, "G2")
    check()
    def rolled_back() -> None:
        with store.transaction() as conn:
            outbox.enqueue(conn, [("JOB", job(4))], T0)
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        rolled_back()
    assert put(store, 5, 6, now=T0 + 40 * DAY) == 5  # seqs 4 and 5: no gap where 4 was
    check()
    outbox.acknowledge(store, "G1", 2, T0)
    outbox.acknowledge(store, "G2", 4, T0)
    check()  # acknowledged, not deleted yet (the janitor does that)
    outbox.delete_acknowledged(store)
    assert seqs(store) == [3, 4, 5]
    check()
    outbox.acknowledge(store, "G1", 4, T0)
    check()
    outbox.delete_acknowledged(store)
    assert seqs(store) == [5]
    check()
    outbox.acknowledge(store, "G2", 5, T0)
    outbox.acknowledge(store, "G1", 5, T0)
    outbox.delete_acknowledged(store)  # the outbox is empty now
    put(store, 7, now=T0 + 40 * DAY)
    check()
    store.delete_endpoint("g1.test")
    store.delete_endpoint("g2.test")
    outbox.purge(store)  # no group: everything goes
    assert seqs(store) == []
    add_group(store, "G3")  # the outbox is empty: its cursor starts at 0, below the run
    put(store, 8, 9, now=T0)
    check()
    put(store, 10, now=T0 + 40 * DAY)
    outbox.expire(store, T0 + 35 * DAY, retention_days=30)
    check()
    assert [g.backlog for g in outbox.backlog(store, T0)] == [1]


def test_a_new_store_gives_back_the_pages_a_drained_backlog_freed(tmp_path: Path) -> None:
    store = Store(tmp_path / "nbwss.db", tmp_path / "nbwss.key")
    try:
        with store.reading() as conn:
            assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # INCREMENTAL
        add_group(store, "G1")
        last = put(store, *range(20_000))
        outbox.acknowledge(store, "G1", last, T0)
        outbox.delete_acknowledged(store)  # the janitor's delete; the pages are kept
        with store.reading() as conn:
            (free,) = conn.execute("PRAGMA freelist_count").fetchone()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        grown = store.path.stat().st_size
        assert free > 100
        assert outbox.reclaim_free_pages(store, pages_per_step=64) == free  # several steps
        with store.reading() as conn:
            assert conn.execute("PRAGMA freelist_count").fetchone() == (0,)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert store.path.stat().st_size < grown / 10
        assert seqs(store) == []
        assert put(store, 1) == last + 1  # and it works on as before
    finally:
        store.close()


def test_an_older_store_without_auto_vacuum_keeps_and_reuses_its_free_pages(
    tmp_path: Path,
) -> None:
    """A store made by an earlier version has auto_vacuum=NONE: reclaiming does nothing (and
    does not loop), and the free pages serve the next backlog instead of growing the file."""
    path = tmp_path / "nbwss.db"
    old = sqlite3.connect(path)
    old.execute("PRAGMA auto_vacuum = NONE")
    old.execute("CREATE TABLE placeholder (x)")  # fixes the mode, as an old schema did
    old.close()
    store = Store(path, tmp_path / "nbwss.key")
    try:
        with store.reading() as conn:
            assert conn.execute("PRAGMA auto_vacuum").fetchone() == (0,)
        add_group(store, "G1")
        outbox.acknowledge(store, "G1", put(store, *range(20_000)), T0)
        assert outbox.purge(store) == 20_000
        with store.reading() as conn:
            assert conn.execute("PRAGMA freelist_count").fetchone()[0] > 100
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        grown = path.stat().st_size
        outbox.acknowledge(store, "G1", put(store, *range(20_000)), T0)
        outbox.delete_acknowledged(store)
        with store.reading() as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert path.stat().st_size < grown * 1.05  # not twice: the free pages were reused
    finally:
        store.close()


def test_acks_of_several_groups_commit_together_as_each_would_alone(store: Store) -> None:
    for group in ("G1", "G2", "G3"):
        add_group(store, group)
    put(store, 1, 2, 3)
    with store.transaction() as conn:  # G3 deleted and added again at a later head
        conn.execute("UPDATE group_cursors SET acked_seq = 3 WHERE group_id = 'G3'")
    next_batch = PersistedBatch("ID-B", 3, 3, T0)
    outcomes = outbox.acknowledge_together(store, [
        outbox.GroupAck("G1", 2, T0, next_batch), outbox.GroupAck("G2", 1, T0),
        outbox.GroupAck("G3", 2, T0, PersistedBatch("ID-C", 3, 3, T0)),
        outbox.GroupAck("GONE", 2, T0),
    ])  # fmt: skip
    assert outcomes == [2, 1, 3, None]
    assert outbox.load_position(store, "G1", T0) == GroupPosition(2, next_batch)
    assert outbox.load_position(store, "G2", T0) == GroupPosition(1, None)
    assert outbox.load_position(store, "G3", T0) == GroupPosition(3, None)


def test_a_joint_ack_that_fails_fails_only_the_failing_group(store: Store) -> None:
    for group in ("G1", "BAD", "G2"):
        add_group(store, group)
    put(store, 1, 2)
    with store.transaction() as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE ON group_cursors WHEN NEW.group_id = 'BAD'"
            " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    outcomes = outbox.acknowledge_together(
        store, [outbox.GroupAck(g, 2, T0) for g in ("G1", "BAD", "G2")]
    )
    assert outcomes[0] == outcomes[2] == 2
    assert isinstance(outcomes[1], StoreError)
    assert "refused by the test" in str(outcomes[1])
    assert [outbox.load_position(store, g, T0).acked_seq for g in ("G1", "BAD", "G2")] == [
        2, 0, 2,
    ]  # fmt: skip
