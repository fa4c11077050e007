"""A damaged store is one `nbwss: error:` line with the file and a hint (issue 11, item 8).

Real SQLite files, damaged by overwriting one table's root page. `notify` whose
notifications were committed exits 0 even when its report afterwards fails: a calling
script that retried would queue them twice.
"""

from __future__ import annotations

import io
import json
import sqlite3
import sys
from pathlib import Path

import pytest

from nbwss.cli import main
from nbwss.endpoints import EndpointDetails
from nbwss.errors import MSG_TRUSTSTORE_WRITE, AlreadyExistsError, StoreError
from nbwss.store import Store
from tests.test_notify_cli import job

PAGE_GARBAGE = b"\xa5" * 4096


def damage(database: Path, table: str) -> None:
    """Overwrite `table`'s root page (the file checkpointed, no WAL left) with garbage."""
    conn = sqlite3.connect(database)
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    (root,) = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    with database.open("r+b") as handle:
        handle.seek((root - 1) * page_size)
        handle.write(PAGE_GARBAGE[:page_size])


@pytest.fixture
def store_with_endpoint(state_dir: Path) -> Path:
    database = state_dir / "nbwss.db"
    store = Store(database, state_dir / "nbwss.key")
    details = EndpointDetails("token", 1, "G1", "ep1.test", "wss://ep1.test:14146/cfs")
    store.add_endpoint(details, b"certificate", "AB:CD")
    store.close()
    return database


def notify(data: object) -> int:
    return main(["notify", "--object", "JOB", "--data", json.dumps(data)])


def test_a_damaged_endpoints_page_after_the_commit_still_exits_0(
    store_with_endpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damage(store_with_endpoint, "endpoints")
    assert notify(job(1)) == 0
    out, err = capsys.readouterr()
    assert out == "queued 1 notification (seq 1)\n"
    assert err.startswith("nbwss: warning: queued, but the report failed: database ")
    assert "PRAGMA integrity_check" in err
    assert err.count("\n") == 1
    conn = sqlite3.connect(store_with_endpoint)
    assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone() == (1,)  # queued once
    conn.close()


def test_a_damaged_outbox_is_one_line_with_the_path_and_the_hint(
    store_with_endpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damage(store_with_endpoint, "outbox")
    assert notify(job(1)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nbwss: error: database {store_with_endpoint}: ")
    assert "is damaged" in err
    assert f"sqlite3 {store_with_endpoint} 'PRAGMA integrity_check'" in err
    assert "restore it from a backup" in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [["endpoint", "list"], ["endpoint", "show", "ep1.test"],
                                  ["endpoint", "disable", "ep1.test"]])
def test_admin_commands_on_a_damaged_endpoints_page_say_so(
    store_with_endpoint: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    damage(store_with_endpoint, "endpoints")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("nbwss: error: ")
    assert "PRAGMA integrity_check" in err
    assert err.count("\n") == 1


def test_a_file_that_is_no_database_is_named(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = state_dir / "nbwss.db"
    database.write_bytes(b"this is not an SQLite file" * 200)
    assert notify(job(1)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nbwss: error: cannot open database {database}: file is not a database")
    assert "PRAGMA integrity_check" in err


def test_a_failure_between_intake_chunks_says_what_was_queued(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The second chunk's transaction fails (a real SQLite trigger, as a full disk would):
    the first chunk is durable, and the error says which notifications to resend."""
    store = Store(state_dir / "nbwss.db", state_dir / "nbwss.key")
    with store.transaction() as conn:
        conn.execute(
            "CREATE TRIGGER outbox_full BEFORE INSERT ON outbox WHEN"
            " (SELECT COUNT(*) FROM outbox) >= 5000"
            " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
    store.close()
    lines = "".join(json.dumps({"object": "JOB", "data": job(n)}) + "\n" for n in range(6000))
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert main(["notify", "-"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"nbwss: error: database {state_dir / 'nbwss.db'}: database or disk is full; "
        "notifications 1-5000 were queued (seq 1-5000), 5001-6000 were not\n"
    )
    conn = sqlite3.connect(state_dir / "nbwss.db")
    assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone() == (5000,)
    conn.close()


def test_a_failed_endpoint_write_keeps_the_guides_truststore_message(state_dir: Path) -> None:
    database = state_dir / "nbwss.db"
    store = Store(database, state_dir / "nbwss.key")
    try:
        with store.transaction() as conn:
            conn.execute("CREATE TRIGGER cursors_full BEFORE INSERT ON group_cursors"
                         " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
        details = EndpointDetails("token", 1, "G1", "ep1.test", "wss://ep1.test:14146/cfs")
        with pytest.raises(StoreError) as caught:
            store.add_endpoint(details, b"certificate", "AB:CD")
        assert str(caught.value) == (
            f"{MSG_TRUSTSTORE_WRITE}: database {database}: database or disk is full")
        assert not isinstance(caught.value, AlreadyExistsError)
        assert store.endpoints() == []  # the transaction was rolled back
    finally:
        store.close()


def _orphans_fail_at_commit(store: Store) -> None:
    """A deferred foreign key: an orphan row is refused at COMMIT, not at the INSERT (what
    a COMMIT that fails on busy or I/O looks like to the code around it)."""
    store.conn.execute("PRAGMA foreign_keys = ON")
    with store.transaction() as conn:
        conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        conn.execute(
            "CREATE TABLE child (parent_id INTEGER REFERENCES parent (id)"
            " DEFERRABLE INITIALLY DEFERRED)"
        )


def test_a_commit_that_fails_is_rolled_back_and_the_store_stays_usable(
    state_dir: Path,
) -> None:
    store = Store(state_dir / "nbwss.db", state_dir / "nbwss.key")
    _orphans_fail_at_commit(store)
    with (
        pytest.raises(StoreError, match="FOREIGN KEY constraint failed"),
        store.transaction() as conn,
    ):
        conn.execute("INSERT INTO child VALUES (7)")
    assert not store.conn.in_transaction
    with store.transaction() as conn:  # the next transaction begins as usual
        conn.execute("INSERT INTO parent VALUES (7)")
    assert store.conn.execute("SELECT COUNT(*) FROM child").fetchone() == (0,)
    store.close()


def test_a_chunk_whose_commit_fails_is_not_counted_as_queued(state_dir: Path) -> None:
    from nbwss import outbox

    store = Store(state_dir / "nbwss.db", state_dir / "nbwss.key")
    _orphans_fail_at_commit(store)
    with store.transaction() as conn:
        conn.execute(
            "CREATE TRIGGER orphan_after_3 AFTER INSERT ON outbox WHEN NEW.seq > 3"
            " BEGIN INSERT INTO child VALUES (NEW.seq); END"
        )
    rows = [("JOB", json.dumps(job(n))) for n in range(5)]
    with pytest.raises(StoreError) as caught:
        outbox.queue_chunked(store, rows, lambda: 1.0, chunk_size=3)
    assert str(caught.value).endswith(
        "; notifications 1-3 were queued (seq 1-3), 4-5 were not"
    ), caught.value
    store.close()
