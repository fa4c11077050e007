"""The durable outbox: every notification, in order, until every server group has it.

Rows of `outbox` carry a global sequence number (`seq`, AUTOINCREMENT so a number is
never reused after a purge). Each server group has a cursor (`group_cursors.acked_seq`,
the last seq it acknowledged) and at most one batch in flight (`group_batches`, kept so
that a resend after a restart carries the same message id). A notification is durable
once its transaction commits; only then may intake report it queued.

Calls are short and synchronous. The daemon runs them through `asyncio.to_thread`; the
CLI calls them directly. Queueing (`enqueue`, `queue_chunked`, `queue_stream`) is
`nbwss.intake`'s, re-exported here.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from nbwss import logs
from nbwss.errors import StoreBusyError
from nbwss.intake import INTAKE_CHUNK as INTAKE_CHUNK  # re-exported: intake was here
from nbwss.intake import Queued as Queued
from nbwss.intake import enqueue as enqueue
from nbwss.intake import enqueue_encoded as enqueue_encoded
from nbwss.intake import queue_chunked as queue_chunked
from nbwss.intake import queue_stream as queue_stream
from nbwss.intake import sqlite_temp_directory as sqlite_temp_directory
from nbwss.store import Store
from nbwss.values import GroupPosition, OutboxEvent, PersistedBatch

log = logs.get_logger("nbwss.outbox")

RECLAIM_PAGES_PER_STEP = 2_048  # 8 MiB of 4 KiB pages: a short write lock
AUTO_VACUUM_INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL
PURGE_CHUNK = 5_000
SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class GroupBacklog:
    """A group's delivery figures for `nbwss status` and the metrics collector."""

    group_id: str
    acked_seq: int
    backlog: int
    oldest_unacked_age_s: float | None
    outstanding_id: str | None
    cursor_moved_at: float  # when the group last acknowledged (or was added)


@dataclass(frozen=True, slots=True)
class Expired:
    """What retention dropped: rows deleted, and per group how many it had not acknowledged."""

    deleted: int
    unacked_by_group: dict[str, int]


# -- a group's delivery ------------------------------------------------------------------------


def load_position(store: Store, group_id: str, now: float) -> GroupPosition:
    """The group's cursor and in-flight batch.

    A configured group without a cursor (added by an older release) starts at the head.
    A group with no endpoint left gets no cursor: a forgotten group must not hold back
    the purge; it starts at the head, and its acknowledgements move nothing.

    A known group (the common case: every reconnect) is read without a write lock, so
    a thousand connections at startup do not queue behind each other and the intake.
    """
    with store.reading() as conn:
        # One statement, one snapshot: the cursor and its batch agree.
        known = conn.execute(
            "SELECT c.acked_seq, b.message_id, b.first_seq, b.last_seq, b.sent_at"
            " FROM group_cursors c LEFT JOIN group_batches b ON b.group_id = c.group_id"
            " WHERE c.group_id = ?",
            (group_id,),
        ).fetchone()
        (legacy_up_to_seq,) = conn.execute("SELECT up_to_seq FROM outbox_legacy").fetchone()
    if known is not None:
        acked_seq, *batch = known
        outstanding = PersistedBatch(*batch) if batch[0] is not None else None
        return _position(int(acked_seq), outstanding, legacy_up_to_seq)
    with store.transaction() as conn:
        conn.execute(
            "INSERT OR IGNORE INTO group_cursors (group_id, acked_seq, updated_at)"
            " SELECT ?, (SELECT COALESCE(MAX(seq), 0) FROM outbox), ?"
            " WHERE EXISTS (SELECT 1 FROM endpoints WHERE group_id = ?)",
            (group_id, now, group_id),
        )
        cursor = conn.execute(
            "SELECT acked_seq FROM group_cursors WHERE group_id = ?", (group_id,)
        ).fetchone()
        if cursor is None:
            cursor = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()
        row = conn.execute(
            "SELECT message_id, first_seq, last_seq, sent_at FROM group_batches WHERE group_id = ?",
            (group_id,),
        ).fetchone()
    return _position(int(cursor[0]), PersistedBatch(*row) if row else None, legacy_up_to_seq)


def _position(
    acked_seq: int, outstanding: PersistedBatch | None, legacy_up_to_seq: int
) -> GroupPosition:
    if outstanding is not None and outstanding.last_seq <= acked_seq:
        outstanding = None  # already acknowledged (e.g. retention moved the cursor past it)
    return GroupPosition(acked_seq, outstanding, legacy_up_to_seq)


