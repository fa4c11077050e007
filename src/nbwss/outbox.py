"""The durable outbox: every notification, in order, until every server group has it.

Rows of `outbox` carry a global sequence number (`seq`, AUTOINCREMENT so a number is
never reused after a purge). Each server group has a cursor (`group_cursors.acked_seq`,
the last seq it acknowledged) and at most one batch in flight (`group_batches`, kept so
that a resend after a restart carries the same message id). A notification is durable
once its transaction commits; only then may intake report it queued.

Calls are short and synchronous. The daemon runs them through `asyncio.to_thread`; the
CLI calls them directly. `enqueue` alone expects an open transaction, so that the REST
poller can queue events and advance its watermark atomically.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from nbwss import logs
from nbwss.errors import StoreError
from nbwss.notifications import encode_data
from nbwss.store import Store
from nbwss.values import GroupPosition, OutboxEvent, PersistedBatch

log = logs.get_logger("nbwss.outbox")

INTAKE_CHUNK = 5_000
RECLAIM_PAGES_PER_STEP = 2_048  # 8 MiB of 4 KiB pages: a short write lock
AUTO_VACUUM_INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL
SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class Queued:
    """What one intake committed: how many, and the lowest and highest seq given."""

    count: int
    first_seq: int
    last_seq: int


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


# -- intake ----------------------------------------------------------------------------------


def enqueue(
    conn: sqlite3.Connection, items: Iterable[tuple[str, dict[str, Any]]], now: float
) -> int:
    """Queue validated notifications inside the caller's open transaction.

    Returns the seq of the last one queued (the current head when `items` is empty).
    Nothing is durable until the caller commits.
    """
    _, last_seq = enqueue_encoded(conn, ((obj, encode_data(data)) for obj, data in items), now)
    return last_seq


def enqueue_encoded(
    conn: sqlite3.Connection, rows: Iterable[tuple[str, str]], now: float
) -> tuple[int, int]:
    """Queue `(object, data JSON text)` rows in the open transaction; `(count, last_seq)`."""
    cursor = conn.executemany(
        "INSERT INTO outbox (object, data, queued_at) VALUES (?, ?, ?)",
        ((obj, text, now) for obj, text in rows),
    )
    count = max(cursor.rowcount, 0)
    if count:
        (last_seq,) = conn.execute("SELECT last_insert_rowid()").fetchone()
    else:
        (last_seq,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()
    return count, int(last_seq)


def queue_chunked(
    store: Store,
    rows: Sequence[tuple[str, str]],
    clock: Callable[[], float],
    chunk_size: int = INTAKE_CHUNK,
    after_commit: Callable[[], object] | None = None,
) -> Queued:
    """Queue many validated rows, one transaction per chunk, calling `after_commit` after each.

    Chunks keep the write lock short, so the daemon's acknowledgements never wait long
    behind a big intake, and the daemon can start sending the first chunk at once.
    Seqs are contiguous within a chunk; another producer may interleave between chunks.
    """

    def copy(conn: sqlite3.Connection, start: int, end: int) -> tuple[int, int]:
        return enqueue_encoded(conn, rows[start:end], clock())

    return _commit_chunks(store, len(rows), chunk_size, copy, after_commit)


def queue_stream(
    store: Store,
    rows: Iterable[tuple[str, str]],
    clock: Callable[[], float],
    chunk_size: int = INTAKE_CHUNK,
    after_commit: Callable[[], object] | None = None,
) -> Queued:
    """Queue rows checked as they are read: every one, or none when one is refused.

    The rows go first to a TEMP table (this connection's own database, which SQLite
    spills to a temporary file past its page cache), so memory stays flat however long
    the input, and the outbox's write lock is not held while the input is read and
    checked. An exception from `rows` (the first bad line) leaves the outbox untouched.
    Then the rows are copied to the outbox in their order, in chunks, as
    `queue_chunked` does (the same write-lock and wake-up rhythm).
    """
    count = _spool(store, rows)

    def copy(conn: sqlite3.Connection, start: int, end: int) -> tuple[int, int]:
        copied = conn.execute(
            "INSERT INTO outbox (object, data, queued_at) SELECT object, data, ?"
            " FROM temp.intake_spool WHERE rowid > ? AND rowid <= ? ORDER BY rowid",
            (clock(), start, end),
        ).rowcount
        (last_seq,) = conn.execute("SELECT last_insert_rowid()").fetchone()
        return copied, int(last_seq)

    try:
        return _commit_chunks(store, count, chunk_size, copy, after_commit)
    finally:
        # Best effort: the rows may be committed already, and a failure to tidy must not
        # report them unqueued (a script would queue them twice). The table goes with the
        # connection anyway, and the next `_spool` drops any left over.
        with suppress(StoreError), store.reading() as conn:
            conn.execute("DROP TABLE IF EXISTS temp.intake_spool")


def _commit_chunks(
    store: Store,
    count: int,
    chunk_size: int,
    copy: Callable[[sqlite3.Connection, int, int], tuple[int, int]],
    after_commit: Callable[[], object] | None,
) -> Queued:
    """Rows [0, count) into the outbox, one transaction per chunk (`copy` writes rows
    [start, end) and says how many and the last seq), `after_commit` after each."""
    first_seq = last_seq = 0
    for start in range(0, count, chunk_size):
        try:
            with store.transaction() as conn:
                written = copy(conn, start, min(start + chunk_size, count))
        except StoreError as exc:
            if not start:
                raise
            # Say what is durable, so a caller resends the rest, not everything again.
            raise StoreError(
                f"{exc}; notifications 1-{start} were queued (seq {first_seq}-{last_seq}), "
                f"{start + 1}-{count} were not"
            ) from None
        copied, last_seq = written  # committed: only now does it count as queued
        if not first_seq:
            first_seq = last_seq - copied + 1
        if after_commit is not None:
            after_commit()
    return Queued(count, first_seq, last_seq)


def _spool(store: Store, rows: Iterable[tuple[str, str]]) -> int:
    """Every row into a fresh TEMP table, in one transaction that locks nothing of the
    database's own; the count. An exception from `rows` drops the table and goes on.

    The TEMP table lives in SQLite's temporary directory, not beside the database: a
    failure to write there is named as such (`_spool_error`), not as the database's."""
    with store.reading() as conn:
        try:
            conn.execute("DROP TABLE IF EXISTS temp.intake_spool")
            conn.execute(
                "CREATE TEMP TABLE intake_spool (object TEXT NOT NULL, data TEXT NOT NULL)"
            )
            conn.execute("BEGIN")  # deferred: it touches the temp database only
            try:
                conn.executemany(
                    "INSERT INTO temp.intake_spool (object, data) VALUES (?, ?)", rows
                )
                conn.execute("COMMIT")
            except BaseException:
                # Tidying must not hide why the spool stopped (a refused line, say).
                with suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    conn.execute("DROP TABLE temp.intake_spool")
                raise
            (count,) = conn.execute("SELECT COUNT(*) FROM temp.intake_spool").fetchone()
        except sqlite3.Error as exc:
            raise _spool_error(exc) from None
    return int(count)


