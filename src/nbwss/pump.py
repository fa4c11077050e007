"""The asyncio side of delivery: one `GroupPump` per server group, and the outbox janitor.

A pump implements `nbwss.link.NotificationPump`. It outlives connections: the session
calls `run(link)` for each live connection of the group and cancels it when the
connection ends; the next `run` (reconnect or failover) resumes from the state the last
one left, so the unacknowledged batch goes first. All decisions are in
`delivery.DeliveryMachine`, which the pump hands to the connection (`deliver_with`):
its core judges the responses. This module reads and writes the outbox (in worker
threads, so a busy database never stalls the event loop), writes frames and waits, on
an event set by an accepted ack (`kick`) or a wake-up, never in a sleep loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping

from nbwss import logs, messages, metrics, outbox
from nbwss.component import Component
from nbwss.delivery import AckCommit, Batch, DeliveryMachine, EventRange, Send
from nbwss.link import DeliveryLink, Link
from nbwss.properties import Settings
from nbwss.store import Store
from nbwss.values import PersistedBatch
from nbwss.wake import WakeListener, Waker

log = logs.get_logger("nbwss.pump")

Clock = Callable[[], float]


class GroupPump:
    """Delivers a group's outbox over whichever connection the group has."""

    def __init__(
        self,
        store: Store,
        group_id: str,
        waker: Waker,
        *,
        clock: Clock = time.time,
        new_id: Callable[[], str] = messages.new_id,
        on_acked: Callable[[Batch], None] | None = None,
    ) -> None:
        """`on_acked` is called with each batch once its acknowledgement is committed
        (after `last_ack_at` is set). The settings are the connection's (`link.settings`):
        a reload reaches the pump with the next connection, as it reaches the session."""
        self.group_id = group_id
        self._store = store
        self._waker = waker
        self._clock = clock
        self._new_id = new_id
        self._on_acked = on_acked
        self.last_ack_at: float | None = None  # when an ack was last committed, if ever
        self._machine: DeliveryMachine | None = None
        self._kick = asyncio.Event()
        self._host: str | None = None

    @property
    def delivery(self) -> DeliveryMachine | None:
        """The state machine, once the first `run` has loaded it (for status and tests)."""
        return self._machine

    def kick(self) -> None:
        """The connection accepted an ack (`GroupConnection` judged it): commit it now."""
        self._kick.set()

    async def run(self, link: DeliveryLink) -> None:
        self._host = link.host_name
        self._waker.register(self._kick)
        settings = link.settings
        try:
            if self._machine is None or self._machine.awaiting_commit is None:
                # Each connection starts from what the database says (the batch in flight
                # is persisted, so it comes back as the same message): a group deleted
                # and added again meanwhile starts at its new cursor, not the old one.
                previous, self._machine = self._machine, await self._load(settings)
                self._machine.carry_over(previous)
            else:  # an ack to commit first: the machine goes on, with this connection's caps
                self._machine.max_batch = settings.notification_max_batch
                self._machine.max_bytes = settings.message_max_bytes
                self._machine.rate_s = settings.notification_rate_s
                self._machine.stall_after = settings.notification_stall_after_sends
            self._machine.connection_opened(self._clock())
            link.deliver_with(self._machine)  # from now on, responses are judged by it
            while True:
                await self._step(self._machine, link)
        finally:
            self._waker.unregister(self._kick)
            self._host = None

    async def _load(self, settings: Settings) -> DeliveryMachine:
        position = await asyncio.to_thread(
            outbox.load_position, self._store, self.group_id, self._clock()
        )
        return DeliveryMachine(
            group_id=self.group_id,
            max_batch=settings.notification_max_batch,
            max_bytes=settings.message_max_bytes,
            rate_s=settings.notification_rate_s,
            stall_after=settings.notification_stall_after_sends,
            acked_seq=position.acked_seq,
            restored=position.outstanding,
        )

    async def _step(self, machine: DeliveryMachine, link: Link) -> None:
        """Carry out the one step the machine asks for, and tell it how it went."""
        step = machine.next_step(self._clock())
        if isinstance(step, AckCommit):
            await self._commit(machine, link, step)
        elif isinstance(step, EventRange):
            # Cleared before the outbox is read, so a wake-up from here on is not missed.
            self._kick.clear()
            events = await asyncio.to_thread(
                outbox.read_events, self._store, step.after_seq, step.limit, step.up_to_seq
            )
            machine.events_read(events, self._clock(), self._new_id())
        elif isinstance(step, PersistedBatch):
            # Before its first write, so a restart resends it with this id.
            await asyncio.to_thread(outbox.persist_batch, self._store, self.group_id, step)
            machine.persist_done(step.message_id)
        elif isinstance(step, Send):
            await self._send(machine, link, step)
        else:
            await self._wait(step.deadline, machine.rate_s)
            machine.waited()

    async def _send(self, machine: DeliveryMachine, link: Link, send: Send) -> None:
        batch = send.batch
        if batch.oversized:
            log.warning(
                "notification.oversized",
                group=self.group_id,
                host=link.host_name,
                id=batch.id,
                size_bytes=batch.size_bytes,
                max_bytes=machine.max_bytes,
                first_seq=batch.first_seq,
            )
        try:
            await link.send(batch.message)  # the link owns the deadline (sendTimeout)
        except TimeoutError:
            machine.write_timed_out(batch.id, self._clock())
            self._log(log.warning, "notification.send_timeout", link, batch)
            return
        stall = machine.write_done(batch.id, self._clock())
        counter = metrics.NOTIFICATIONS_RESENT if send.resend else metrics.NOTIFICATIONS_SENT
        counter.labels(self.group_id).inc(batch.count)
        event = "notification.resent" if send.resend else "notification.sent"
        self._log(log.info, event, link, batch)
        if stall is not None:
            metrics.BATCHES_STALLED.labels(self.group_id).inc()
            self._log(log.error, "notification.stalled", link, batch, sends=stall.sends)

    async def _commit(self, machine: DeliveryMachine, link: Link, commit: AckCommit) -> None:
        now = self._clock()
        purged = await asyncio.to_thread(
            outbox.acknowledge, self._store, self.group_id, commit.last_seq, now, commit.next_row
        )
        machine.commit_done(commit, now)
        batch = commit.acknowledged
        metrics.NOTIFICATIONS_ACKED.labels(self.group_id).inc(batch.count)
        self.last_ack_at = now
        self._log(log.info, "notification.acked", link, batch, purged=purged)
        if self._on_acked is not None:
            self._on_acked(batch)

    async def _wait(self, deadline: float | None, rate_s: float) -> None:
        """Until a response or wake-up, the deadline, or the fallback poll of the outbox."""
        delay = rate_s if deadline is None else min(rate_s, max(0.0, deadline - self._clock()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._kick.wait()
        # Consumed: a kick left set would end every later wait at once, without yielding.
        self._kick.clear()

    def _log(
        self, method: Callable[..., object], event: str, link: Link, batch: Batch, **extra: object
    ) -> None:
        method(
            event,
            group=self.group_id,
            host=link.host_name,
            id=batch.id,
            count=batch.count,
            first_seq=batch.first_seq,
            last_seq=batch.last_seq,
            **extra,
        )


class OutboxJanitor(Component):
    """Daemon component: applies `notification.retentionDays` and purges what all acked.

    Acknowledgements purge as they commit; this sweep catches the rest (a group deleted,
    events with no group to go to) and the retention, which logs loudly when it drops
    anything a group had not acknowledged.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        interval_s: float = 3600.0,
        clock: Clock = time.time,
    ) -> None:
        self._store = store
        self._settings = settings
        self._interval_s = interval_s
        self._clock = clock

    def sweep(self) -> outbox.Expired:
        expired = outbox.expire(
            self._store, self._clock(), self._settings.notification_retention_days
        )
        outbox.purge(self._store)
        return expired

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.sweep)
            await asyncio.sleep(self._interval_s)


class DeliveryWiring:
    """Everything delivery adds to the daemon, made once from the store and settings,
    and the one registry of the groups' pumps (the supervisor asks `pump(group)` for
    each connection; `/status` reads `pumps`).

    The REST poller gets `waker` so its commits wake the pumps too.
    """

    def __init__(self, store: Store, settings: Settings) -> None:
        self.waker = Waker()
        self.listener = WakeListener(settings.wake_socket, self.waker)
        self.janitor = OutboxJanitor(store, settings)
        self._store = store
        self._settings = settings
        self._pumps: dict[str, GroupPump] = {}

    def pump(self, group_id: str) -> GroupPump:
        """The group's pump, made on first use: it outlives each connection."""
        pump = self._pumps.get(group_id)
        if pump is None:
            pump = self._pumps[group_id] = GroupPump(self._store, group_id, self.waker)
        return pump

    @property
    def pumps(self) -> Mapping[str, GroupPump]:
        return self._pumps

    @property
    def components(self) -> tuple[WakeListener, OutboxJanitor]:
        return (self.listener, self.janitor)
