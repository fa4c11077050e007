"""The delivery driver (`Session` carrying out its core's operations) over a real SQLite
file and an in-memory WebSocket endpoint; the janitor; the wake socket."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import structlog
from structlog.testing import capture_logs

from nbwss import logs, messages, metrics, outbox
from nbwss.delivery import AckCommit, EventRange
from nbwss.dial import Target
from nbwss.endpoints import EndpointDetails
from nbwss.errors import ConnectError
from nbwss.messages import Message, MessageType, SubType, encode, notification_response
from nbwss.outboxes import AckCommitter, DeliveryWiring, GroupOutbox, OutboxJanitor
from nbwss.properties import Settings
from nbwss.protocol import DeliveryLedger
from nbwss.session import Session
from nbwss.store import Store
from nbwss.values import GroupPosition, OutboxEvent, PersistedBatch
from nbwss.wake import OutboxWatch, WakeListener, Waker, send_wake
from tests.conftest import timeout
from tests.test_ack_committer import HeldStore
from tests.test_outbox_watch import reads_reach

GROUP = "G1"
T = TypeVar("T")
TOKEN = "token-of-the-endpoint=="


class Endpoint:
    """An endpoint behind an in-memory WebSocket, as the session sees aiohttp's: answers
    CONNECT valid, records each NOTIFICATION and acknowledges it at once unless told; a
    write can be made to hang (the session's send deadline ends it) or fail."""

    def __init__(self, *, ack: bool = True) -> None:
        self.ack = ack
        self.sent: list[Message] = []
        self.hang_next = 0
        self.fail_next = False  # the next NOTIFICATION write: the connection is reset
        self.close_code: int | None = None
        self._frames: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()
        self._changed = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self.close_code is not None

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage:  # noqa: ASYNC109
        return await self._frames.get()

    async def send_str(self, data: str, compress: int | None = None) -> None:
        message = messages.decode(data)
        if message.type is MessageType.CONNECT:
            self.respond(messages.response_to(message, {"valid": True}, 0))
            return
        if self.fail_next:
            self.fail_next = False
            raise ConnectionResetError("reset by the test")
        if self.hang_next:  # a NOTIFICATION write that never completes
            self.hang_next -= 1
            await asyncio.Event().wait()
        self.sent.append(message)
        self._changed.set()
        if self.ack and message.type is MessageType.NOTIFICATION:
            self.respond(notification_response(message, 0))

    async def ping(self, message: bytes = b"") -> None:
        pass

    async def pong(self, message: bytes = b"") -> None:
        pass

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        if self.closed:
            return False
        self.close_code = code
        self._frames.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.CLOSED, None, None))
        return True

    def respond(self, response: Message) -> None:
        self._frames.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.TEXT, encode(response), None))

    async def wait_for(self, predicate: Callable[[], bool], seconds: float = 5) -> None:
        async with asyncio.timeout(timeout(seconds)):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def job_ids(self) -> list[int]:
        return [
            data["jobId"]
            for message in self.sent
            if message.type is MessageType.NOTIFICATION
            for element in payload(message)
            for data in element["data"]
        ]


def payload(message: Message) -> list[dict[str, Any]]:
    assert isinstance(message.payload, list)
    return message.payload


def job(job_id: int) -> dict[str, Any]:
    return {"jobId": job_id, "state": "ACTIVE"}


def add_group(store: Store) -> None:
    """The group as `endpoint add` makes it: its cursor starts at the head."""
    details = EndpointDetails(
        token="token-of-the-endpoint==", priority=1, group_id=GROUP, host_name="ep1.test",
        url="wss://127.0.0.1:1/cfs",
    )  # fmt: skip
    store.add_endpoint(details, b"certificate", "00:11")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "nbwss.db", tmp_path / "nbwss.key")
    add_group(store)
    yield store
    store.close()


def put(store: Store, *job_ids: int) -> None:
    with store.transaction() as conn:
        outbox.enqueue(conn, [("JOB", job(j)) for j in job_ids], 0)


def link_settings(**values: Any) -> Settings:
    defaults: dict[str, Any] = {"notification_rate_s": 60.0, "send_timeout_s": 2.0}
    return Settings(**(defaults | values))


def group_outbox(store: Store, waker: Waker | None = None) -> GroupOutbox:
    return GroupOutbox(store, DeliveryLedger(GROUP), waker or Waker())


