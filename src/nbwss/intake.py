"""Intake: validated notifications into the durable outbox (`nbwss notify`, the poller).

A notification is durable once its transaction commits; only then may intake report it
queued. `enqueue` alone expects an open transaction, so that the REST poller can queue
events and advance its watermark atomically; the rest commit in chunks. The reading,
acknowledging and purging side is `nbwss.outbox` (which re-exports these names). Apart
because `nbwss notify`, started once per event, imports this and not the delivery side
and its value types (nor `dataclasses`, which they are made with).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from typing import Any

from nbwss.errors import StoreError
from nbwss.notifications import encode_data
from nbwss.store import Store

INTAKE_CHUNK = 5_000
# Rows handed to the spool this many at a time: checking a batch of lines, then inserting
# it, measured 2-4% less CPU for `nbwss notify -` at 100,000 lines than one line's check
# and insert after the other (likely each stage keeping its data in the CPU's caches).
# A batch also ends at SPOOL_BATCH_CHARS of data, so that memory holds at most about
# that much more however long the lines (up to `message.maxBytes` each: 1,000 of
# 16 MiB would be 16 GiB), and stays flat in the size of the lines as in their number.
SPOOL_BATCH = 1_000
SPOOL_BATCH_CHARS = 1 << 20


class Queued:
    """What one intake committed: how many, and the lowest and highest seq given.

    A plain value class: a NamedTuple's `count` would hide tuple.count, and a dataclass
    would load `dataclasses` (see the module docstring)."""

    __slots__ = ("count", "first_seq", "last_seq")

    def __init__(self, count: int, first_seq: int, last_seq: int) -> None:
        self.count = count
        self.first_seq = first_seq
        self.last_seq = last_seq

    def _fields(self) -> tuple[int, int, int]:
        return self.count, self.first_seq, self.last_seq

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Queued) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"Queued(count={self.count}, first_seq={self.first_seq}, last_seq={self.last_seq})"


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

    The rows go first to a spool: a private temporary database attached to this
    connection (SQLite's, in its temporary directory, spilled to a file past its page
    cache), so memory stays flat however long the input and its lines, and the outbox's
    write lock is not held while the input is read and checked. An exception from `rows` (the first
    bad line) leaves the outbox untouched. Then the rows are copied to the outbox in
    their order, in chunks, as `queue_chunked` does (the same write-lock and wake-up
    rhythm), and the spool is detached (`_detach_spool`).
    """
    count = _spool(store, rows)

    def copy(conn: sqlite3.Connection, start: int, end: int) -> tuple[int, int]:
        copied = conn.execute(
            "INSERT INTO outbox (object, data, queued_at) SELECT object, data, ?"
            " FROM intake_spool.rows WHERE rowid > ? AND rowid <= ? ORDER BY rowid",
            (clock(), start, end),
        ).rowcount
        (last_seq,) = conn.execute("SELECT last_insert_rowid()").fetchone()
        return copied, int(last_seq)

    try:
        return _commit_chunks(store, count, chunk_size, copy, after_commit)
    finally:
        # Best effort: the rows may be committed already, and a failure to tidy must not
        # report them unqueued (a script would queue them twice). The spool goes with the
        # connection anyway, and the next `_spool` detaches any left over.
        with suppress(StoreError), store.reading() as conn:
            _detach_spool(conn)


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
    """Every row into a fresh spool, in one transaction that locks nothing of the
    database's own; the count. An exception from `rows` throws the spool away and goes on.

    The spool is `intake_spool`, a private temporary database attached for one intake,
    without a rollback journal (nothing in it needs keeping when it fails). It lives in
    SQLite's temporary directory, not beside the database: a failure to write there is
    named as such (`_spool_error`), not as the database's."""
    with store.reading() as conn:
        try:
            _detach_spool(conn)  # one a failed tidy-up left behind
            conn.execute("ATTACH DATABASE '' AS intake_spool")
            conn.execute("PRAGMA intake_spool.journal_mode = OFF")
            conn.execute(
                "CREATE TABLE intake_spool.rows (object TEXT NOT NULL, data TEXT NOT NULL)"
            )
            conn.execute("BEGIN")  # deferred: it touches the spool only
            try:
                insert = "INSERT INTO intake_spool.rows (object, data) VALUES (?, ?)"
                for batch in _batches(rows):
                    conn.executemany(insert, batch)
            except BaseException:
                # COMMIT, not ROLLBACK: without a journal ROLLBACK is undefined, and the
                # detach below throws every row away.
                with suppress(sqlite3.Error):
                    conn.execute("COMMIT")
                raise
            conn.execute("COMMIT")
            # Rowids 1..count: the table is fresh and only appended to (no COUNT(*) scan).
            cursor = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM intake_spool.rows")
            (count,) = cursor.fetchone()
        except BaseException as exc:
            # Tidying must not hide why the spool stopped (a refused line, say).
            with suppress(sqlite3.Error):
                if conn.in_transaction:  # the COMMIT failed
                    conn.execute("ROLLBACK")
                _detach_spool(conn)
            if isinstance(exc, sqlite3.Error):
                raise _spool_error(exc) from None
            raise
    return int(count)


def _batches(rows: Iterable[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    """`rows` in lists of SPOOL_BATCH, or fewer once their data take SPOOL_BATCH_CHARS
    bytes of memory (a non-ASCII str up to 4 a character). One list, emptied once the
    caller asks for the next: the previous batch is not held while the next is built."""
    batch: list[tuple[str, str]] = []
    size = 0
    for row in rows:
        batch.append(row)
        text = row[1]
        size += len(text) if text.isascii() else 4 * len(text)
        if size >= SPOOL_BATCH_CHARS or len(batch) >= SPOOL_BATCH:
            yield batch
            batch.clear()
            size = 0
    if batch:
        yield batch


def _detach_spool(conn: sqlite3.Connection) -> None:
    """Detach the spool if attached: SQLite deletes its file, unread (dropping a table
    would read every page, and with SQLite's secure delete, as Debian builds it,
    overwrite each one: a tenth of intake's time at 100,000 lines)."""
    attached = conn.execute("SELECT 1 FROM pragma_database_list WHERE name = 'intake_spool'")
    if attached.fetchone() is not None:
        conn.execute("DETACH DATABASE intake_spool")


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
