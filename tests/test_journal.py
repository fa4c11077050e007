"""Logs under systemd carry their syslog priority; an admin at a terminal reads sentences.

The real `nbwss` command runs as a subprocess: once with its stderr on a file that
`$JOURNAL_STREAM` names (as systemd does for the journal), once on a pseudo-terminal.
"""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from pathlib import Path

import structlog

from nbwss import logs
from nbwss.store import Store
from tests.conftest import TlsMaterial, timeout
from tests.peers import Peer, add_endpoint


def _store_with_endpoint(state_dir: Path, tls: TlsMaterial) -> None:
    store = Store(state_dir / "nbwss.db", state_dir / "nbwss.key")
    try:
        add_endpoint(store, Peer(tls.server_cert), "ep1.test")  # its URL only; never started
    finally:
        store.close()


def test_under_the_journal_each_line_starts_with_its_priority(
    state_dir: Path, tls: TlsMaterial, tmp_path: Path
) -> None:
    _store_with_endpoint(state_dir, tls)
    config = tmp_path / "nbwss.properties"
    config.write_text("no.such.key=1\n")
    journal = tmp_path / "journal"
    with journal.open("wb") as stream:
        status = os.fstat(stream.fileno())
        env = {**os.environ, "STATE_DIRECTORY": str(state_dir),
               "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        subprocess.run(
            [sys.executable, "-m", "nbwss", "-c", str(config), "endpoint", "disable",
             "ep1.test"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stream, env=env,
            timeout=timeout(30), check=True,
        )
    lines = journal.read_text().splitlines()
    assert [line[:3] for line in lines] == ["<4>", "<6>"], lines
    assert '"event": "config.unknown_key"' in lines[0]
    assert lines[1].startswith('<6>{"host": "ep1.test"')
    assert '"event": "endpoint.disabled"' in lines[1]


def test_another_stream_than_the_journals_gets_no_prefix(tmp_path: Path) -> None:
    with (tmp_path / "not-the-journal").open("w") as stream:
        assert not logs.is_journal(stream, {"JOURNAL_STREAM": "1:2"})
        status = os.fstat(stream.fileno())
        assert logs.is_journal(stream, {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"})
    assert not logs.is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def test_priorities_follow_the_level() -> None:
    render = logs._with_priority(lambda _, __, event: event["event"])
    assert render(None, "error", {"event": "x", "level": "error"}) == "<3>x"
    assert render(None, "debug", {"event": "y", "level": "debug"}) == "<7>y"
    structlog.reset_defaults()


def test_an_admin_command_on_a_terminal_prints_sentences_not_log_lines(
    state_dir: Path, tls: TlsMaterial
) -> None:
    _store_with_endpoint(state_dir, tls)
    primary, secondary = pty.openpty()
    try:
        subprocess.run(
            [sys.executable, "-m", "nbwss", "endpoint", "disable", "ep1.test"],
            stdin=secondary, stdout=secondary, stderr=secondary, timeout=timeout(30),
            env={**os.environ, "STATE_DIRECTORY": str(state_dir)}, check=True,
        )
        shown = os.read(primary, 65536).decode()
    finally:
        os.close(secondary)
        os.close(primary)
    assert shown == "Endpoint ep1.test disabled.\r\nno daemon running: applies at its start\r\n"