class Running:
    """A connection of the group to `endpoint`, served in a task until `stop()`."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.task = asyncio.create_task(session.run())

    async def stop(self, reason: str = "test over") -> str:
        await self.session.close(reason)
        return await self.task


async def connected(
    delivery: GroupOutbox, endpoint: Endpoint, settings: Settings, host: str = "ep1"
) -> Running:
    target = Target(GROUP, host, "wss://ep1.test/cfs", TOKEN, b"")
    session = Session(endpoint, target, settings, delivery, None, time.time)
    await session.handshake()
    return Running(session)


@pytest.fixture
async def running() -> AsyncIterator[Callable[..., Any]]:
    started: list[Running] = []

    async def start(
        delivery: GroupOutbox, endpoint: Endpoint, settings: Settings | None = None,
        host: str = "ep1",
    ) -> Running:
        started.append(await connected(delivery, endpoint, settings or link_settings(), host))
        return started[-1]

    yield start
    for run in started:
        if not run.task.done():
            await run.stop()


def acked_metric() -> float:
    value = metrics.REGISTRY.get_sample_value("nbwss_notifications_acked_total", {"group": GROUP})
    return value or 0.0


def acked_seq(store: Store) -> int:
    return outbox.load_position(store, GROUP, 0).acked_seq


async def test_delivers_in_order_in_batches_and_advances_the_cursor(
    store: Store, running: Any
) -> None:
    put(store, *range(1, 8))
    endpoint = Endpoint()
    delivery = group_outbox(store)
    acked_before = acked_metric()
    run = await running(delivery, endpoint, link_settings(notification_max_batch=3))
    await endpoint.wait_for(lambda: len(endpoint.sent) == 3)
    assert endpoint.job_ids() == [1, 2, 3, 4, 5, 6, 7]
    assert [len(payload(m)[0]["data"]) for m in endpoint.sent] == [3, 3, 1]
    assert len({m.id for m in endpoint.sent}) == 3
    await run.stop()  # every ack that arrived before the close is committed
    assert acked_seq(store) == 7
    assert outbox.purge(store) == 7  # acknowledged by every group: the janitor's to purge
    assert acked_metric() == acked_before + 7
    assert delivery.ledger.last_ack_at is not None


async def test_a_wake_sends_new_events_at_once(store: Store, running: Any) -> None:
    waker = Waker()
    endpoint = Endpoint()
    await running(group_outbox(store, waker), endpoint, link_settings(notification_rate_s=60.0))
    put(store, 1)
    waker.wake()
    await endpoint.wait_for(lambda: endpoint.job_ids() == [1], seconds=2)  # << the rate
    put(store, 2)
    waker.wake()
    await endpoint.wait_for(lambda: endpoint.job_ids() == [1, 2], seconds=2)


async def test_without_a_wake_the_outbox_watch_finds_new_rows(store: Store, running: Any) -> None:
    """A datagram lost: the daemon's one watch of the outbox's head wakes the connection
    (which no longer polls on its own: its rate here is a minute)."""
    waker = Waker()
    put(store, 1)
    endpoint = Endpoint()
    await running(group_outbox(store, waker), endpoint, link_settings(notification_rate_s=60.0))
    await endpoint.wait_for(lambda: endpoint.job_ids() == [1])
    watch = OutboxWatch(store, waker, period_s=0.05)
    task = asyncio.create_task(watch.run())
    try:
        await reads_reach(watch, 3)  # the connection has long read past its ack: it waits
        put(store, 2)  # and no wake-up: only the watch can find it
        await endpoint.wait_for(lambda: endpoint.job_ids() == [1, 2])
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_withheld_ack_resends_the_same_message_and_nothing_new(
    store: Store, running: Any
) -> None:
    put(store, 1, 2)
    endpoint = Endpoint(ack=False)
    await running(group_outbox(store), endpoint,
                  link_settings(notification_rate_s=0.2, notification_max_batch=1))
    await endpoint.wait_for(lambda: len(endpoint.sent) == 3)
    first, *again = endpoint.sent
    assert all(encode(m) == encode(first) for m in again)  # same id, same bytes
    assert endpoint.job_ids() == [1, 1, 1]
    endpoint.respond(notification_response(first, 0))
    await endpoint.wait_for(lambda: 2 in endpoint.job_ids())
    assert acked_seq(store) >= 1


async def test_a_write_past_the_send_timeout_counts_as_not_sent(store: Store, running: Any) -> None:
    put(store, 1)
    endpoint = Endpoint()
    endpoint.hang_next = 1
    with capture_logs() as logged:
        run = await running(group_outbox(store), endpoint,
                            link_settings(notification_rate_s=0.2, send_timeout_s=0.05))
        await endpoint.wait_for(lambda: endpoint.job_ids() == [1])
        await run.stop()
    assert "notification.send_timeout" in [e["event"] for e in logged]
    assert "notification.sent" in [e["event"] for e in logged]


async def test_wrong_id_and_non_empty_payload_do_not_acknowledge(
    store: Store, running: Any
) -> None:
    put(store, 1)
    endpoint = Endpoint(ack=False)
    delivery = group_outbox(store)
    with capture_logs() as logged:
        run = await running(delivery, endpoint)
        await endpoint.wait_for(lambda: len(endpoint.sent) == 1)
        request = endpoint.sent[0]
        endpoint.respond(Message("OTHER", MessageType.NOTIFICATION, SubType.RESPONSE, 0, []))
        endpoint.respond(Message(request.id, request.type, SubType.RESPONSE, 0, [{"x": 1}]))
        await run.stop()
    refused = [e for e in logged if e["event"] == "notification.response_refused"]
    assert [(e["reason"], e["log_level"]) for e in refused] == [
        ("wrong_id", "warning"), ("non_empty_payload", "warning")
    ]
    assert delivery.ledger.machine is not None
    assert delivery.ledger.machine.awaiting_commit is None
    assert acked_seq(store) == 0


async def test_failover_resends_the_outstanding_batch_first(store: Store, running: Any) -> None:
    put(store, 1, 2)
    delivery = group_outbox(store)
    first = Endpoint(ack=False)
    run = await running(delivery, first, link_settings(notification_max_batch=1))
    await first.wait_for(lambda: len(first.sent) == 1)
    await run.stop()  # the connection to priority 1 is gone
    second = Endpoint()
    await running(delivery, second, link_settings(notification_max_batch=1), "ep2")
    await second.wait_for(lambda: len(second.sent) == 2)
    assert second.sent[0].id == first.sent[0].id
    assert second.job_ids() == [1, 2]


async def test_a_stall_is_reported_once_and_its_count_carries_over_a_failover(
    store: Store, running: Any
) -> None:
    put(store, 1)
    delivery = group_outbox(store)
    stalling = link_settings(notification_rate_s=0.05, notification_stall_after_sends=3)
    first = Endpoint(ack=False)
    with capture_logs() as logged:
        run = await running(delivery, first, stalling)
        await first.wait_for(lambda: len(first.sent) == 4)
        await run.stop()  # the endpoint drops the connection on the batch it refuses
        second = Endpoint(ack=False)
        run = await running(delivery, second, stalling, "ep2")
        await second.wait_for(lambda: len(second.sent) == 2)
        await run.stop()
    stalled = [e for e in logged if e["event"] == "notification.stalled"]
    assert [(e["sends"], e["host"], e["log_level"]) for e in stalled] == [(3, "ep1", "error")]
    assert delivery.ledger.machine is not None
    assert delivery.ledger.machine.sends >= 6  # counted on, not from zero
    assert delivery.ledger.machine.stalled


async def test_an_event_too_large_for_a_frame_goes_alone_and_is_reported(
    store: Store, running: Any
) -> None:
    with store.transaction() as conn:
        outbox.enqueue(conn, [("JOB", {"jobId": 1, "state": "x" * 2000}), ("JOB", job(2))], 0)
    endpoint = Endpoint()
    with capture_logs() as logged:
        run = await running(group_outbox(store), endpoint, link_settings(message_max_bytes=1024))
        await endpoint.wait_for(lambda: len(endpoint.sent) == 2)
        await run.stop()
    assert endpoint.job_ids() == [1, 2]
    [oversized] = [e for e in logged if e["event"] == "notification.oversized"]
    assert (oversized["max_bytes"], oversized["first_seq"]) == (1024, 1)
    assert oversized["size_bytes"] > 1024


async def test_restart_resends_the_persisted_batch_with_its_id(tmp_path: Path) -> None:
    before = Store(tmp_path / "db", tmp_path / "key")
    add_group(before)
    put(before, 1, 2, 3)
    endpoint = Endpoint(ack=False)
    run = await connected(group_outbox(before), endpoint, link_settings(notification_max_batch=2))
    await endpoint.wait_for(lambda: len(endpoint.sent) == 1)
    await run.stop()
    before.close()  # as after kill -9: only the database is left

    after = Store(tmp_path / "db", tmp_path / "key")
    try:
        again = Endpoint()
        with capture_logs() as logged:
            run = await connected(group_outbox(after), again,
                                  link_settings(notification_max_batch=2))
            await again.wait_for(lambda: len(again.sent) == 2)
            await run.stop()
        assert encode(again.sent[0]) == encode(endpoint.sent[0])
        assert again.job_ids() == [1, 2, 3]
        assert [e["event"] for e in logged if e["event"].startswith("notification.s")] == [
            "notification.sent"
        ]
        assert "notification.resent" in [e["event"] for e in logged]
    finally:
        after.close()


async def test_a_lost_connection_under_a_write_closes_it_saying_so(store: Store) -> None:
    put(store, 1)
    endpoint = Endpoint()
    endpoint.fail_next = True
    run = await connected(group_outbox(store), endpoint, link_settings())
    async with asyncio.timeout(timeout(5)):
        reason = await run.task
    assert reason.startswith("delivery stopped: connection to ep1 failed: reset by the test")
    assert endpoint.close_code == 1001


async def delivery_fails(store: Store) -> None:
    """Delivery over `store` ends its connection: `delivery.failed`, close 1011."""
    endpoint = Endpoint()
    with capture_logs() as logged:
        run = await connected(group_outbox(store), endpoint, link_settings())
        async with asyncio.timeout(timeout(5)):
            assert await run.task == "delivery failed"
    assert endpoint.close_code == 1011
    assert "delivery.failed" in [e["event"] for e in logged]


async def test_a_store_that_fails_closes_the_connection_and_logs_why(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "db", tmp_path / "key")
    add_group(store)
    put(store, 1)
    store.close()  # every call from now on fails
    await delivery_fails(store)


def test_janitor_applies_retention(store: Store) -> None:
    with store.transaction() as conn:
        outbox.enqueue(conn, [("JOB", job(1))], 0.0)
    janitor = OutboxJanitor(
        store, link_settings(notification_retention_days=1), clock=lambda: 2 * 86_400
    )
    with capture_logs() as logged:
        expired = janitor.sweep()
    assert expired.unacked_by_group == {GROUP: 1}
    assert [e["event"] for e in logged] == ["outbox.expired_unacknowledged"]


def test_the_wiring_keeps_one_ledger_per_group(store: Store, tmp_path: Path) -> None:
    wiring = DeliveryWiring(store, Settings(store_path=tmp_path / "nbwss.db"))
    assert wiring.outbox(GROUP) is wiring.outbox(GROUP)
    assert wiring.outbox(GROUP).waker is wiring.waker
    assert list(wiring.ledgers) == [GROUP]
    assert wiring.watch in wiring.components  # the one fallback read, started with the daemon
    assert wiring.watch.period_s == 5.0
    wiring.update_settings(Settings(notification_rate_s=30.0))  # a reload: its next period
    assert wiring.watch.period_s == 30.0


# -- the wake socket -------------------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: Unix socket paths are limited to ~100 bytes."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nbw") as name:
        yield Path(name)


async def test_wake_datagram_wakes_every_connection(short_dir: Path) -> None:
    waker = Waker()
    events = [asyncio.Event(), asyncio.Event()]
    for event in events:
        waker.register(event)
    listener = WakeListener(short_dir / "nbwss.wake", waker)
    task = asyncio.create_task(listener.run())
    try:
        async with asyncio.timeout(timeout(5)):
            await listener.ready.wait()
        assert stat.S_IMODE(os.stat(short_dir / "nbwss.wake").st_mode) == 0o600
        assert send_wake(short_dir / "nbwss.wake")
        async with asyncio.timeout(timeout(5)):
            for event in events:
                await event.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not (short_dir / "nbwss.wake").exists()


async def test_stale_wake_socket_is_replaced_and_live_one_refused(short_dir: Path) -> None:
    path = short_dir / "nbwss.wake"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a killed daemon leaves
    assert not send_wake(path)
    listener = WakeListener(path, Waker())
    task = asyncio.create_task(listener.run())
    try:
        async with asyncio.timeout(timeout(5)):
            await listener.ready.wait()
        with capture_logs() as logged:
            await WakeListener(path, Waker()).run()  # returns: the daemon polls instead
        [event] = logged
        assert event["event"] == "wake.unavailable"
        assert "another nbwss daemon" in event["reason"]
        assert send_wake(path)  # the first listener still has it
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_send_wake_without_a_daemon_does_not_fail(short_dir: Path) -> None:
    assert send_wake(short_dir / "nothing-here") is False
    assert send_wake(short_dir / ("x" * 200)) is False  # longer than a socket address


async def test_a_wake_path_that_is_not_a_socket_is_left_alone(short_dir: Path) -> None:
    path = short_dir / "nbwss.wake"
    path.write_text("not a socket")
    with capture_logs() as logged:
        await WakeListener(path, Waker()).run()
    assert [e["event"] for e in logged] == ["wake.unavailable"]
    assert path.read_text() == "not a socket"


async def test_a_group_added_again_starts_from_its_new_cursor(store: Store) -> None:
    put(store, 1)
    delivery = group_outbox(store)
    first = Endpoint()
    run = await connected(delivery, first, link_settings())
    await first.wait_for(lambda: first.job_ids() == [1])
    await run.stop()
    store.delete_endpoint("ep1.test")
    put(store, 2)  # queued while the group did not exist: never its to receive
    add_group(store)
    put(store, 3)
    again = Endpoint()
    run = await connected(delivery, again, link_settings())
    try:
        await again.wait_for(lambda: len(again.sent) == 1)
    finally:
        await run.stop()
    assert again.job_ids() == [3]


async def test_a_new_connection_brings_its_settings_to_delivery(
    store: Store, running: Any
) -> None:
    """A reload reaches delivery with the next connection: the settings it was made with."""
    put(store, 1)
    delivery = group_outbox(store)
    first = Endpoint(ack=False)
    run = await running(delivery, first, link_settings(notification_rate_s=60.0))
    await first.wait_for(lambda: len(first.sent) == 1)
    await run.stop()
    reloaded = Endpoint(ack=False)
    await running(delivery, reloaded, link_settings(notification_rate_s=0.05), "ep2")
    await reloaded.wait_for(lambda: len(reloaded.sent) == 3)  # resent each 0.05 s, not 60 s
    assert delivery.ledger.machine is not None
    assert delivery.ledger.machine.rate_s == 0.05


async def test_a_wake_up_while_the_next_batch_waits_for_an_ack_is_consumed(
    store: Store, running: Any
) -> None:
    """Nothing to read (the next batch is prepared), nothing due: a wake-up must end one
    wait, not every wait after it (a busy loop that starved the reader of the ack)."""
    put(store, 1, 2)
    waker = Waker()
    endpoint = Endpoint(ack=False)
    await running(group_outbox(store, waker), endpoint, link_settings(notification_max_batch=1))
    await endpoint.wait_for(lambda: len(endpoint.sent) == 1)  # batch 2 is read ahead now
    waker.wake()  # e.g. `nbwss notify` queued more, while the ack is awaited
    # The endpoint's ack comes a little later: a driver spinning on the wake-up would
    # never let this timer (or the reader) run.
    ack = notification_response(endpoint.sent[0], 0)
    asyncio.get_running_loop().call_later(0.05, endpoint.respond, ack)
    await endpoint.wait_for(lambda: endpoint.job_ids() == [1, 2])


async def test_a_wall_clock_stepped_back_does_not_stop_the_keepalive() -> None:
    """The driver feeds the core wall time; stepped back 30 s (NTP, a VM resumed), the
    pings go on at their rate (here: unanswered, so the connection closes after the
    allowed misses) instead of stopping for the size of the step."""
    offset = 0.0
    endpoint = Endpoint()
    settings = link_settings(keepalive_rate_s=0.05, max_pong_misses=2)
    target = Target(GROUP, "ep1", "wss://ep1.test/cfs", TOKEN, b"")
    session = Session(endpoint, target, settings, None, None, lambda: time.time() + offset)
    await session.handshake()  # open: its first ping is due in 0.05 s of the old time
    offset = -30.0
    async with asyncio.timeout(timeout(5)):
        assert await session.run() == "no pong for 2 pings"


@pytest.mark.parametrize(("before", "after"), [("info", "warning"), ("warning", "info")])
async def test_a_reload_of_the_log_level_reaches_a_live_connection(
    store: Store, running: Any, before: str, after: str
) -> None:
    """SIGHUP's log.level applies at once (docs/configuration.md), to the delivery
    events of a connection that was open before it too."""
    stream = io.StringIO()
    logs.configure(before, "json", stream)
    waker = Waker()
    endpoint = Endpoint()
    run = await running(group_outbox(store, waker), endpoint)
    logs.reconfigure(after, "json")
    put(store, 1)
    waker.wake()
    await endpoint.wait_for(lambda: endpoint.job_ids() == [1])
    await run.stop()  # every report of the connection is logged by now
    written = [json.loads(line) for line in stream.getvalue().splitlines()]
    sent = [event for event in written if event["event"] == "notification.sent"]
    if after == "warning":
        assert sent == []
    else:
        [event] = sent
        assert (event["group"], event["host"], event["count"]) == (GROUP, "ep1", 1)


class PingingEndpoint(Endpoint):
    """Pings and never reads: no pong write completes until `reads` is set."""

    def __init__(self) -> None:
        super().__init__(ack=False)
        self.pongs: list[bytes] = []
        self.reads = asyncio.Event()

    async def pong(self, message: bytes = b"") -> None:
        self.pongs.append(message)
        self._changed.set()
        await self.reads.wait()

    def ping_from_peer(self, data: bytes) -> None:
        self._frames.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.PING, data, None))


async def test_a_peer_that_pings_and_never_reads_gets_one_pong_at_a_time() -> None:
    endpoint = PingingEndpoint()
    target = Target(GROUP, "ep1", "wss://ep1.test/cfs", TOKEN, b"")
    session = Session(endpoint, target, link_settings(), None, None, time.time)
    await session.handshake()
    run = Running(session)

    async def pings(numbers: range) -> None:
        for n in numbers:
            endpoint.ping_from_peer(b"%d" % n)
        command = messages.request(MessageType.COMMAND, {"method": "GET", "uri": "/x"}, 0)
        endpoint.respond(command)  # its answer (501, no proxy) says every ping was read
        await endpoint.wait_for(lambda: command.id in [m.id for m in endpoint.sent])

    await pings(range(50))
    assert endpoint.pongs == [b"49"]  # one write, for the latest ping read
    await pings(range(50, 100))
    assert endpoint.pongs == [b"49"]  # still the only write outstanding
    endpoint.reads.set()
    await endpoint.wait_for(lambda: len(endpoint.pongs) == 2)
    assert endpoint.pongs == [b"49", b"99"]  # then the latest ping's, once
    await run.stop()
    assert endpoint.pongs == [b"49", b"99"]


@dataclass(frozen=True)
class HeldOutbox(GroupOutbox):
    """The group's outbox with each call named `hold` (load, read, persist, ack) held in
    its worker thread until `gate` opens (a slow disk); it notes any two store calls
    of the group under way at once."""

    hold: str = "ack"
    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    overlaps: list[str] = field(default_factory=list)
    _busy: list[str] = field(default_factory=list)  # the calls under way
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _call(self, name: str, call: Callable[[], T]) -> T:
        with self._lock:
            if self._busy:
                self.overlaps.append(name)
            self._busy.append(name)
        try:
            if name == self.hold:
                self.entered.set()
                self.gate.wait(timeout(10))
            return call()
        finally:
            with self._lock:
                self._busy.remove(name)

    def load_position(self, now: float) -> GroupPosition:
        return self._call("load", lambda: GroupOutbox.load_position(self, now))

    def read_events(self, wanted: EventRange) -> list[OutboxEvent]:
        return self._call("read", lambda: GroupOutbox.read_events(self, wanted))

    def read_events_if_free(self, wanted: EventRange) -> list[OutboxEvent] | None:
        return self._call("read", lambda: GroupOutbox.read_events_if_free(self, wanted))

    def persist_batch(self, row: PersistedBatch) -> None:
        self._call("persist", lambda: GroupOutbox.persist_batch(self, row))

    def acknowledge(self, commit: AckCommit, now: float) -> int | None:
        return self._call("ack", lambda: GroupOutbox.acknowledge(self, commit, now))


async def cancel_until_done(task: asyncio.Task[Any]) -> None:
    """Cancel `task` again and again (a shutdown's second cancel) until it ended."""
    async with asyncio.timeout(timeout(5)):
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=0)
    assert task.cancelled()


