"""The SQLite store on real files: privacy on disk, migrations, endpoints, cursors, status."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbwss.endpoints import EndpointDetails, details_from_object
from nbwss.errors import (
    MSG_EXISTS,
    MSG_KEYSTORE,
    MSG_NOT_FOUND,
    AlreadyExistsError,
    NotFoundError,
    StoreError,
)
from nbwss.store import JOURNAL_SIZE_LIMIT_BYTES, MIGRATIONS, Store, open_database
from tests.strategies import valid_details

TOKEN = "tok-3f9a61c2e0b84d7aa1e5-secret-value"
CERT = b"0\x82\x01\x0a-fake-der-certificate"


def details(host: str, group: str = "G1", priority: int = 1, token: str = TOKEN) -> EndpointDetails:
    return EndpointDetails(token, priority, group, host, f"wss://{host}:14146/cfs")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "state" / "nbwss.db", tmp_path / "state" / "nbwss.key")
    yield opened
    opened.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def queue(store: Store, count: int) -> int:
    """Append `count` rows to the outbox (as the intake does); return the last seq."""
    with store.transaction() as conn:
        for _ in range(count):
            conn.execute(
                "INSERT INTO outbox (object, data, queued_at) VALUES ('JOB', '{}', 0)"
            )
        (last,) = conn.execute("SELECT MAX(seq) FROM outbox").fetchone()
    return int(last)


def cursors(store: Store) -> dict[str, int]:
    with store.reading() as conn:
        return dict(conn.execute("SELECT group_id, acked_seq FROM group_cursors").fetchall())


# -- on disk ---------------------------------------------------------------------------------


def test_database_key_and_journal_files_are_private(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    store = Store(state / "nbwss.db", state / "nbwss.key")
    try:
        store.add_endpoint(details("h1"), CERT, "AB:CD")
        assert mode(state) == 0o700
        assert mode(state / "nbwss.db") == 0o600
        assert mode(state / "nbwss.key") == 0o600
        assert mode(state / "nbwss.db-wal") == 0o600
        assert mode(state / "nbwss.db-shm") == 0o600
    finally:
        store.close()


def test_the_token_is_nowhere_on_disk_in_clear(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = Store(state / "nbwss.db", state / "nbwss.key")
    try:
        store.add_endpoint(details("h1"), CERT, "AB:CD")
        assert (state / "nbwss.db-wal").stat().st_size > 0  # the row is in the WAL now
        assert_not_on_disk(tmp_path, TOKEN)
        assert store.token("h1") == TOKEN
    finally:
        store.close()
    assert_not_on_disk(tmp_path, TOKEN)  # after the checkpoint at close, too


def assert_not_on_disk(root: Path, secret: str) -> None:
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        for form in (secret.encode(), secret.encode("utf-16-le")):
            assert form not in data, f"{secret!r} found in {path}"


def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "nbwss.db"
    path.touch(mode=0o640)
    os.chmod(path, 0o640)
    open_database(path).close()
    assert mode(path) == 0o640  # we never widen (nor silently change) an admin's choice


def test_a_database_that_cannot_be_created_is_a_store_error() -> None:
    with pytest.raises(StoreError, match=r"^cannot create database /proc/"):
        open_database(Path("/proc/nbwss-no-such-dir/nbwss.db"))


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "nbwss.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=f"^cannot open database {path}: "):
        open_database(path)


def test_the_wrong_key_is_a_store_error(tmp_path: Path) -> None:
    first = Store(tmp_path / "nbwss.db", tmp_path / "nbwss.key")
    first.add_endpoint(details("h1"), CERT, "AB:CD")
    first.close()
    other = Store(tmp_path / "nbwss.db", tmp_path / "other.key")
    try:
        with pytest.raises(StoreError, match=f"^{MSG_KEYSTORE}: the token of h1 cannot be"):
            other.token("h1")
    finally:
        other.close()


def test_read_only_commands_create_no_key(tmp_path: Path) -> None:
    store = Store(tmp_path / "nbwss.db", tmp_path / "nbwss.key")
    try:
        assert store.endpoints() == []
    finally:
        store.close()
    assert not (tmp_path / "nbwss.key").exists()


# -- migrations ------------------------------------------------------------------------------


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_migrations_set_the_schema_version_once(tmp_path: Path) -> None:
    path = tmp_path / "nbwss.db"
    open_database(path).close()
    assert user_version(path) == len(MIGRATIONS)
    conn = open_database(path)  # a second open migrates nothing and keeps the data
    conn.execute("INSERT INTO poller_state VALUES ('k', 'v')")
    conn.close()
    conn = open_database(path)
    assert conn.execute("SELECT value FROM poller_state").fetchall() == [("v",)]
    conn.close()
    assert user_version(path) == len(MIGRATIONS)


def test_a_newer_schema_is_refused_and_the_file_left_closed(tmp_path: Path) -> None:
    path = tmp_path / "nbwss.db"
    open_database(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match=r"newer than this nbwss .*; upgrade nbwss$"):
        open_database(path)
    assert user_version(path) == len(MIGRATIONS) + 1
    open_files = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
    assert str(path) not in open_files


# -- endpoints -------------------------------------------------------------------------------


def test_add_then_list_show_and_token(store: Store) -> None:
    store.add_endpoint(details("b.example", "G2", 2), CERT, "AA")
    store.add_endpoint(details("a.example", "G2", 2), CERT, "BB")
    store.add_endpoint(details("c.example", "G1", 5), CERT, "CC")
    store.add_endpoint(details("d.example", "G2", 1, token="other"), CERT, "DD")
    assert [r.host_name for r in store.endpoints()] == [
        "c.example", "d.example", "a.example", "b.example"
    ]
    record = store.endpoint("d.example")
    assert (record.url, record.group_id, record.priority) == ("wss://d.example:14146/cfs", "G2", 1)
    assert (record.enabled, record.connected, record.fingerprint) == (True, False, "DD")
    assert record.certificate_der == CERT
    assert store.token("d.example") == "other"
    assert store.token("a.example") == TOKEN


def test_has_endpoints_until_the_last_is_deleted(store: Store) -> None:
    assert not store.has_endpoints()
    store.add_endpoint(details("h1"), CERT, "AB")
    assert store.has_endpoints()
    store.delete_endpoint("h1")
    assert not store.has_endpoints()


def test_adding_a_host_twice_is_refused_and_changes_nothing(store: Store) -> None:
    store.add_endpoint(details("h1"), CERT, "AB")
    with pytest.raises(AlreadyExistsError, match=f"^{MSG_EXISTS}: h1$"):
        store.add_endpoint(details("h1", "G9", 7, token="new-token"), b"other", "EF")
    record = store.endpoint("h1")
    assert (record.group_id, record.priority, record.fingerprint) == ("G1", 1, "AB")
    assert store.token("h1") == TOKEN
    assert "G9" not in cursors(store)  # the failed add left no cursor behind


@pytest.mark.parametrize("call", ["endpoint", "token", "enable", "disable", "delete"])
def test_unknown_host_is_not_found(store: Store, call: str) -> None:
    actions: dict[str, Callable[[], object]] = {
        "endpoint": lambda: store.endpoint("nope"),
        "token": lambda: store.token("nope"),
        "enable": lambda: store.set_enabled("nope", True),
        "disable": lambda: store.set_enabled("nope", False),
        "delete": lambda: store.delete_endpoint("nope"),
    }
    with pytest.raises(NotFoundError, match=f"^{MSG_NOT_FOUND}: nope$"):
        actions[call]()


def test_enable_and_disable(store: Store) -> None:
    store.add_endpoint(details("h1"), CERT, "AB")
    store.set_enabled("h1", False)
    assert store.endpoint("h1").enabled is False
    store.set_enabled("h1", True)
    assert store.endpoint("h1").enabled is True


def crash_mid_transaction(store: Store) -> None:
    with store.transaction() as conn:
        conn.execute("INSERT INTO poller_state VALUES ('k', 'v')")
        raise RuntimeError("crash in the middle")


def test_a_failed_transaction_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError, match="crash in the middle"):
        crash_mid_transaction(store)
    with store.reading() as conn:
        assert conn.execute("SELECT COUNT(*) FROM poller_state").fetchone() == (0,)


# -- group cursors ---------------------------------------------------------------------------


def test_a_new_group_starts_at_the_head_of_the_outbox(store: Store) -> None:
    store.add_endpoint(details("h1", "G1"), CERT, "AB")
    assert cursors(store) == {"G1": 0}
    head = queue(store, 3)
    store.add_endpoint(details("h2", "G2"), CERT, "AB")
    assert cursors(store) == {"G1": 0, "G2": head}
    queue(store, 2)
    store.add_endpoint(details("h3", "G1", 2), CERT, "AB")  # an existing group keeps its place
    assert cursors(store) == {"G1": 0, "G2": head}


def test_deleting_a_groups_last_endpoint_drops_its_cursor_and_batch(store: Store) -> None:
    store.add_endpoint(details("h1", "G1"), CERT, "AB")
    store.add_endpoint(details("h2", "G1", 2), CERT, "AB")
    store.add_endpoint(details("h3", "G2"), CERT, "AB")
    with store.transaction() as conn:
        for group in ("G1", "G2"):
            conn.execute("INSERT INTO group_batches VALUES (?, 'ID', 1, 1, 0)", (group,))
    store.delete_endpoint("h1")
    assert set(cursors(store)) == {"G1", "G2"}  # G1 still has h2
    store.delete_endpoint("h2")
    assert set(cursors(store)) == {"G2"}
    with store.reading() as conn:
        assert conn.execute("SELECT group_id FROM group_batches").fetchall() == [("G2",)]
    head = queue(store, 4)
    store.add_endpoint(details("h1", "G1"), CERT, "AB")  # added again: from now on
    assert cursors(store)["G1"] == head



def test_replace_renews_in_place_and_keeps_the_groups_position(store: Store) -> None:
    store.add_endpoint(details("h1", "G1"), CERT, "AB")
    store.set_enabled("h1", False)
    queue(store, 3)  # owed to G1, whose cursor is still 0
    store.add_endpoint(details("h1", "G1", 7, token="new-token"), b"new-cert", "CD",
                       replace=True)
    [record] = store.endpoints()
    assert (record.priority, record.fingerprint, record.certificate_der) == (7, "CD", b"new-cert")
    assert not record.enabled  # a renewal does not re-enable
    assert store.token("h1") == "new-token"
    assert cursors(store) == {"G1": 0}


def test_replace_into_another_group_starts_it_at_the_head_and_forgets_the_empty_one(
    store: Store,
) -> None:
    store.add_endpoint(details("h1", "G1"), CERT, "AB")
    head = queue(store, 2)
    store.add_endpoint(details("h1", "G2"), CERT, "AB", replace=True)
    assert cursors(store) == {"G2": head}


def test_replace_of_an_unknown_host_adds_it(store: Store) -> None:
    store.add_endpoint(details("h9", "G9"), CERT, "AB", replace=True)
    assert [r.host_name for r in store.endpoints()] == ["h9"]



def test_host_names_are_case_blind(store: Store) -> None:
    store.add_endpoint(details("Cloud.Example"), CERT, "AB")
    with pytest.raises(AlreadyExistsError):
        store.add_endpoint(details("cloud.example", "G2"), CERT, "AB")
    assert store.endpoint("CLOUD.example").host_name == "Cloud.Example"
    assert store.token("cloud.EXAMPLE") == TOKEN
    store.add_endpoint(details("cloud.example", token="renewed"), CERT, "AB", replace=True)
    assert [r.host_name for r in store.endpoints()] == ["cloud.example"]
    assert store.token("CLOUD.EXAMPLE") == "renewed"
    store.delete_endpoint("CLOUD.EXAMPLE")
    assert store.endpoints() == []


# -- connection status -----------------------------------------------------------------------


def test_status_is_set_kept_and_reset(store: Store) -> None:
    store.add_endpoint(details("h1"), CERT, "AB")
    store.add_endpoint(details("h2", priority=2), CERT, "AB")
    store.set_status("h1", True)
    record = store.endpoint("h1")
    assert record.connected is True
    assert record.status_since is not None
    store.set_status("h2", False, "refused at CONNECT")
    store.set_status("h2", False)  # no new error: the last one stays for the admin
    assert store.endpoint("h2").last_error == "refused at CONNECT"
    store.set_status("h2", True)  # connected again: the old error is no longer news
    assert store.endpoint("h2").last_error is None
    store.reset_status()
    assert [r.connected for r in store.endpoints()] == [False, False]
    store.delete_endpoint("h1")
    with store.reading() as conn:
        assert conn.execute("SELECT host_name FROM endpoint_status").fetchall() == [("h2",)]


@settings(max_examples=25, deadline=None)  # each example is a real database file (and fsyncs)
@given(st.lists(valid_details(), min_size=1, max_size=3, unique_by=lambda d: d["hostName"]))
def test_any_valid_details_are_stored_and_read_back(
    tmp_path_factory: pytest.TempPathFactory, objects: list[dict[str, object]]
) -> None:
    directory = tmp_path_factory.mktemp("store")
    store = Store(directory / "nbwss.db", directory / "nbwss.key")
    try:
        added = [details_from_object(obj) for obj in objects]
        for endpoint in added:
            store.add_endpoint(endpoint, CERT, "AB")
        for endpoint in added:
            record = store.endpoint(endpoint.host_name)
            assert (record.url, record.group_id, record.priority) == (
                endpoint.url, endpoint.group_id, endpoint.priority
            )
            assert store.token(endpoint.host_name) == endpoint.token
    finally:
        store.close()


def test_the_wal_is_cut_back_after_a_large_transaction(tmp_path: Path) -> None:
    """SQLite keeps the WAL at its largest unless told: after a big intake and a
    checkpoint, the next write truncates it to `JOURNAL_SIZE_LIMIT_BYTES`."""
    store = Store(tmp_path / "nbwss.db", tmp_path / "nbwss.key")
    wal = tmp_path / "nbwss.db-wal"
    try:
        with store.transaction() as conn:
            conn.executemany(
                "INSERT INTO outbox (object, data, queued_at) VALUES ('JOB', ?, 0)",
                (("x" * 1000,) for _ in range(2 * JOURNAL_SIZE_LIMIT_BYTES // 1000)),
            )
        assert wal.stat().st_size > JOURNAL_SIZE_LIMIT_BYTES
        with store.reading() as conn:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        with store.transaction() as conn:  # the next write starts the WAL over, cut back
            conn.execute("INSERT INTO outbox (object, data, queued_at) VALUES ('JOB', '{}', 0)")
        assert wal.stat().st_size <= JOURNAL_SIZE_LIMIT_BYTES
    finally:
        store.close()