def read_events(
    store: Store, after_seq: int, limit: int, up_to_seq: int | None = None
) -> list[OutboxEvent]:
    """The oldest `limit` events after `after_seq` (and not past `up_to_seq`), in seq order."""
    with store.reading() as conn:
        return _select_events(conn, after_seq, limit, up_to_seq)


def read_events_if_free(
    store: Store, after_seq: int, limit: int, up_to_seq: int | None = None
) -> list[OutboxEvent] | None:
    """`read_events`, or None at once when another thread is using the store.

    For the event loop: a read in WAL mode does not wait for a writer, so when the
    store's connection is free it is a short call (500 rows: a few hundred us), and
    it saves two thread hand-offs, which cost as much on a loaded machine. When the
    connection is busy (another group's commit, the janitor), the caller goes to a
    worker thread rather than wait.
    """
    with store.reading_if_free() as conn:
        return None if conn is None else _select_events(conn, after_seq, limit, up_to_seq)


def _select_events(
    conn: sqlite3.Connection, after_seq: int, limit: int, up_to_seq: int | None
) -> list[OutboxEvent]:
    ceiling = up_to_seq if up_to_seq is not None else (1 << 62)
    rows = conn.execute(
        "SELECT seq, object, data FROM outbox WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
        (after_seq, ceiling, limit),
    ).fetchall()
    # `tuple.__new__` straight from C, not `_make` (a Python frame a row): 35 us less a
    # batch of 500. The statement gives three columns, `_make`'s length check is moot.
    return list(map(tuple.__new__, itertools.repeat(OutboxEvent, len(rows)), rows))


def persist_batch(store: Store, group_id: str, batch: PersistedBatch) -> None:
    """Record the group's in-flight batch before its first send."""
    with store.transaction() as conn:
        _persist_batch(conn, group_id, batch)


def _persist_batch(conn: sqlite3.Connection, group_id: str, batch: PersistedBatch) -> None:
    # A group deleted meanwhile keeps no row.
    conn.execute(
        "INSERT OR REPLACE INTO group_batches (group_id, message_id, first_seq, last_seq,"
        " sent_at) SELECT ?, ?, ?, ?, ? WHERE EXISTS"
        " (SELECT 1 FROM group_cursors WHERE group_id = ?)",
        (group_id, batch.message_id, batch.first_seq, batch.last_seq, batch.sent_at, group_id),
    )


def acknowledge(
    store: Store,
    group_id: str,
    last_seq: int,
    now: float,
    next_batch: PersistedBatch | None = None,
) -> int | None:
    """Advance the group's cursor to `last_seq` and forget its batch, in one transaction;
    the cursor after it (None: the group has none, it was deleted).

    `next_batch` (read ahead while the ack was awaited) becomes the batch in flight in
    the same transaction, unless the cursor is past `last_seq` already (the group was
    deleted and added again at a later head meanwhile): then the caller reads again from
    the cursor returned. The cursor only moves forward. Nothing is purged here: the
    delete of what every group acknowledged cost more than the rest of the ack (and the
    next batch waits for this commit); the janitor does it, off the delivery's path
    (`purge`).
    """
    with store.transaction() as conn:
        return _acknowledge(conn, GroupAck(group_id, last_seq, now, next_batch))


@dataclass(frozen=True, slots=True)
class GroupAck:
    """One group's acknowledgement to commit: `acknowledge`'s arguments."""

    group_id: str
    last_seq: int
    now: float
    next_batch: PersistedBatch | None = None


def acknowledge_together(store: Store, acks: Sequence[GroupAck]) -> list[int | Exception | None]:
    """`acknowledge` for several groups (one ack each) in one transaction; each one's
    cursor after it, in order.

    Each group's statements are `acknowledge`'s, so each outcome is the one it would
    have had alone; one commit instead of one each saves a transaction's lock, WAL
    append and thread hand-off per ack when many groups are acknowledged at once. If
    the joint transaction fails, whatever the exception, each is tried alone, so a
    failure is only the failing group's (its exception is its outcome). Except when
    the store was busy (`StoreBusyError`: another process held the lock past the busy
    timeout): that is no group's fault, and a retry each would wait the timeout again
    each, so every group has that error at once; the same when a retry alone finds the
    store busy: the groups not yet tried have its error.
    """
    try:
        with store.transaction() as conn:
            return [_acknowledge(conn, ack) for ack in acks]
    except StoreBusyError as busy:
        return [busy] * len(acks)
    except Exception as joint_failure:
        if len(acks) == 1:
            return [joint_failure]
    outcomes: list[int | Exception | None] = []
    for ack in acks:
        try:
            outcomes.append(acknowledge(store, ack.group_id, ack.last_seq, ack.now, ack.next_batch))
        except StoreBusyError as busy:
            return [*outcomes, *[busy] * (len(acks) - len(outcomes))]
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


