"""Delivery end to end: the daemon's service over real loopback wss:// endpoints.

The endpoints are `tests.peers.Peer` (the `websockets` library); the daemon is the
real `Service` with the delivery wiring, in-process or as a separate process that is
killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from nbwss import outbox
from nbwss.daemon import build_service
from nbwss.properties import Settings
from nbwss.sdnotify import Notifier
from nbwss.service import Service
from nbwss.store import Store
from nbwss.wake import send_wake
from tests.conftest import SPEC_EXAMPLES, TlsMaterial, timeout
from tests.peers import Ack, Peer, add_endpoint

EXAMPLES = SPEC_EXAMPLES
GROUP = "GROUP1"


@pytest.fixture
def store(short_dir: Path) -> Iterator[Store]:
    db = Store(short_dir / "nbwss.db", short_dir / "nbwss.key")
    yield db
    db.close()


def settings_for(short_dir: Path, **values: Any) -> Settings:
    defaults: dict[str, Any] = {
        "store_path": short_dir / "nbwss.db",
        "connection_period_s": 0.5,
        "notification_rate_s": 30.0,
        "keepalive_rate_s": 30.0,
    }
    return Settings(**(defaults | values))


@asynccontextmanager
async def daemon(settings: Settings, store: Store) -> AsyncIterator[Service]:
    service = build_service(settings, store, status=False, notifier=Notifier(None))
    task = asyncio.create_task(service.async_run(handle_signals=False))
    try:
        async with asyncio.timeout(timeout(5)):
            await service.ready.wait()  # after the wake socket is bound
        yield service
    finally:
        service.handle_exit()
        async with asyncio.timeout(timeout(10)):
            await task


def notify(store: Store, settings: Settings, *items: tuple[str, dict[str, Any]]) -> None:
    """What `nbwss notify` does: commit, then poke the daemon."""
    with store.transaction() as conn:
        outbox.enqueue(conn, items, time.time())
    send_wake(settings.wake_socket)


def notifications(peer: Peer) -> list[dict[str, Any]]:
    return peer.received("NOTIFICATION")


def delivered(messages: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (element["object"], data)
        for message in messages
        for element in message["payload"]
        for data in element["data"]
    ]


def vmware_sequence() -> list[tuple[str, dict[str, Any]]]:
    items: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(EXAMPLES.glob("vmware-*.json")):
        for element in json.loads(path.read_text())["payload"]:
            items += [(element["object"], data) for data in element["data"]]
    return items


def job(job_id: int) -> tuple[str, dict[str, Any]]:
    return "JOB", {
        "scheduleType": "ST_FULL", "clientName": "vm", "status": 0, "startTime": 1,
        "state": "DONE", "policyName": "p", "parentJobId": job_id, "jobId": job_id,
        "policyType": "VMWARE", "jobType": "BACKUP",
    }  # fmt: skip


async def test_vmware_backup_sequence_arrives_in_order(
    tls: TlsMaterial, store: Store, short_dir: Path
) -> None:
    sequence = vmware_sequence()
    assert [d.get("jobId", d.get("operationId")) for _, d in sequence] == [
        144, 145, 146, "CREATE", "UPDATE", 146, 145, 144,
    ]  # fmt: skip
    settings = settings_for(short_dir)
    async with Peer(tls.server_cert) as peer:
        add_endpoint(store, peer, "ep1.test", group_id=GROUP)
        async with daemon(settings, store):
            await peer.wait_for(lambda: peer.connected)
            started = time.monotonic()
            for item in sequence:  # one `notify` per event, as NetBackup's scripts call it
                notify(store, settings, item)
            await peer.wait_for(lambda: len(delivered(notifications(peer))) == len(sequence))
            # Pushed, not polled: far sooner than notification.scheduledRate (30 s).
            assert time.monotonic() - started < timeout(5)
            assert delivered(notifications(peer)) == sequence
            for message in notifications(peer):
                objects = [element["object"] for element in message["payload"]]
                assert len(objects) == len(set(objects))  # one element per type


def image(backup_time: int) -> tuple[str, dict[str, Any]]:
    return "IMAGE", {
        "clientType": "VMWARE", "clientName": "vm", "backupTime": backup_time,
        "createdTime": backup_time + 1, "operationId": "CREATE",
        "backupId": f"vm_{backup_time}",
    }  # fmt: skip


def tag(item: tuple[str, dict[str, Any]]) -> str:
    """J<jobId> or I<backupTime>: what a test reads an event as."""
    obj, data = item
    return f"J{data['jobId']}" if obj == "JOB" else f"I{data['backupTime']}"


async def test_interleaved_events_behind_an_unacked_batch_come_one_element_per_type(
    tls: TlsMaterial, store: Store, short_dir: Path
) -> None:
    settings = settings_for(short_dir)
    # J2 I3 J4 I5 I6 J7 J8 I9 J10, queued while J1 waits for its ack.
    pattern = "JIJIIJJIJ"
    queued = [job(n) if kind == "J" else image(n) for n, kind in enumerate(pattern, start=2)]
    async with Peer(tls.server_cert, ack=Ack.WITHHOLD) as peer:
        add_endpoint(store, peer, "ep1.test", group_id=GROUP)
        async with daemon(settings, store):
            await peer.wait_for(lambda: peer.connected)
            notify(store, settings, job(1))
            await peer.wait_for(lambda: len(notifications(peer)) == 1)
            notify(store, settings, *queued)
            peer.ack = Ack.NOW
            await peer.ack_notification(notifications(peer)[0])
            await peer.wait_for(lambda: len(delivered(notifications(peer))) == 1 + len(queued))
    messages = notifications(peer)
    assert [tag(item) for item in delivered(messages)] == [tag(job(1)), *map(tag, queued)]
    shapes = [[(e["object"], len(e["data"])) for e in m["payload"]] for m in messages]
    assert shapes == [
        [("JOB", 1)],  # J1, alone: it was on the wire before the rest was queued
        [("JOB", 1), ("IMAGE", 1)],  # J2 I3 (J4 would be a second JOB element)
        [("JOB", 1), ("IMAGE", 2)],  # J4 I5 I6
        [("JOB", 2), ("IMAGE", 1)],  # J7 J8 I9
        [("JOB", 1)],  # J10
    ]


async def test_withheld_ack_gets_the_same_message_again_and_nothing_new(
    tls: TlsMaterial, store: Store, short_dir: Path
) -> None:
    settings = settings_for(short_dir, notification_rate_s=0.3, notification_max_batch=1)
    async with Peer(tls.server_cert, ack=Ack.WITHHOLD) as peer:
        add_endpoint(store, peer, "ep1.test", group_id=GROUP)
        async with daemon(settings, store):
            await peer.wait_for(lambda: peer.connected)
            notify(store, settings, job(1), job(2))
            await peer.wait_for(lambda: len(notifications(peer)) >= 3)
            first, *again = notifications(peer)
            assert [m["id"] for m in again] == [first["id"]] * len(again)
            assert all(m == first for m in again)  # same content, same timeStamp
            assert {d["jobId"] for _, d in delivered(notifications(peer))} == {1}
            await peer.ack_notification(first)
            await peer.wait_for(
                lambda: any(d["jobId"] == 2 for _, d in delivered(notifications(peer)))
            )
            assert notifications(peer)[-1]["id"] != first["id"]


async def test_failover_to_priority_2_resumes_without_loss(
    tls: TlsMaterial, store: Store, short_dir: Path
) -> None:
    settings = settings_for(short_dir, notification_max_batch=2)
    async with (
        Peer(tls.server_cert, ack=Ack.WITHHOLD) as primary,
        Peer(tls.server_cert) as secondary,
    ):
        add_endpoint(store, primary, "ep1.test", group_id=GROUP, priority=1)
        add_endpoint(store, secondary, "ep2.test", group_id=GROUP, priority=2)
        async with daemon(settings, store):
            await primary.wait_for(lambda: primary.connected)
            notify(store, settings, *[job(n) for n in range(1, 8)])
            await primary.wait_for(lambda: len(notifications(primary)) == 1)
            await primary.stop()  # priority 1 goes offline with a batch unacknowledged
            await secondary.wait_for(
                lambda: len(delivered(notifications(secondary))) >= 7, seconds=15
            )
            unacked = notifications(primary)[0]
            assert notifications(secondary)[0] == unacked  # resent first, same id
            assert [d["jobId"] for _, d in delivered(notifications(secondary))] == list(range(1, 8))


async def start_daemon(config: Path) -> asyncio.subprocess.Process:
    """`nbwss run` as an admin starts it, in its own process so it can be killed."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nbwss", "-c", str(config), "run",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "NOTIFY_SOCKET": ""},
    )  # fmt: skip