async def test_a_run_cancelled_twice_while_its_ack_commits_hands_over_the_group_after(
    store: Store,
) -> None:
    """Shutdown's second cancel ends `run()` while its ack commit runs on: the commit
    is still told to the ledger when it ends, and the group's next connection waits
    for that, then starts after the acknowledged batch (no store calls of the group
    at once, no batch sent again)."""
    put(store, 1, 2)
    held = HeldOutbox(store, DeliveryLedger(GROUP), Waker())
    first = Endpoint()
    try:
        run = await connected(held, first, link_settings(notification_max_batch=1))
        await first.wait_for(lambda: first.job_ids() == [1])
        await asyncio.to_thread(held.entered.wait, timeout(5))
        await cancel_until_done(run.task)
        second = Endpoint()
        next_run = await connected(held, second, link_settings(notification_max_batch=1))
        # Waiting for the ledger, the connection is served: a COMMAND is answered.
        command = messages.request(MessageType.COMMAND, {"method": "GET", "uri": "/x"}, 0)
        second.respond(command)
        await second.wait_for(lambda: [m.id for m in second.sent] == [command.id])
    finally:
        held.gate.set()
    await second.wait_for(lambda: second.job_ids() == [2])
    await next_run.stop()
    assert [m.type for m in second.sent] == [MessageType.COMMAND, MessageType.NOTIFICATION]
    assert first.job_ids() == [1]
    assert acked_seq(store) == 2
    assert held.overlaps == []