def _acknowledge(conn: sqlite3.Connection, ack: GroupAck) -> int | None:
    group_id, last_seq, next_batch = ack.group_id, ack.last_seq, ack.next_batch
    conn.execute(
        "UPDATE group_cursors SET acked_seq = MAX(acked_seq, ?), updated_at = ?"
        " WHERE group_id = ?",
        (last_seq, ack.now, group_id),
    )
    # The common case in two statements (each one a GIL round trip): the next batch
    # replaces the row of the acknowledged one, where the cursor is where it moved.
    if next_batch is not None and conn.execute(
        "INSERT OR REPLACE INTO group_batches (group_id, message_id, first_seq, last_seq,"
        " sent_at) SELECT group_id, ?, ?, ?, ? FROM group_cursors"
        " WHERE group_id = ? AND acked_seq = ?",
        (next_batch.message_id, next_batch.first_seq, next_batch.last_seq,
         next_batch.sent_at, group_id, last_seq),
    ).rowcount:  # fmt: skip
        return last_seq
    conn.execute("DELETE FROM group_batches WHERE group_id = ?", (group_id,))
    row = conn.execute(
        "SELECT acked_seq FROM group_cursors WHERE group_id = ?", (group_id,)
    ).fetchone()
    return None if row is None else int(row[0])


def _purge_acknowledged(conn: sqlite3.Connection, limit: int) -> int:
    """Delete the oldest `limit` events acknowledged by every group; how many went."""
    (floor,) = conn.execute("SELECT MIN(acked_seq) FROM group_cursors").fetchone()
    # No group at all: nobody will ever receive these (a group added later starts at the
    # head, spec section 7), so they are acknowledged by every group there is.
    ceiling = (1 << 62) if floor is None else floor
    return conn.execute(
        "DELETE FROM outbox WHERE seq IN"
        " (SELECT seq FROM outbox WHERE seq <= ? ORDER BY seq LIMIT ?)",
        (ceiling, limit),
    ).rowcount


def purge(store: Store, chunk: int = PURGE_CHUNK) -> int:
    """Delete every event acknowledged by every group (`delete_acknowledged`), then give
    the file's free pages back (`reclaim_free_pages`); how many events were deleted."""
    deleted = delete_acknowledged(store, chunk)
    reclaim_free_pages(store)
    return deleted


def delete_acknowledged(store: Store, chunk: int = PURGE_CHUNK) -> int:
    """Delete every event acknowledged by every group; how many were deleted.

    One transaction per `chunk` events. Called in one go it may take the store's lock
    again at once after each chunk (a thread lock is not fair): the janitor's loop
    deletes one chunk per call instead (`delete_acknowledged_chunk`), so that an ack
    waiting for the lock gets it between two chunks.
    """
    deleted = 0
    while True:
        count = delete_acknowledged_chunk(store, chunk)
        deleted += count
        if count < chunk:
            return deleted


def delete_acknowledged_chunk(store: Store, chunk: int = PURGE_CHUNK) -> int:
    """Delete at most `chunk` events acknowledged by every group, in one transaction."""
    with store.transaction() as conn:
        return _purge_acknowledged(conn, chunk)


def reclaim_free_pages(store: Store, pages_per_step: int = RECLAIM_PAGES_PER_STEP) -> int:
    """Shrink the file by its free pages (a drained backlog's), `pages_per_step` a
    transaction so that acknowledgements interleave; how many pages were given back.

    Free pages are reused by later inserts anyway; giving them back is for the disk
    (a backlog of 1,000,000 leaves about 220 MiB). Only a store with
    auto_vacuum=INCREMENTAL (every store created by this version or later) can; for an older
    one this does nothing (docs/operations.md says how to convert it).
    """
    returned = 0
    while True:
        with store.transaction() as conn:
            (mode,) = conn.execute("PRAGMA auto_vacuum").fetchone()
            (free,) = conn.execute("PRAGMA freelist_count").fetchone()
            if mode != AUTO_VACUUM_INCREMENTAL or not free:
                return returned
            conn.execute(f"PRAGMA incremental_vacuum({min(free, pages_per_step)})").fetchall()
            (left,) = conn.execute("PRAGMA freelist_count").fetchone()
        if left >= free:  # nothing moved: never loop on it
            return returned
        returned += free - left


