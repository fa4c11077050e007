"""Private files and directories (issue 11, items 9 and 11).

The key file is created whole or not at all, so processes racing to create it all end
with the same complete key; directories nbwss creates are 0700 at every level, even
under `umask 000`.
"""

from __future__ import annotations

import multiprocessing
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbwss.store import Store
from nbwss.vault import TokenVault, create_private_file

PROCESSES = 6
ROUNDS = 25


def _open_vault(key_path: str, start: object, results: object) -> None:
    """One racer: wait for the others, then open (and so maybe create) the key."""
    start.wait()  # type: ignore[attr-defined]
    try:
        TokenVault(Path(key_path))
        results.put(Path(key_path).read_bytes().hex())  # type: ignore[attr-defined]
    except Exception as exc:
        results.put(f"error: {exc}")  # type: ignore[attr-defined]


def test_processes_racing_to_create_the_key_all_read_the_same_whole_key(
    tmp_path: Path,
) -> None:
    context = multiprocessing.get_context("fork")
    outcomes = []
    for round_number in range(ROUNDS):
        key_path = tmp_path / f"round{round_number}" / "nbwss.key"
        start = context.Barrier(PROCESSES)
        results = context.Queue()
        racers = [context.Process(target=_open_vault, args=(str(key_path), start, results))
                  for _ in range(PROCESSES)]
        for racer in racers:
            racer.start()
        seen = [results.get(timeout=60) for _ in racers]
        for racer in racers:
            racer.join(timeout=60)
        outcomes.append(seen)
        assert [p.name for p in key_path.parent.iterdir()] == ["nbwss.key"]  # no temp left
    failures = [o for seen in outcomes for o in seen if o.startswith("error")]
    assert failures == []
    for seen in outcomes:
        assert len(set(seen)) == 1
        assert len(bytes.fromhex(seen[0])) == 32


def test_an_existing_file_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "f"
    create_private_file(path, b"first")
    with pytest.raises(FileExistsError):
        create_private_file(path, b"second")
    assert path.read_bytes() == b"first"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


@pytest.fixture
def umask_000() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def modes_below(top: Path, leaf: Path) -> dict[str, int]:
    """The mode of every directory from below `top` down to `leaf`."""
    modes = {}
    current = leaf
    while current != top:
        modes[str(current.relative_to(top))] = stat.S_IMODE(current.stat().st_mode)
        current = current.parent
    return modes


def test_the_store_and_key_directories_are_private_under_umask_000(
    tmp_path: Path, umask_000: None
) -> None:
    database = tmp_path / "a" / "b" / "state" / "nbwss.db"
    key = tmp_path / "c" / "d" / "nbwss.key"
    store = Store(database, key)
    store.vault.encrypt("token", "h1")
    store.close()
    assert set(modes_below(tmp_path, database.parent).values()) == {0o700}
    assert set(modes_below(tmp_path, key.parent).values()) == {0o700}
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    for path in tmp_path.rglob("*"):
        assert not stat.S_IMODE(path.stat().st_mode) & stat.S_IWOTH, path


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)  # noqa: S103 - an admin's shared directory, on purpose
    create_private_file(shared / "new" / "f", b"x")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE((shared / "new").stat().st_mode) == 0o700
