"""Admin changes apply at once, and never drop a backlog silently.

End to end: the real `nbwss` command (a subprocess) against a real `nbwss run` with
`connectionInfo.period=60`, and endpoints served by `tests.peers` over loopback TLS.
Unit by unit: `nbwss.admin` against a real SQLite store.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from nbwss import admin, outbox
from nbwss.errors import NotFoundError, StoreError
from nbwss.store import Store
from tests.conftest import TlsMaterial, timeout
from tests.peers import Peer, add_endpoint
from tests.test_service import datagram_where


@dataclass
class Run:
    code: int
    out: str
    err: str


async def nbwss(config: Path, *argv: str) -> Run:
    """`nbwss -c CONFIG ARGV` as a subprocess, without blocking the peers' event loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nbwss", "-c", str(config), *argv,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(timeout(30)):
        out, err = await process.communicate()
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


@pytest.fixture
def config(short_dir: Path) -> Path:
    path = short_dir / "nbwss.properties"
    path.write_text(
        f"store.path={short_dir / 'nbwss.db'}\nconnectionInfo.period=60\nlog.format=json\n"
    )
    return path


@asynccontextmanager
async def daemon(config: Path, notify: socket.socket) -> AsyncIterator[None]:
    """`nbwss run` until the block ends; ready once it sent READY=1."""
    env = {**os.environ, "NOTIFY_SOCKET": notify.getsockname()}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nbwss", "-c", str(config), "run",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await datagram_where(notify, lambda text: "READY=1" in text)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout(10)):
            await process.wait()


def details_file(directory: Path, peer: Peer, host: str, group: str) -> str:
    path = directory / f"{host}.json"
    path.write_text(json.dumps({
        "token": "token-of-the-endpoint==", "priority": 1, "groupId": group,
        "hostName": host, "url": peer.url,
    }))
    return str(path)


async def test_add_and_disable_apply_within_two_seconds_despite_a_60_s_period(
    tls: TlsMaterial, short_store: Store, config: Path, short_dir: Path,
    notify_socket: socket.socket,
) -> None:
    async with Peer(tls.server_cert) as first, Peer(tls.server_cert) as second:
        add_endpoint(short_store, first, "ep1.test")
        async with daemon(config, notify_socket):
            await first.wait_for(lambda: first.connected, seconds=10)
            added = await nbwss(config, "endpoint", "add", "--yes", "--file",
                                details_file(short_dir, second, "ep2.test", "GROUP2"))
            assert added.code == 0, added.err
            assert "applied: the running daemon uses it from now on" in added.out
            await second.wait_for(lambda: second.connected, seconds=2)

            disabled = await nbwss(config, "endpoint", "disable", "ep2.test")
            assert disabled.code == 0, disabled.err
            assert "applied: the running daemon stops using it now" in disabled.out
            await second.wait_for(lambda: not second.connected, seconds=2)
            assert second.connections[0].close_reason == "endpoint disabled"
            assert first.connected  # the other group is untouched


async def test_without_a_daemon_the_change_waits_for_its_start(
    tls: TlsMaterial, short_store: Store, config: Path
) -> None:
    async with Peer(tls.server_cert) as peer:
        add_endpoint(short_store, peer, "ep1.test")
        result = await nbwss(config, "endpoint", "disable", "ep1.test")
    assert (result.code, result.out) == (
        0, "Endpoint ep1.test disabled.\nno daemon running: applies at its start\n"
    )


def queue(short_store: Store, count: int) -> None:
    job = {"scheduleType": "ST_FULL", "clientName": "vm1", "status": 0, "startTime": 1,
           "state": "ACTIVE", "policyName": "", "parentJobId": 1, "jobId": 1,
           "policyType": "VMWARE", "jobType": "BACKUP"}
    with short_store.transaction() as conn:
        outbox.enqueue(conn, [("JOB", job)] * count, 1_700_000_000.0)