async def test_a_run_cancelled_during_a_store_call_starts_nothing_after_it(
    store: Store,
) -> None:
    """Cancelled from outside while the row of an oversized batch commits, the
    connection settles that call (the row is there) but writes nothing more, and so
    reports no `notification.oversized` for a write that never happens."""
    with store.transaction() as conn:
        outbox.enqueue(conn, [("JOB", {"jobId": 1, "state": "x" * 2000})], 0)
    held = HeldOutbox(store, DeliveryLedger(GROUP), Waker(), hold="persist")
    endpoint = Endpoint()
    with capture_logs() as logged:
        try:
            run = await connected(held, endpoint, link_settings(message_max_bytes=1024))
            await asyncio.to_thread(held.entered.wait, timeout(5))
            run.task.cancel()
        finally:
            held.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await run.task
    assert endpoint.sent == []
    assert outbox.load_position(store, GROUP, 0).outstanding is not None  # the row
    assert "notification.oversized" not in [e["event"] for e in logged]


class WrittenAsItCloses(Endpoint):
    """A NOTIFICATION write completes only while the connection closes: its frame went
    out just before the close, after the driver's loop had stopped."""

    def __init__(self) -> None:
        super().__init__(ack=False)
        self.writing = asyncio.Event()
        self._closing = asyncio.Event()
        self._written = asyncio.Event()

    async def send_str(self, data: str, compress: int | None = None) -> None:
        if messages.decode(data).type is MessageType.NOTIFICATION:
            self.writing.set()
            await self._closing.wait()
            await super().send_str(data, compress)
            self._written.set()
            return
        await super().send_str(data, compress)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        closed = await super().close(code=code, message=message)
        for _ in range(10):  # the driver's loop reads the close and stops; not a time
            await asyncio.sleep(0)
        self._closing.set()
        await self._written.wait()
        return closed