async def test_kill_9_mid_stream_then_restart_loses_nothing(
    tls: TlsMaterial, store: Store, short_dir: Path
) -> None:
    total = 3000
    config = short_dir / "nbwss.properties"
    config.write_text(
        f"store.path={short_dir / 'nbwss.db'}\nconnectionInfo.period=0.5\n"
        "notification.maxBatch=50\nnotification.scheduledRate=30\nlog.level=warning\n"
    )
    settings = settings_for(short_dir)
    async with Peer(tls.server_cert, ack=Ack.WITHHOLD) as peer:
        add_endpoint(store, peer, "ep1.test", group_id=GROUP)
        notify(store, settings, *[job(n) for n in range(total)])
        process = await start_daemon(config)
        try:
            await peer.wait_for(lambda: len(notifications(peer)) == 1, seconds=20)
            await peer.ack_notification(notifications(peer)[0])
            await peer.wait_for(lambda: len(notifications(peer)) == 2)
            # Killed with the second batch on the wire and its ack not given.
            process.send_signal(signal.SIGKILL)
            await process.wait()
            peer.ack = Ack.NOW
            process = await start_daemon(config)
            await peer.wait_for(
                lambda: len(delivered(notifications(peer))) >= total + 50, seconds=30
            )
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                async with asyncio.timeout(timeout(10)):
                    await process.wait()
    messages = notifications(peer)
    first_seen: dict[str, dict[str, Any]] = {}
    order: list[int] = []
    for message in messages:
        if message["id"] in first_seen:
            assert message == first_seen[message["id"]]  # only a whole, identical resend
            continue
        first_seen[message["id"]] = message
        order += [d["jobId"] for _, d in delivered([message])]
    assert order == list(range(total))  # nothing lost, nothing reordered
    assert len(messages) - len(first_seen) == 1  # only the batch in flight at the kill
    assert messages[2] == messages[1]  # and it went first after the restart
