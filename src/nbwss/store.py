"""The SQLite store: schema, migrations, and the endpoint + trust-store tables.

One file, WAL mode, shared by the daemon and the CLI. Every admin operation is one
transaction, so a crash never leaves half an endpoint. Tokens are sealed by
`TokenVault` before they reach SQL. The outbox and poller tables are declared here (one
schema, one version number) and used by `outbox.py` and `pollerstore.py`.

Calls are short and synchronous; the connection may be used from a worker thread
(`asyncio.to_thread`), so access is serialised by a lock.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from nbwss.errors import (
    MSG_EXISTS,
    MSG_NOT_FOUND,
    MSG_TRUSTSTORE_WRITE,
    AlreadyExistsError,
    NotFoundError,
    StoreBusyError,
    StoreError,
)
from nbwss.vault import TokenVault, create_private_file

if TYPE_CHECKING:  # endpoints.py brings aiohttp, which `nbwss notify` must not pay for
    from nbwss.endpoints import EndpointDetails

    # values.py makes dataclasses: imported where records are made, not by `nbwss notify`.
    from nbwss.values import EndpointRecord

# Each entry upgrades the schema by one version; never edit a released one, append.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE endpoints (
        host_name       TEXT PRIMARY KEY COLLATE NOCASE,  -- a DNS name: case-blind
        url             TEXT NOT NULL,
        group_id        TEXT NOT NULL,
        priority        INTEGER NOT NULL,
        token_sealed    BLOB NOT NULL,
        enabled         INTEGER NOT NULL DEFAULT 1,
        certificate_der BLOB NOT NULL,
        fingerprint     TEXT NOT NULL,
        added_at        REAL NOT NULL,
        updated_at      REAL NOT NULL
    );
    CREATE INDEX endpoints_by_group ON endpoints (group_id, priority, host_name);
    -- Written by the daemon, read by `endpoint list`, kept apart so admin edits never race it.
    CREATE TABLE endpoint_status (
        host_name   TEXT PRIMARY KEY COLLATE NOCASE,
        connected   INTEGER NOT NULL,
        since       REAL NOT NULL,
        last_error  TEXT
    );
    -- Every notification in intake order: seq is the global delivery order.
    CREATE TABLE outbox (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        object     TEXT NOT NULL CHECK (object IN ('JOB', 'IMAGE')),
        data       TEXT NOT NULL,
        queued_at  REAL NOT NULL
    );
    -- Per server group: the last seq it acknowledged
    CREATE TABLE group_cursors (
        group_id    TEXT PRIMARY KEY,
        acked_seq   INTEGER NOT NULL,
        updated_at  REAL NOT NULL
    );
    -- Per server group: the batch in flight, so a resend after a restart keeps its id.
    CREATE TABLE group_batches (
        group_id    TEXT PRIMARY KEY,
        message_id  TEXT NOT NULL,
        first_seq   INTEGER NOT NULL,
        last_seq    INTEGER NOT NULL,
        sent_at     REAL NOT NULL
    );
    -- The REST poller's watermarks and what it has seen (advanced with the outbox insert).
    CREATE TABLE poller_state (
        name   TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    CREATE TABLE poller_jobs (
        job_id       INTEGER PRIMARY KEY,
        state        TEXT NOT NULL,
        status       INTEGER,
        last_update  REAL NOT NULL
    );
    CREATE TABLE poller_images (
        backup_id    TEXT PRIMARY KEY,
        digest       TEXT NOT NULL,
        backup_time  INTEGER NOT NULL,
        data         TEXT NOT NULL,
        missed       INTEGER NOT NULL DEFAULT 0
    );
    """,
    """
    -- Poller records that cannot be mapped: logged once, retried when they change.
    CREATE TABLE poller_set_aside (
        object       TEXT NOT NULL,
        record_id    TEXT NOT NULL,
        fingerprint  TEXT NOT NULL,
        reason       TEXT NOT NULL,
        since        REAL NOT NULL,
        PRIMARY KEY (object, record_id)
    );
    """,
    """
    -- Rows up to this seq were queued before this schema, maybe by a release whose intake
    -- let NaN and Infinity through: delivery looks for those in these rows only.
    CREATE TABLE outbox_legacy (up_to_seq INTEGER NOT NULL);
    INSERT INTO outbox_legacy (up_to_seq) SELECT COALESCE(MAX(seq), 0) FROM outbox;
    """,
)