async def test_a_write_that_completed_as_the_connection_closed_counts_as_sent(
    store: Store,
) -> None:
    put(store, 1)
    endpoint = WrittenAsItCloses()
    outbox_of_group = group_outbox(store)
    sent_before = sent_metric()
    with capture_logs() as logged:
        run = await connected(outbox_of_group, endpoint, link_settings())
        async with asyncio.timeout(timeout(5)):
            await endpoint.writing.wait()
        assert await run.stop() == "test over"
    assert endpoint.job_ids() == [1]
    assert [e["event"] for e in logged].count("notification.sent") == 1
    assert sent_metric() == sent_before + 1
    machine = outbox_of_group.ledger.machine
    assert machine is not None
    assert machine.sends == 1  # what the next connection carries over (a stall counts it)


def sent_metric() -> float:
    value = metrics.REGISTRY.get_sample_value("nbwss_notifications_sent_total", {"group": GROUP})
    return value or 0.0


async def test_store_calls_run_with_the_connections_context_variables(store: Store) -> None:
    """A log event of a store call (its worker thread) carries what the connection's
    context bound (`structlog.contextvars`), as `asyncio.to_thread` promises."""
    seen: list[dict[str, Any]] = []

    @dataclass(frozen=True)
    class Observed(GroupOutbox):
        def load_position(self, now: float) -> GroupPosition:
            seen.append(structlog.contextvars.get_contextvars())
            return GroupOutbox.load_position(self, now)

    put(store, 1)
    endpoint = Endpoint()
    with structlog.contextvars.bound_contextvars(trace="T1"):
        run = await connected(Observed(store, DeliveryLedger(GROUP), Waker()), endpoint,
                              link_settings())
    await endpoint.wait_for(lambda: endpoint.job_ids() == [1])
    await run.stop()
    assert seen == [{"trace": "T1"}]


