"""The asyncio side of delivery: one `GroupPump` per server group, and the outbox janitor.

A pump implements `nbwss.link.GroupDelivery`. It outlives connections: the session
calls `run(link)` for each live connection of the group and cancels it when the
connection ends; the next `run` (reconnect or failover) resumes from the state the last
one left, so the unacknowledged batch goes first. All decisions are in
`delivery.GroupDelivery`; this module reads and writes the outbox (in worker threads,
so a busy database never stalls the event loop), writes frames and waits, on an event
set by a response or a wake-up, never in a sleep loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping

from nbwss import logs, messages, metrics, outbox
from nbwss.component import Component
from nbwss.delivery import Batch, GroupDelivery, Send, Verdict
from nbwss.link import Link
from nbwss.messages import Message
from nbwss.properties import Settings
from nbwss.store import Store
from nbwss.wake import WakeListener, Waker

log = logs.get_logger("nbwss.delivery")

Clock = Callable[[], float]


class GroupPump:
    """Delivers a group's outbox over whichever connection the group has."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        group_id: str,
        waker: Waker,
        *,
        clock: Clock = time.time,
        new_id: Callable[[], str] = messages.new_id,
        on_acked: Callable[[Batch], None] | None = None,
    ) -> None:
        """`on_acked` is called with each batch once its acknowledgement is committed
        (after `last_ack_at` is set)."""
        self.group_id = group_id
        self._store = store
        self._settings = settings
        self._waker = waker
        self._clock = clock
        self._new_id = new_id
        self._on_acked = on_acked
        self.last_ack_at: float | None = None  # when an ack was last committed, if ever
        self._delivery: GroupDelivery | None = None
        self._kick = asyncio.Event()
        self._host: str | None = None

    @property
    def delivery(self) -> GroupDelivery | None:
        """The state machine, once the first `run` has loaded it (for status and tests)."""
        return self._delivery

    def on_response(self, response: Message) -> None:
        delivery = self._delivery
        if delivery is None:
            log.warning("notification.unexpected_response", group=self.group_id, id=response.id)
            return
        verdict = delivery.on_response(response)
        if verdict is Verdict.ACKNOWLEDGED:
            self._kick.set()
        elif verdict is Verdict.DUPLICATE:
            log.info(
                "notification.duplicate_ack", group=self.group_id, host=self._host, id=response.id
            )
        else:
            log.warning(
                "notification.response_refused",
                group=self.group_id,
                host=self._host,
                id=response.id,
                reason=str(verdict),
            )

    async def run(self, link: Link) -> None:
        self._host = link.host_name
        self._waker.register(self._kick)
        try:
            if self._delivery is None or self._delivery.awaiting_commit is None:
                # Each connection starts from what the database says (the batch in flight
                # is persisted, so it comes back as the same message): a group deleted
                # and added again meanwhile starts at its new cursor, not the old one.
                previous, self._delivery = self._delivery, await self._load()
                self._delivery.carry_over(previous)
            self._delivery.connected(self._clock())
            while True:
                await self._step(self._delivery, link)
        finally:
            self._waker.unregister(self._kick)
            self._host = None

    async def _load(self) -> GroupDelivery:
        position = await asyncio.to_thread(
            outbox.load_position, self._store, self.group_id, self._clock()
        )
        settings = self._settings
        return GroupDelivery(
            group_id=self.group_id,
            max_batch=settings.notification_max_batch,
            max_bytes=settings.message_max_bytes,
            rate_s=settings.notification_rate_s,
            stall_after=settings.notification_stall_after_sends,
            acked_seq=position.acked_seq,
            restored=position.outstanding,
        )

    async def _step(self, delivery: GroupDelivery, link: Link) -> None:
        # Cleared before the outbox is read, so a wake-up from here on is not missed.
        self._kick.clear()
        if delivery.awaiting_commit is not None:
            await self._commit(delivery, link)
        wanted = delivery.wanted()
        if wanted is not None:
            events = await asyncio.to_thread(
                outbox.read_events, self._store, wanted.after_seq, wanted.limit, wanted.up_to_seq
            )
            batch = delivery.take(events, self._clock(), self._new_id())
            if batch is not None and batch is delivery.outstanding:
                # Persisted before its first write, so a restart resends it with this id.
                await asyncio.to_thread(
                    outbox.persist_batch, self._store, self.group_id, batch.persisted()
                )
        send = delivery.poll(self._clock())
        if send is not None:
            await self._send(delivery, link, send)
            return  # read the next batch ahead before waiting for this one's ack
        await self._wait(delivery.deadline())

    async def _send(self, delivery: GroupDelivery, link: Link, send: Send) -> None:
        batch = send.batch
        if batch.oversized:
            log.warning(
                "notification.oversized",
                group=self.group_id,
                host=link.host_name,
                id=batch.id,
                size_bytes=batch.size_bytes,
                max_bytes=self._settings.message_max_bytes,
                first_seq=batch.first_seq,
            )
        try:
            async with asyncio.timeout(self._settings.send_timeout_s):
                await link.send(batch.message)
        except TimeoutError:
            delivery.send_failed(batch.id, self._clock())
            self._log(log.warning, "notification.send_timeout", link, batch)
            return
        stall = delivery.sent(batch.id, self._clock())
        counter = metrics.NOTIFICATIONS_RESENT if send.resend else metrics.NOTIFICATIONS_SENT
        counter.labels(self.group_id).inc(batch.count)
        event = "notification.resent" if send.resend else "notification.sent"
        self._log(log.info, event, link, batch)
        if stall is not None:
            metrics.BATCHES_STALLED.labels(self.group_id).inc()
            self._log(log.error, "notification.stalled", link, batch, sends=stall.sends)

    async def _commit(self, delivery: GroupDelivery, link: Link) -> None:
        batch = delivery.awaiting_commit
        assert batch is not None
        now = self._clock()
        prepared = delivery.prepared
        purged = await asyncio.to_thread(
            outbox.acknowledge,
            self._store,
            self.group_id,
            batch.last_seq,
            now,
            prepared.persisted(int(now)) if prepared is not None else None,
        )
        delivery.committed(now)
        metrics.NOTIFICATIONS_ACKED.labels(self.group_id).inc(batch.count)
        self.last_ack_at = now
        self._log(log.info, "notification.acked", link, batch, purged=purged)
        if self._on_acked is not None:
            self._on_acked(batch)

    async def _wait(self, deadline: float | None) -> None:
        """Until a response or wake-up, the deadline, or the fallback poll of the outbox."""
        rate = self._settings.notification_rate_s
        delay = rate if deadline is None else min(rate, max(0.0, deadline - self._clock()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._kick.wait()

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
            pump = self._pumps[group_id] = GroupPump(
                self._store, self._settings, group_id, self.waker
            )
        return pump

    @property
    def pumps(self) -> Mapping[str, GroupPump]:
        return self._pumps

    @property
    def components(self) -> tuple[WakeListener, OutboxJanitor]:
        return (self.listener, self.janitor)
