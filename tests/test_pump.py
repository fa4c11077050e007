"""The asyncio pump and the wake socket, over a real SQLite file and an in-test Link."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from nbwss import metrics, outbox
from nbwss.delivery import Batch, DeliveryMachine
from nbwss.endpoints import EndpointDetails
from nbwss.messages import Message, MessageType, SubType, encode, notification_response
from nbwss.properties import Settings
from nbwss.protocol import Action, DeliveryProgressed, Report
from nbwss.pump import GroupPump, OutboxJanitor
from nbwss.store import Store
from nbwss.wake import WakeListener, Waker, send_wake
from tests.conftest import timeout
from tests.test_protocol import opened

GROUP = "G1"


class TestLink:
    """A connection as the pump sees it: records each write, acks at once unless told."""

    __test__ = False

    def __init__(
        self, host_name: str = "ep1", *, ack: bool = True, settings: Settings | None = None
    ) -> None:
        self.group_id = GROUP
        self.host_name = host_name
        self.settings = settings or link_settings()
        self.ack = ack
        self.pump: GroupPump | None = None
        self.sent: list[Message] = []
        self.acked: list[Batch] = []
        self.hang_next = 0
        self.fail_next: BaseException | None = None
        self._changed = asyncio.Event()
        self.core = opened(self.settings)  # judges responses, as the session's does

    def deliver_with(self, machine: DeliveryMachine | None) -> None:
        self.core.deliver_with(machine)

    def respond(self, response: Message) -> list[Action]:
        """A response arrives on the connection: the core judges it, an accepted ack
        wakes the pump (as the session carries out `DeliveryProgressed`)."""
        actions = self.core.text_received(encode(response), 0.0)
        if self.pump is not None and DeliveryProgressed() in actions:
            self.pump.kick()
        return actions

    def note_acked(self, batch: Batch) -> None:
        self.acked.append(batch)
        self._changed.set()

    async def send(self, message: Message) -> None:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        if self.hang_next:  # a write that never completes: the link's deadline ends it
            self.hang_next -= 1
            async with asyncio.timeout(self.settings.send_timeout_s):
                await asyncio.Event().wait()
        self.sent.append(message)
        self._changed.set()
        if self.ack and self.pump is not None:
            asyncio.get_running_loop().call_soon(
                self.respond, notification_response(message, 0)
            )

    async def wait_for(self, predicate: Callable[[], bool], seconds: float = 5) -> None:
        async with asyncio.timeout(timeout(seconds)):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def job_ids(self) -> list[int]:
        return [
            data["jobId"]
            for message in self.sent
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


class Running:
    """A pump running over a link in a task; cancelled (the connection ends) on exit."""

    def __init__(self, pump: GroupPump, link: TestLink) -> None:
        link.pump = pump
        self.task = asyncio.create_task(pump.run(link))

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def running() -> AsyncIterator[Callable[[GroupPump, TestLink], Running]]:
    started: list[Running] = []

    def start(pump: GroupPump, link: TestLink) -> Running:
        started.append(Running(pump, link))
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
    link = TestLink(settings=link_settings(notification_max_batch=3))
    pump = GroupPump(store, GROUP, Waker(), on_acked=link.note_acked)
    acked_before = acked_metric()
    running(pump, link)
    await link.wait_for(lambda: len(link.sent) == 3)
    assert link.job_ids() == [1, 2, 3, 4, 5, 6, 7]
    assert [len(payload(m)[0]["data"]) for m in link.sent] == [3, 3, 1]
    assert len({m.id for m in link.sent}) == 3
    await link.wait_for(lambda: sum(batch.count for batch in link.acked) == 7)
    assert acked_seq(store) == 7
    assert outbox.read_events(store, 0, 100) == []  # acknowledged by every group: purged
    assert acked_metric() == acked_before + 7


async def test_a_wake_sends_new_events_at_once(store: Store, running: Any) -> None:
    waker = Waker()
    link = TestLink(settings=link_settings(notification_rate_s=60.0))
    pump = GroupPump(store, GROUP, waker)
    running(pump, link)
    put(store, 1)
    waker.wake()
    await link.wait_for(lambda: link.job_ids() == [1], seconds=2)  # far less than the rate
    put(store, 2)
    waker.wake()
    await link.wait_for(lambda: link.job_ids() == [1, 2], seconds=2)


async def test_without_a_wake_the_outbox_is_polled_every_rate(store: Store, running: Any) -> None:
    put(store, 1)
    link = TestLink(settings=link_settings(notification_rate_s=0.2))
    pump = GroupPump(store, GROUP, Waker())
    running(pump, link)
    await link.wait_for(lambda: link.job_ids() == [1])
    put(store, 2)  # and no wake-up: only the fallback poll can find it
    await link.wait_for(lambda: link.job_ids() == [1, 2])


async def test_withheld_ack_resends_the_same_message_and_nothing_new(
    store: Store, running: Any
) -> None:
    put(store, 1, 2)
    waker = Waker()
    link = TestLink(ack=False, settings=link_settings(notification_rate_s=0.2,
                                                     notification_max_batch=1))
    pump = GroupPump(store, GROUP, waker)
    running(pump, link)
    await link.wait_for(lambda: len(link.sent) == 3)
    first, *again = link.sent
    assert all(encode(m) == encode(first) for m in again)  # same id, same bytes
    assert link.job_ids() == [1, 1, 1]
    link.respond(notification_response(first, 0))
    await link.wait_for(lambda: 2 in link.job_ids())
    assert acked_seq(store) >= 1


async def test_a_write_past_the_send_timeout_counts_as_not_sent(store: Store, running: Any) -> None:
    put(store, 1)
    link = TestLink(settings=link_settings(notification_rate_s=0.2, send_timeout_s=0.05))
    link.hang_next = 1
    pump = GroupPump(store, GROUP, Waker())
    with capture_logs() as logged:
        running(pump, link)
        await link.wait_for(lambda: link.job_ids() == [1])
    assert "notification.send_timeout" in [e["event"] for e in logged]
    assert "notification.sent" in [e["event"] for e in logged]


async def test_wrong_id_and_non_empty_payload_do_not_acknowledge(
    store: Store, running: Any
) -> None:
    put(store, 1)
    link = TestLink(ack=False)
    pump = GroupPump(store, GROUP, Waker())
    running(pump, link)
    await link.wait_for(lambda: len(link.sent) == 1)
    request = link.sent[0]
    wrong = Message("OTHER", MessageType.NOTIFICATION, SubType.RESPONSE, 0, [])
    reports = [
        *link.respond(wrong),
        *link.respond(Message(request.id, request.type, SubType.RESPONSE, 0, [{"x": 1}])),
    ]
    assert all(isinstance(r, Report) for r in reports)
    assert [r.fields.get("reason") for r in reports if isinstance(r, Report)] == [
        "wrong_id", "non_empty_payload"
    ]
    assert [r.level for r in reports if isinstance(r, Report)] == ["warning", "warning"]
    assert pump.delivery is not None
    assert pump.delivery.awaiting_commit is None
    assert acked_seq(store) == 0


async def test_failover_resends_the_outstanding_batch_first(store: Store, running: Any) -> None:
    put(store, 1, 2)
    pump = GroupPump(store, GROUP, Waker())
    first = TestLink("ep1", ack=False, settings=link_settings(notification_max_batch=1))
    run = running(pump, first)
    await first.wait_for(lambda: len(first.sent) == 1)
    await run.stop()  # the connection to priority 1 is gone
    second = TestLink("ep2", settings=link_settings(notification_max_batch=1))
    running(pump, second)
    await second.wait_for(lambda: len(second.sent) == 2)
    assert second.sent[0].id == first.sent[0].id
    assert second.job_ids() == [1, 2]


async def test_restart_resends_the_persisted_batch_with_its_id(tmp_path: Path) -> None:
    before = Store(tmp_path / "db", tmp_path / "key")
    add_group(before)
    put(before, 1, 2, 3)
    link = TestLink(ack=False, settings=link_settings(notification_max_batch=2))
    pump = GroupPump(before, GROUP, Waker())
    run = Running(pump, link)
    await link.wait_for(lambda: len(link.sent) == 1)
    await run.stop()
    before.close()  # as after kill -9: only the database is left

    after = Store(tmp_path / "db", tmp_path / "key")
    try:
        again = TestLink(settings=link_settings(notification_max_batch=2))
        run = Running(GroupPump(after, GROUP, Waker()), again)
        with capture_logs() as logged:
            await again.wait_for(lambda: len(again.sent) == 2)
        await run.stop()
        assert encode(again.sent[0]) == encode(link.sent[0])
        assert again.job_ids() == [1, 2, 3]
        assert [e["event"] for e in logged if e["event"].startswith("notification.s")] == [
            "notification.sent"
        ]
        assert "notification.resent" in [e["event"] for e in logged]
    finally:
        after.close()


async def test_a_lost_connection_ends_run_with_its_error(store: Store) -> None:
    put(store, 1)
    link = TestLink()
    link.fail_next = ConnectionError("gone")
    pump = GroupPump(store, GROUP, Waker())
    link.pump = pump
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(pump.run(link), timeout(5))


async def test_response_before_any_run_is_ignored() -> None:
    link = TestLink()
    [report] = link.respond(Message("X", MessageType.NOTIFICATION, SubType.RESPONSE, 0, []))
    assert isinstance(report, Report)
    assert report.event == "notification.unexpected_response"


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


# -- the wake socket -------------------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: Unix socket paths are limited to ~100 bytes."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nbw") as name:
        yield Path(name)


async def test_wake_datagram_wakes_every_pump(short_dir: Path) -> None:
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
    pump = GroupPump(store, GROUP, Waker())
    first = TestLink()
    run = Running(pump, first)
    await first.wait_for(lambda: first.job_ids() == [1])
    await run.stop()
    store.delete_endpoint("ep1.test")
    put(store, 2)  # queued while the group did not exist: never its to receive
    add_group(store)
    put(store, 3)
    again = TestLink()
    run = Running(pump, again)
    try:
        await again.wait_for(lambda: len(again.sent) == 1)
    finally:
        await run.stop()
    assert again.job_ids() == [3]


async def test_a_new_connection_brings_its_settings_to_the_pump(
    store: Store, running: Any
) -> None:
    """A reload reaches the pump with the next connection, as it reaches the session."""
    put(store, 1)
    pump = GroupPump(store, GROUP, Waker())
    first = TestLink(ack=False, settings=link_settings(notification_rate_s=60.0))
    run = running(pump, first)
    await first.wait_for(lambda: len(first.sent) == 1)
    await run.stop()
    reloaded = TestLink("ep2", ack=False, settings=link_settings(notification_rate_s=0.05))
    running(pump, reloaded)
    await reloaded.wait_for(lambda: len(reloaded.sent) == 3)  # resent each 0.05 s, not 60 s
    assert pump.delivery is not None
    assert pump.delivery.rate_s == 0.05


async def test_a_wake_up_while_the_next_batch_waits_for_an_ack_is_consumed(
    store: Store, running: Any
) -> None:
    """Nothing to read (the next batch is prepared), nothing due: a wake-up must end one
    wait, not every wait after it (a busy loop that starved the reader of the ack)."""
    put(store, 1, 2)
    waker = Waker()
    link = TestLink(ack=False, settings=link_settings(notification_max_batch=1))
    pump = GroupPump(store, GROUP, waker)
    running(pump, link)
    await link.wait_for(lambda: len(link.sent) == 1)  # batch 2 is read ahead now
    waker.wake()  # e.g. `nbwss notify` queued more, while the ack is awaited
    # The endpoint's ack comes a little later: a pump spinning on the wake-up would
    # never let this timer (or the reader) run.
    ack = notification_response(link.sent[0], 0)
    asyncio.get_running_loop().call_later(0.05, link.respond, ack)
    await link.wait_for(lambda: link.job_ids() == [1, 2])
