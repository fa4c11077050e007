"""`nbwss notify -` holds its input in SQLite's temporary directory; when that cannot be
written, the error names that directory and what to do, not the database (issue 14)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

JOB = {
    "scheduleType": "ST_FULL", "clientName": "c1", "status": 0, "startTime": 1459829698,
    "state": "DONE", "policyName": "p", "parentJobId": 1, "policyType": "VMWARE",
    "jobType": "BACKUP",
}  # fmt: skip


def unwritable_directory() -> Path:
    """A directory SQLite will choose and then fail to create a file in.

    SQLite skips a directory that access() says it cannot write to, so a read-only mode
    only works against root: then /proc (root may "write" to it, but no file can be made
    there) stands in for a read-only or full file system."""
    if os.geteuid() != 0:
        pytest.skip("SQLite passes over a directory this user cannot write to")
    directory = Path("/proc")
    with pytest.raises(FileNotFoundError):
        (directory / "nbwss-probe").write_bytes(b"")
    return directory


def notify(tmp_path: Path, lines: int, pad: int, tmpdir: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "nbwss.properties"
    config.write_text(f"store.path={tmp_path / 'nbwss.db'}\nlog.level=warning\n")
    stdin = "".join(
        json.dumps({"object": "JOB", "data": {**JOB, "jobId": n, "note": "x" * pad}}) + "\n"
        for n in range(lines)
    )
    env = {**os.environ, "SQLITE_TMPDIR": str(tmpdir)}
    return subprocess.run(
        [sys.executable, "-m", "nbwss", "-c", str(config), "notify", "-"],
        input=stdin, capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip


def queued(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "nbwss.db") as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()
    return int(count)


def test_an_unwritable_temp_directory_is_named_with_what_to_do(tmp_path: Path) -> None:
    directory = unwritable_directory()
    # About 6 MiB: more than SQLite's page cache, so the spool spills to a file.
    result = notify(tmp_path, 300, 20_000, directory)
    assert result.returncode == 1
    assert result.stderr == (
        f"nbwss: error: cannot hold the input in SQLite's temporary directory {directory}: "
        "unable to open database file; make it writable (with room for the input), or set "
        "SQLITE_TMPDIR to a directory that is\n"
    )
    assert queued(tmp_path) == 0


def test_input_that_fits_in_memory_is_queued_and_reported_as_such(tmp_path: Path) -> None:
    # The spool never touched the directory; tidying it up afterwards may, and failing
    # to tidy must not report committed rows as refused (a script would send them again).
    result = notify(tmp_path, 3000, 0, unwritable_directory())
    assert (result.returncode, result.stdout) == (0, "queued 3000 notifications (seq 1-3000)\n")
    assert queued(tmp_path) == 3000