BUSY_TIMEOUT_MS = 10_000
# After a checkpoint, SQLite truncates the WAL back to this size (by default it keeps
# it at its largest: a 100,000-event intake leaves about 22 MiB behind for good).
JOURNAL_SIZE_LIMIT_BYTES = 8 << 20
# SQLite's words for a file that is damaged, not merely busy or read-only.
_DAMAGED = ("malformed", "not a database", "corrupt")
# SQLITE_BUSY: another connection held the lock past the busy timeout. Not
# SQLITE_BUSY_SNAPSHOT (a WAL read snapshot too old to write, returned at once) nor
# SQLITE_LOCKED (a clash inside this one connection): waiting would not change those.
_SQLITE_BUSY = 5
_SQLITE_BUSY_SNAPSHOT = 517


def store_error(path: Path, exc: sqlite3.Error) -> StoreError:
    """An SQLite failure as a `StoreError` an admin can act on: the file, SQLite's words,
    and for a damaged file how to check it and what to do."""
    text = str(exc) or type(exc).__name__
    hint = ""
    if any(word in text for word in _DAMAGED):
        hint = (
            f"; the file is damaged: check it with sqlite3 {path} 'PRAGMA integrity_check'"
            " (with the daemon stopped) and restore it from a backup"
        )
    code = getattr(exc, "sqlite_errorcode", 0)
    busy = code & 0xFF == _SQLITE_BUSY and code != _SQLITE_BUSY_SNAPSHOT
    return (StoreBusyError if busy else StoreError)(f"database {path}: {text}{hint}")