def _spool_error(exc: sqlite3.Error) -> StoreError:
    """The spool's SQLite failure, naming the directory SQLite writes TEMP tables to
    (the database's own name would send an admin to the wrong file)."""
    directory = sqlite_temp_directory()
    return StoreError(
        f"cannot hold the input in SQLite's temporary directory {directory}: {exc}; "
        "make it writable (with room for the input), or set SQLITE_TMPDIR to a directory "
        "that is"
    )


def sqlite_temp_directory() -> str:
    """Where SQLite (on Unix) puts temporary files: the first of $SQLITE_TMPDIR, $TMPDIR,
    /var/tmp, /usr/tmp, /tmp that is a directory it may write to, else the current one."""
    candidates = [os.environ.get("SQLITE_TMPDIR"), os.environ.get("TMPDIR")]
    # SQLite's own list: named in a message, nothing is written here.
    for directory in [*candidates, "/var/tmp", "/usr/tmp", "/tmp"]:  # noqa: S108
        if directory and os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK):
            return directory
    return "."


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
    if known is not None:
        acked_seq, *batch = known
        return _position(int(acked_seq), PersistedBatch(*batch) if batch[0] is not None else None)
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
    return _position(int(cursor[0]), PersistedBatch(*row) if row else None)


def _position(acked_seq: int, outstanding: PersistedBatch | None) -> GroupPosition:
    if outstanding is not None and outstanding.last_seq <= acked_seq:
        outstanding = None  # already acknowledged (e.g. retention moved the cursor past it)
    return GroupPosition(acked_seq, outstanding)


def read_events(
    store: Store, after_seq: int, limit: int, up_to_seq: int | None = None
) -> list[OutboxEvent]:
    """The oldest `limit` events after `after_seq` (and not past `up_to_seq`), in seq order."""
    ceiling = up_to_seq if up_to_seq is not None else (1 << 62)
    with store.reading() as conn:
        rows = conn.execute(
            "SELECT seq, object, data FROM outbox WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (after_seq, ceiling, limit),
        ).fetchall()
    return [OutboxEvent(seq, obj, data) for seq, obj, data in rows]


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
) -> int:
    """Advance the group's cursor to `last_seq` and forget its batch, in one transaction.

    `next_batch` (read ahead while the ack was awaited) becomes the batch in flight in
    the same transaction. Events now acknowledged by every group are purged there too.
    The cursor only moves forward. Returns how many events were purged.
    """
    with store.transaction() as conn:
        conn.execute(
            "UPDATE group_cursors SET acked_seq = MAX(acked_seq, ?), updated_at = ?"
            " WHERE group_id = ?",
            (last_seq, now, group_id),
        )
        conn.execute("DELETE FROM group_batches WHERE group_id = ?", (group_id,))
        if next_batch is not None:
            _persist_batch(conn, group_id, next_batch)
        return _purge_acknowledged(conn)


def _purge_acknowledged(conn: sqlite3.Connection) -> int:
    (floor,) = conn.execute("SELECT MIN(acked_seq) FROM group_cursors").fetchone()
    if floor is None:
        # No group at all: nobody will ever receive these (a group added later starts
        # at the head, spec section 7), so they are acknowledged by every group there is.
        return conn.execute("DELETE FROM outbox").rowcount
    return conn.execute("DELETE FROM outbox WHERE seq <= ?", (floor,)).rowcount


def purge(store: Store) -> int:
    """Delete every event acknowledged by every group, then give the file's free pages
    back (`reclaim_free_pages`); how many events were deleted."""
    with store.transaction() as conn:
        deleted = _purge_acknowledged(conn)
    reclaim_free_pages(store)
    return deleted


def reclaim_free_pages(store: Store, pages_per_step: int = RECLAIM_PAGES_PER_STEP) -> int:
    """Shrink the file by its free pages (a drained backlog's), `pages_per_step` a
    transaction so that acknowledgements interleave; how many pages were given back.

    Free pages are reused by later inserts anyway; giving them back is for the disk
    (a backlog of 1,000,000 leaves about 220 MiB). Only a store with
    auto_vacuum=INCREMENTAL (every store created since release 2) can; for an older
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