async def test_a_run_cancelled_while_its_ack_commits_waits_for_it_and_applies_it(
    store: Store,
) -> None:
    """A store call cannot be stopped: cancelled meanwhile, `run()` waits for the ack's
    commit and tells it to the ledger (the next connection starts after the batch)."""
    put(store, 1)
    held = HeldOutbox(store, DeliveryLedger(GROUP), Waker())
    endpoint = Endpoint()
    acked_before = acked_metric()
    with capture_logs() as logged:
        try:
            run = await connected(held, endpoint, link_settings())
            await asyncio.to_thread(held.entered.wait, timeout(5))
            run.task.cancel()
            await asyncio.wait([run.task], timeout=0)
            assert not run.task.done()  # it waits for the commit
        finally:
            held.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await run.task
    assert acked_seq(store) == 1
    assert held.ledger.last_ack_at is not None
    assert held.ledger.machine is not None
    assert held.ledger.machine.awaiting_commit is None
    assert [e["event"] for e in logged].count("notification.acked") == 1
    assert acked_metric() == acked_before + 1
    assert endpoint.close_code == 1000  # and it still says goodbye


async def test_a_command_is_answered_while_a_store_call_of_the_group_blocks(
    store: Store,
) -> None:
    held = HeldOutbox(store, DeliveryLedger(GROUP), Waker(), hold="load")
    endpoint = Endpoint()
    try:
        run = await connected(held, endpoint, link_settings())
        await asyncio.to_thread(held.entered.wait, timeout(5))
        command = messages.request(MessageType.COMMAND, {"method": "GET", "uri": "/x"}, 0)
        endpoint.respond(command)
        await endpoint.wait_for(lambda: [m.id for m in endpoint.sent] == [command.id])
    finally:
        held.gate.set()
    [answer] = endpoint.sent
    assert answer.type is MessageType.COMMAND
    assert answer.sub_type is SubType.RESPONSE
    await run.stop()