def open_database(path: Path) -> sqlite3.Connection:
    """Open (creating 0600 if new) the database in WAL mode and migrate it."""
    if not path.exists():
        try:
            create_private_file(path, b"")
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot create database {path}: {exc.strerror}") from None
    try:
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {store_error(path, exc)}") from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # Takes effect only in a new file, before its first table: the pages a drained
        # backlog frees can then be given back (`outbox.reclaim_free_pages`). An older
        # store keeps auto_vacuum=NONE (its free pages are reused, never given back)
        # until a VACUUM converts it: docs/operations.md.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT_BYTES}")
        conn.execute("PRAGMA synchronous = NORMAL")
        _migrate(conn)
    except (sqlite3.Error, StoreError) as exc:
        conn.close()  # never leave the file open behind the error (a newer schema, say)
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"cannot open {store_error(path, exc)}") from None
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):
            raise StoreError(
                f"database schema version {version} is newer than this nbwss "
                f"({len(MIGRATIONS)}); upgrade nbwss"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            # Statements are split on ";": the DDL above keeps that character out of comments.
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


_INSERT_ENDPOINT = (
    "INSERT INTO endpoints (host_name, url, group_id, priority, token_sealed, enabled,"
    " certificate_der, fingerprint, added_at, updated_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?)"
)
# A renewal keeps `enabled` and `added_at`.
_REPLACE_ENDPOINT = (
    _INSERT_ENDPOINT + " ON CONFLICT (host_name) DO UPDATE SET host_name = excluded.host_name,"
    " url = excluded.url,"
    " group_id = excluded.group_id, priority = excluded.priority,"
    " token_sealed = excluded.token_sealed, certificate_der = excluded.certificate_der,"
    " fingerprint = excluded.fingerprint, updated_at = excluded.updated_at"
)


def _forget_group_if_empty(conn: sqlite3.Connection, group_id: str) -> None:
    """Drop the delivery state of `group_id` when it has no endpoint left.

    A group added again later starts from the head (spec section 7), and a forgotten
    group must not hold back the purge of acknowledged events. Only the group an
    operation touched is forgotten: a position kept by `delete --keep-position` stays
    until an endpoint of its group is added again (or retention drops the events).
    """
    for table in ("group_cursors", "group_batches"):
        conn.execute(
            f"DELETE FROM {table} WHERE group_id = ? AND NOT EXISTS"  # noqa: S608 - fixed names
            " (SELECT 1 FROM endpoints WHERE group_id = ?)",
            (group_id, group_id),
        )


class Store:
    """The daemon's and the CLI's one handle on the database."""

    def __init__(self, path: Path, key_path: Path) -> None:
        self.path = path
        self._key_path = key_path
        self._vault: TokenVault | None = None
        self._lock = threading.Lock()
        self.conn = open_database(path)

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    @property
    def vault(self) -> TokenVault:
        # Made on first use, so read-only commands (list) never create a key file.
        if self._vault is None:
            self._vault = TokenVault(self._key_path)
        return self._vault

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back on any error.

        An SQLite failure leaves as a `StoreError` naming the file (`store_error`); a
        caller that expects one (an `IntegrityError` for a duplicate host) catches it
        inside the block.
        """
        with self._lock, self._errors_named():
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                # A COMMIT that fails (busy, I/O, a deferred constraint) may leave the
                # transaction open: every later BEGIN on this connection would then fail.
                if self.conn.in_transaction:
                    with suppress(sqlite3.Error):  # a damaged file may refuse this too
                        self.conn.execute("ROLLBACK")
                raise

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors_named():
            yield self.conn

    @contextmanager
    def reading_if_free(self) -> Iterator[sqlite3.Connection | None]:
        """`reading()` if no other thread is using the connection now, else None: for
        the event loop, which must not wait for the lock (it goes to a worker thread)."""
        if not self._lock.acquire(blocking=False):
            yield None
            return
        try:
            with self._errors_named():
                yield self.conn
        finally:
            self._lock.release()

    @contextmanager
    def _errors_named(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from None

    # -- endpoints and their pinned certificates -----------------------------------------

    def add_endpoint(
        self,
        details: EndpointDetails,
        certificate_der: bytes,
        fingerprint: str,
        *,
        replace: bool = False,
    ) -> None:
        """Store details, sealed token and pinned certificate; a new group starts at the head.

        `replace` renews an existing endpoint in place (new token, certificate, URL,
        priority or group) and keeps its enabled state. Its group keeps its cursor, so
        nothing queued meanwhile is skipped, as it would be by delete-then-add when the
        endpoint is the group's only one.
        """
        sealed = self.vault.encrypt(details.token, details.host_name)
        now = time.time()
        try:
            with self.transaction() as conn:
                previous = conn.execute(
                    "SELECT group_id FROM endpoints WHERE host_name = ?", (details.host_name,)
                ).fetchone()
                try:
                    conn.execute(
                        _REPLACE_ENDPOINT if replace else _INSERT_ENDPOINT,
                        (details.host_name, details.url, details.group_id, details.priority,
                         sealed, certificate_der, fingerprint, now, now),
                    )
                except sqlite3.IntegrityError:
                    raise AlreadyExistsError(f"{MSG_EXISTS}: {details.host_name}") from None
                conn.execute(
                    "INSERT OR IGNORE INTO group_cursors (group_id, acked_seq, updated_at)"
                    " VALUES (?, (SELECT COALESCE(MAX(seq), 0) FROM outbox), ?)",
                    (details.group_id, now),
                )
                if previous is not None:  # a replace may have moved the last one away
                    _forget_group_if_empty(conn, previous[0])
        except AlreadyExistsError:
            raise
        except StoreError as exc:
            raise StoreError(f"{MSG_TRUSTSTORE_WRITE}: {exc}") from None

    def has_endpoints(self) -> bool:
        """Whether any endpoint is configured (`nbwss notify` warns when none is). Read
        from the table itself, not its smaller index, so damage there is seen as by
        `endpoints`."""
        with self.reading() as conn:
            found = conn.execute("SELECT 1 FROM endpoints NOT INDEXED LIMIT 1").fetchone()
        return found is not None

    def endpoints(self) -> list[EndpointRecord]:
        """Every endpoint, by group, then priority (lowest first), then host name."""
        from nbwss.values import EndpointRecord  # see the TYPE_CHECKING import

        with self.reading() as conn:
            rows = conn.execute(
                "SELECT e.host_name, e.url, e.group_id, e.priority, e.enabled, e.fingerprint,"
                " e.certificate_der, e.updated_at, COALESCE(s.connected, 0), s.since,"
                " s.last_error FROM endpoints e"
                " LEFT JOIN endpoint_status s ON s.host_name = e.host_name"
                " ORDER BY e.group_id, e.priority, e.host_name"
            ).fetchall()
        return [
            EndpointRecord(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6], r[7], bool(r[8]),
                           r[9], r[10])
            for r in rows
        ]

    def endpoint(self, host_name: str) -> EndpointRecord:
        """The endpoint named `host_name`, in any case (host names are case-blind)."""
        wanted = host_name.casefold()
        for record in self.endpoints():
            if record.host_name.casefold() == wanted:
                return record
        raise NotFoundError(f"{MSG_NOT_FOUND}: {host_name}")

    def token(self, host_name: str) -> str:
        with self.reading() as conn:
            row = conn.execute(
                "SELECT host_name, token_sealed FROM endpoints WHERE host_name = ?", (host_name,)
            ).fetchone()
        if row is None:
            raise NotFoundError(f"{MSG_NOT_FOUND}: {host_name}")
        return self.vault.decrypt(row[1], row[0])  # sealed with the name as stored

    def set_enabled(self, host_name: str, enabled: bool) -> None:
        with self.transaction() as conn:
            changed = conn.execute(
                "UPDATE endpoints SET enabled = ?, updated_at = ? WHERE host_name = ?",
                (int(enabled), time.time(), host_name),
            ).rowcount
        if not changed:
            raise NotFoundError(f"{MSG_NOT_FOUND}: {host_name}")

    def delete_endpoint(self, host_name: str, *, keep_position: bool = False) -> None:
        """Remove credentials and certificate; a group left empty forgets its cursor,
        unless `keep_position`: then its backlog waits for the group's next endpoint."""
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT group_id FROM endpoints WHERE host_name = ?", (host_name,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"{MSG_NOT_FOUND}: {host_name}")
            conn.execute("DELETE FROM endpoints WHERE host_name = ?", (host_name,))
            conn.execute("DELETE FROM endpoint_status WHERE host_name = ?", (host_name,))
            if not keep_position:
                _forget_group_if_empty(conn, row[0])

    # -- connection status (written by the daemon) -----------------------------------------

    def set_status(self, host_name: str, connected: bool, last_error: str | None = None) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO endpoint_status (host_name, connected, since, last_error)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (host_name) DO UPDATE SET"
                " connected = excluded.connected, since = excluded.since,"
                # Connecting clears the last error; a drop without a reason keeps it.
                " last_error = CASE WHEN excluded.connected THEN NULL"
                " ELSE COALESCE(excluded.last_error, endpoint_status.last_error) END",
                (host_name, int(connected), time.time(), last_error),
            )

    def reset_status(self) -> None:
        """At daemon start nothing is connected, whatever a killed daemon left behind."""
        with self.transaction() as conn:
            conn.execute("UPDATE endpoint_status SET connected = 0, since = ?", (time.time(),))