async def test_deleting_the_last_endpoint_with_a_backlog_needs_yes_or_keep_position(
    tls: TlsMaterial, short_store: Store, config: Path
) -> None:
    async with Peer(tls.server_cert) as peer:
        add_endpoint(short_store, peer, "ep1.test")
    queue(short_store, 3)

    refused = await nbwss(config, "endpoint", "delete", "ep1.test")
    assert refused.code == 1
    assert refused.err == (
        "nbwss: error: deleting the last endpoint of group GROUP1 discards its 3 "
        "unacknowledged notification(s) queued since 2023-11-14T22:13:20+00:00; pass "
        "--keep-position to keep them for the group's next endpoint, or --yes\n"
    )
    assert short_store.endpoint("ep1.test")  # nothing changed

    disable = await nbwss(config, "endpoint", "disable", "ep1.test")
    assert disable.code == 1
    assert "stops delivery of its 3 unacknowledged notification(s)" in disable.err

    kept = await nbwss(config, "endpoint", "delete", "ep1.test", "--keep-position")
    assert kept.code == 0, kept.err
    assert [(b.group_id, b.backlog) for b in outbox.backlog(short_store, 0.0)] == [("GROUP1", 3)]


def test_a_kept_position_resumes_when_the_group_gets_an_endpoint_again(
    tls: TlsMaterial, short_store: Store
) -> None:
    peer = Peer(tls.server_cert)  # never started: only its URL and certificate are used
    add_endpoint(short_store, peer, "ep1.test")
    add_endpoint(short_store, peer, "other.test", group_id="OTHER")
    queue(short_store, 2)
    admin.delete_endpoint(short_store, "ep1.test", keep_position=True)
    add_endpoint(short_store, peer, "third.test", group_id="THIRD")  # another group's add keeps it
    add_endpoint(short_store, peer, "ep2.test")
    position = outbox.load_position(short_store, "GROUP1", 0.0)
    assert position.acked_seq == 0  # the 2 queued before the delete are still to be sent

    admin.delete_endpoint(short_store, "ep2.test")  # without --keep-position: forgotten
    assert "GROUP1" not in {b.group_id for b in outbox.backlog(short_store, 0.0)}


def test_backlog_at_risk_only_for_the_groups_last_endpoint(
    tls: TlsMaterial, short_store: Store
) -> None:
    peer = Peer(tls.server_cert)
    add_endpoint(short_store, peer, "ep1.test")
    add_endpoint(short_store, peer, "ep2.test", priority=2)
    assert admin.backlog_at_risk(short_store, "ep1.test", deleting=True) is None  # nothing queued
    queue(short_store, 1)
    assert admin.backlog_at_risk(short_store, "ep1.test", deleting=True) is None  # ep2 remains
    admin.set_enabled(short_store, "ep2.test", False)
    # ep2, though disabled, still holds the group's position
    assert admin.backlog_at_risk(short_store, "ep1.test", deleting=True) is None
    at_risk = admin.backlog_at_risk(short_store, "EP1.test", deleting=False)  # case-blind
    assert at_risk is not None
    assert (at_risk.group_id, at_risk.count) == ("GROUP1", 1)
    assert admin.backlog_at_risk(short_store, "ep2.test", deleting=False) is None  # disabled


def test_a_delete_the_database_refuses_is_the_guides_message(
    tls: TlsMaterial, short_store: Store
) -> None:
    add_endpoint(short_store, Peer(tls.server_cert), "ep1.test")
    short_store.conn.execute("PRAGMA query_only = ON")  # every write now fails in SQLite
    with pytest.raises(StoreError, match=r"^Unable to delete certificate for host: ep1\.test \("):
        admin.delete_endpoint(short_store, "ep1.test")
    with pytest.raises(NotFoundError):
        admin.delete_endpoint(short_store, "nope.test")


async def test_on_a_terminal_the_admin_is_asked_and_no_keeps_everything(
    tls: TlsMaterial, short_store: Store, config: Path
) -> None:
    add_endpoint(short_store, Peer(tls.server_cert), "ep1.test")
    queue(short_store, 2)
    primary, secondary = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nbwss", "-c", str(config), "endpoint", "delete", "ep1.test",
            stdin=secondary, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        os.write(primary, b"n\n")
        async with asyncio.timeout(timeout(30)):
            out, err = await process.communicate()
    finally:
        os.close(secondary)
        os.close(primary)
    assert process.returncode == 1
    assert out.decode().startswith(
        "Warning: deleting the last endpoint of group GROUP1 discards its 2 unacknowledged "
        "notification(s) queued since 2023-11-14T22:13:20+00:00. Go on? [y/N] ")
    assert err.decode() == "nbwss: error: nothing was changed\n"
    assert short_store.endpoint("ep1.test")