class SilentPinger(PingingEndpoint):
    """Answers CONNECT with a ping only, and never reads its pong."""

    async def send_str(self, data: str, compress: int | None = None) -> None:
        if messages.decode(data).type is MessageType.CONNECT:
            self.ping_from_peer(b"still there?")
            return
        await super().send_str(data, compress)


async def test_a_pong_the_peer_never_reads_does_not_hold_connect_past_its_deadline() -> None:
    endpoint = SilentPinger()
    settings = link_settings(connect_response_timeout_s=0.1, send_timeout_s=0.1)
    target = Target(GROUP, "ep1", "wss://ep1.test/cfs", TOKEN, b"")
    session = Session(endpoint, target, settings, None, None, time.time)
    async with asyncio.timeout(timeout(5)):
        with pytest.raises(ConnectError, match="no CONNECT response"):
            await session.handshake()
    assert endpoint.pongs == [b"still there?"]


async def test_a_store_that_fails_on_the_loops_own_read_closes_the_connection_too(
    tmp_path: Path,
) -> None:
    """The outbox read made on the event loop (the store free) fails as a read in a
    worker thread does: `delivery.failed` and close 1011, not a crash of the driver."""
    store = Store(tmp_path / "db", tmp_path / "key")
    add_group(store)
    put(store, 1)
    with store.transaction() as conn:  # the position still loads; reading events fails
        conn.execute("ALTER TABLE outbox RENAME TO outbox_gone")
    await delivery_fails(store)