def expire(store: Store, now: float, retention_days: float) -> Expired:
    """Drop events older than the retention, acknowledged or not.

    A group that had not acknowledged them has its cursor moved past them (and its
    in-flight batch forgotten when it held any). Anything dropped unacknowledged is
    logged as an error with the count per group: it is a lost notification.
    """
    cutoff = now - retention_days * SECONDS_PER_DAY
    with store.transaction() as conn:
        (expired_seq,) = conn.execute(
            "SELECT MAX(seq) FROM outbox WHERE queued_at < ?", (cutoff,)
        ).fetchone()
        if expired_seq is None:
            return Expired(0, {})
        unacked = {
            group_id: count
            for group_id, count in conn.execute(
                "SELECT c.group_id, (SELECT COUNT(*) FROM outbox o WHERE o.seq > c.acked_seq"
                " AND o.seq <= ?) FROM group_cursors c WHERE c.acked_seq < ?",
                (expired_seq, expired_seq),
            ).fetchall()
            if count
        }
        conn.execute(
            "UPDATE group_cursors SET acked_seq = ?, updated_at = ? WHERE acked_seq < ?",
            (expired_seq, now, expired_seq),
        )
        conn.execute("DELETE FROM group_batches WHERE first_seq <= ?", (expired_seq,))
        deleted = conn.execute("DELETE FROM outbox WHERE seq <= ?", (expired_seq,)).rowcount
    if unacked:
        log.error(
            "outbox.expired_unacknowledged",
            dropped=sum(unacked.values()),
            groups=sorted(unacked),
            by_group=unacked,
            retention_days=retention_days,
            up_to_seq=expired_seq,
        )
    return Expired(deleted, unacked)


# -- figures ---------------------------------------------------------------------------------


def backlog(store: Store, now: float) -> list[GroupBacklog]:
    """Per group: events not yet acknowledged, the age of the oldest, the batch in flight.

    The count is arithmetic, not `COUNT(*)` (which reads every row: 75 ms a group at a
    backlog of 1,000,000, under the store's lock, at every /status and /metrics): the
    outbox's seqs are always one run without gaps, since AUTOINCREMENT numbers each
    committed insert one past the last and rows only ever leave from the low end
    (`_purge_acknowledged`, `expire`). So the rows after a cursor are the high seq
    minus the cursor, or all of them when the cursor is below the run.
    """
    with store.reading() as conn:
        rows = conn.execute(
            "SELECT c.group_id, c.acked_seq, c.updated_at,"
            # Two subqueries, not MIN and MAX in one: SQLite reads one end of the index
            # only for a lone MIN or MAX.
            " COALESCE(MAX(0, (SELECT MAX(seq) FROM outbox)"
            "  - MAX(c.acked_seq, (SELECT MIN(seq) FROM outbox) - 1)), 0),"
            " (SELECT o.queued_at FROM outbox o WHERE o.seq > c.acked_seq ORDER BY o.seq"
            "  LIMIT 1),"
            " b.message_id"
            " FROM group_cursors c LEFT JOIN group_batches b ON b.group_id = c.group_id"
            " ORDER BY c.group_id"
        ).fetchall()
    return [
        GroupBacklog(
            group_id=group_id,
            acked_seq=acked_seq,
            backlog=count,
            oldest_unacked_age_s=None if oldest is None else max(0.0, now - oldest),
            outstanding_id=message_id,
            cursor_moved_at=moved_at,
        )
        for group_id, acked_seq, moved_at, count, oldest, message_id in rows
    ]


def batches_in_flight(store: Store) -> dict[str, tuple[PersistedBatch, int]]:
    """Per group, the batch persisted as in flight and how many events it carries (what
    /status shows without a daemon)."""
    with store.reading() as conn:
        rows = conn.execute(
            "SELECT b.group_id, b.message_id, b.first_seq, b.last_seq, b.sent_at,"
            " (SELECT COUNT(*) FROM outbox o WHERE o.seq BETWEEN b.first_seq AND b.last_seq)"
            " FROM group_batches b"
        ).fetchall()
    return {
        group_id: (PersistedBatch(message_id, first_seq, last_seq, sent_at), count)
        for group_id, message_id, first_seq, last_seq, sent_at, count in rows
    }


def queued_total(store: Store) -> int:
    """Notifications ever queued: the outbox's highest seq (AUTOINCREMENT survives purges)."""
    with store.reading() as conn:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    return int(row[0]) if row else 0