async def test_the_janitor_deletes_every_acknowledged_chunk_one_call_each(store: Store) -> None:
    put(store, *range(outbox.PURGE_CHUNK * 2 + 7))
    head = outbox.queued_total(store)
    outbox.acknowledge(store, GROUP, head, 0.0, None)
    janitor = OutboxJanitor(store, link_settings())
    await janitor._delete_acknowledged()
    with store.reading() as conn:
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


async def test_a_janitor_whose_store_fails_logs_it_and_goes_on(tmp_path: Path) -> None:
    """A full disk or a lock held too long fails the janitor's pass, not the daemon."""
    store = Store(tmp_path / "db", tmp_path / "key")
    store.close()  # every call from now on fails
    janitor = OutboxJanitor(store, link_settings(), interval_s=0.01, purge_interval_s=0.01)
    janitor.pass_done = asyncio.Event()
    with capture_logs() as logged:
        task = asyncio.create_task(janitor.run())
        async with asyncio.timeout(timeout(5)):
            while janitor.passes < 3:
                await janitor.pass_done.wait()
                janitor.pass_done.clear()
        assert not task.done()  # still running after three failed passes
        task.cancel()
    failed = [e for e in logged if e["event"] == "outbox.purge_failed"]
    assert len(failed) >= 3
    assert failed[0]["log_level"] == "error"
    assert "closed database" in failed[0]["reason"]


async def test_acks_that_come_while_one_commits_are_committed_together(store: Store) -> None:
    """The committer's next transaction carries every ack queued meanwhile, and each
    group is told its own cursor once it is committed."""
    put(store, 1, 2, 3)
    with store.transaction() as conn:
        conn.executemany(
            "INSERT INTO group_cursors (group_id, acked_seq, updated_at) VALUES (?, 0, 0)",
            [("A",), ("B",), ("C",)],
        )
    committer = AckCommitter(store)
    held = HeldStore(store)
    await held.entered()
    first = committer.commit(outbox.GroupAck("A", 1, 0.0))  # its thread waits for the store
    others = [committer.commit(outbox.GroupAck(g, n, 0.0)) for g, n in (("B", 2), ("C", 3))]
    releasing = asyncio.ensure_future(held.release())
    async with asyncio.timeout(timeout(5)):
        assert await first == 1
        assert await asyncio.gather(*others) == [2, 3]
        await releasing
    assert committer.commits == 2
    with store.reading() as conn:
        cursors = dict(conn.execute("SELECT group_id, acked_seq FROM group_cursors"))
    assert cursors == {GROUP: 0, "A": 1, "B": 2, "C": 3}


async def test_a_joint_ack_commit_that_fails_closes_the_connection_and_logs_why(
    store: Store,
) -> None:
    put(store, 1)
    with store.transaction() as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE ON group_cursors"
            " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    endpoint = Endpoint()
    delivery = GroupOutbox(store, DeliveryLedger(GROUP), Waker(), acks=AckCommitter(store))
    with capture_logs() as logged:
        run = await connected(delivery, endpoint, link_settings())
        async with asyncio.timeout(timeout(5)):
            assert await run.task == "delivery failed"
    assert endpoint.job_ids() == [1]  # sent, acknowledged, its commit refused
    assert endpoint.close_code == 1011
    assert "delivery.failed" in [e["event"] for e in logged]
    assert acked_seq(store) == 0


async def test_a_read_that_finds_the_acks_commit_holding_the_store_is_made_on_the_loop_after(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No worker thread for it: the read waits for the commit under way and is made on
    the loop's thread as soon as the commit ends, before the next commit starts."""
    read_in: list[int] = []
    for name in ("read_events", "read_events_if_free"):
        real = getattr(outbox, name)

        def reading(*args: Any, real: Callable[..., Any] = real) -> Any:
            result = real(*args)
            if result is not None:
                read_in.append(threading.get_ident())
            return result

        monkeypatch.setattr(outbox, name, reading)
    put(store, 1, 2, 3)
    committer = AckCommitter(store)
    delivery = GroupOutbox(store, DeliveryLedger(GROUP), Waker(), acks=committer)
    assert delivery.read_events_after_commit(EventRange(0, 10)) is None  # none under way
    held = HeldStore(store)
    await held.entered()
    acked = committer.commit(outbox.GroupAck(GROUP, 1, 0.0))
    read = delivery.read_events_after_commit(EventRange(1, 10))
    assert read is not None
    assert delivery.read_events_if_free(EventRange(1, 10)) is None  # the store is held
    releasing = asyncio.ensure_future(held.release())
    async with asyncio.timeout(timeout(5)):
        events = await read
        assert acked.done()  # the commit ended first
        await releasing
    assert [event.seq for event in events] == [2, 3]
    assert read_in == [threading.get_ident()]  # one read, on the loop's thread
