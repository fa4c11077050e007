"""Delivery's side of the daemon that outlives connections: each group's `GroupOutbox`
(its ledger and its store calls), the wake-ups, and the outbox janitor.

A live connection delivers its group's outbox itself (`session.Session`, the one driver
of `protocol.GroupConnection`, whose core asks for each read, persist, write and commit
in turn). What must survive a reconnect or failover is the group's
`protocol.DeliveryLedger`, kept here, one per group, for the next connection and for
`/status`: the delivery machine (each connection reloads the batch in flight from the
database; only its send count carries over), an ack judged but not yet committed, and
when an ack was last committed. The groups' acknowledgements are committed together
when they come together (`AckCommitter`, one per store).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from nbwss import outbox
from nbwss.component import Component
from nbwss.delivery import AckCommit, EventRange
from nbwss.errors import StoreError
from nbwss.flag import Flag
from nbwss.logs import get_logger
from nbwss.properties import Settings
from nbwss.protocol import DeliveryLedger
from nbwss.store import Store
from nbwss.values import GroupPosition, OutboxEvent, PersistedBatch
from nbwss.wake import OutboxWatch, WakeListener, Waker

log = get_logger("nbwss.outbox")

Clock = Callable[[], float]
# How long an acknowledged event may stay in the outbox before the janitor deletes it.
PURGE_INTERVAL_S = 10.0


class AckCommitter:
    """Commits the acknowledgements of every group of a store, those that come while a
    commit is under way together in the next one (`outbox.acknowledge_together`, in a
    worker thread): with 100 groups draining, one transaction, one WAL append and one
    thread hand-off carry several groups' acks instead of one each.

    Each group still has its ack committed before it is told (`commit()`'s future), and
    a group has one ack at a time, so its order and durability are `acknowledge`'s.
    One commit at a time: the store serialises them anyway. Whatever fails (the
    executor refusing the work at shutdown, a read parked with `after_commit`), every
    future is settled and the next ack is committed: no group waits for ever.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._queued: list[tuple[outbox.GroupAck, asyncio.Future[int | None]]] = []
        self._committing = False
        self._after_commit: collections.deque[Callable[[], None]] = collections.deque()
        self.commits = 0  # transactions started (for tests and benchmarks)

    def after_commit(self, call: Callable[[], None]) -> bool:
        """Call `call` on the loop when the commit under way has ended, before the next
        one starts (the store is free then); False, and no call, when none is under way.

        The calls are made one a loop iteration (each is a read of up to a batch: ten
        back to back would hold the loop for several milliseconds); acks that come
        meanwhile wait for the last of them. An exception from one is logged."""
        if not self._committing:
            return False
        self._after_commit.append(call)
        return True

    def commit(self, ack: outbox.GroupAck) -> asyncio.Future[int | None]:
        """The group's cursor once `ack` is committed (None: the group has no cursor);
        from the loop's thread. Never cancel it: a commit cannot be stopped."""
        done: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._queued.append((ack, done))
        if not self._committing and not self._after_commit:
            self._start()
        return done

    def _start(self) -> None:
        queued, self._queued = self._queued, []
        acks = [ack for ack, _ in queued]
        try:
            running = asyncio.get_running_loop().run_in_executor(
                None, outbox.acknowledge_together, self._store, acks
            )
        except RuntimeError:
            # The executor shut down: the daemon's teardown, after its sessions were
            # cancelled. Nothing was committed, as for a cancelled call: nothing to
            # report (the endpoint has the batches again after the restart).
            _settle(queued, [asyncio.CancelledError()] * len(queued))
            return
        self._committing = True
        self.commits += 1
        running.add_done_callback(functools.partial(self._finished, queued))

    def _finished(
        self,
        queued: list[tuple[outbox.GroupAck, asyncio.Future[int | None]]],
        finished: asyncio.Future[list[int | Exception | None]],
    ) -> None:
        self._committing = False
        try:
            outcomes: list[int | BaseException | None]
            if finished.cancelled():  # never by this module: as for one group's own call
                outcomes = [asyncio.CancelledError()] * len(queued)
            elif (error := finished.exception()) is not None:
                outcomes = [error] * len(queued)
            else:
                outcomes = list(finished.result())
            _settle(queued, outcomes)
        finally:
            self._next_after_commit()

    def _next_after_commit(self) -> None:
        """The next parked call, then (its own loop iteration each) the rest; after the
        last, the acks that came meanwhile."""
        try:
            if self._after_commit:
                call = self._after_commit.popleft()
                try:
                    call()
                except Exception:  # its own caller's loss; the other calls go on
                    log.exception("outbox.after_commit_failed")
        finally:
            if self._after_commit:
                asyncio.get_running_loop().call_soon(self._next_after_commit)
            elif self._queued and not self._committing:
                self._start()


def _settle(
    queued: list[tuple[outbox.GroupAck, asyncio.Future[int | None]]],
    outcomes: Sequence[int | BaseException | None],
) -> None:
    for (_, done), outcome in zip(queued, outcomes, strict=True):
        if done.done():  # cancelled by its connection, against the contract
            continue
        if isinstance(outcome, asyncio.CancelledError):
            done.cancel()
        elif isinstance(outcome, BaseException):
            done.set_exception(outcome)
        else:
            done.set_result(outcome)


@dataclass(frozen=True, slots=True)
class GroupOutbox:
    """One group's outbox as its connections deliver it: the blocking store calls the
    core asks for (run in a worker thread by the driver), the group's ledger, and the
    waker that announces new rows; `released` is set whenever a connection released
    the ledger (`DeliveryLedger.owner`), for the next one waiting to deliver.

    `acks`, when given, commits the group's acknowledgements together with other
    groups' (`commit_ack`); without it each is its own transaction (`acknowledge`)."""

    store: Store
    ledger: DeliveryLedger
    waker: Waker
    released: Flag = field(default_factory=Flag, compare=False)  # an Event, lean
    acks: AckCommitter | None = field(default=None, compare=False)

    @property
    def group_id(self) -> str:
        return self.ledger.group_id

    def load_position(self, now: float) -> GroupPosition:
        return outbox.load_position(self.store, self.group_id, now)

    def read_events(self, wanted: EventRange) -> list[OutboxEvent]:
        return outbox.read_events(self.store, wanted.after_seq, wanted.limit, wanted.up_to_seq)

    def read_events_if_free(self, wanted: EventRange) -> list[OutboxEvent] | None:
        """`read_events` at once, or None when another thread has the store (see
        `outbox.read_events_if_free`: the event loop never waits for it)."""
        return outbox.read_events_if_free(
            self.store, wanted.after_seq, wanted.limit, wanted.up_to_seq
        )

    def read_events_after_commit(
        self, wanted: EventRange
    ) -> asyncio.Future[list[OutboxEvent]] | None:
        """For a read that found the store busy: when the busy one is the acks' commit,
        a future of the read made on the loop as soon as the commit ends (the store is
        free then: no worker thread, whose read of 500 rows takes the GIL back 500
        times while the loop runs); None otherwise (the caller reads in a thread)."""
        if self.acks is None:
            return None
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[OutboxEvent]] = loop.create_future()
        context = contextvars.copy_context()

        def read() -> None:
            try:
                events = self.read_events_if_free(wanted)
            except Exception as exc:  # as from a worker thread
                if not done.done():
                    done.set_exception(exc)
                return
            if events is not None:
                if not done.done():
                    done.set_result(events)
                return
            # Someone else has the store (the janitor, say): a thread reads.
            try:
                in_thread = loop.run_in_executor(
                    None, functools.partial(context.run, self.read_events, wanted)
                )
            except RuntimeError:  # the executor shut down (teardown): as cancelled
                done.cancel()
                return
            in_thread.add_done_callback(functools.partial(_copy_outcome, done))

        return done if self.acks.after_commit(read) else None

    def persist_batch(self, row: PersistedBatch) -> None:
        outbox.persist_batch(self.store, self.group_id, row)

    def acknowledge(self, commit: AckCommit, now: float) -> int | None:
        """Commit the ack's transaction; the group's cursor after it (None: no cursor)."""
        return outbox.acknowledge(
            self.store, self.group_id, commit.last_seq, now, commit.next_row
        )

    def commit_ack(self, commit: AckCommit, now: float) -> asyncio.Future[int | None] | None:
        """`acknowledge` through `acks`, with other groups' acks: a future of its outcome
        (from the loop's thread); None without `acks` (the caller runs `acknowledge`)."""
        if self.acks is None:
            return None
        return self.acks.commit(
            outbox.GroupAck(self.group_id, commit.last_seq, now, commit.next_row)
        )


def _copy_outcome(
    to: asyncio.Future[list[OutboxEvent]], source: asyncio.Future[list[OutboxEvent]]
) -> None:
    if to.done():
        return
    if source.cancelled():
        to.cancel()
    elif (error := source.exception()) is not None:
        to.set_exception(error)
    else:
        to.set_result(source.result())


class OutboxJanitor(Component):
    """Daemon component: deletes what every group acknowledged, every
    `purge_interval_s`; every `interval_s` (at start, then hourly), also applies
    `notification.retentionDays`, logging loudly when it drops anything a group had not
    acknowledged, and gives the file's free pages back (`outbox.purge`).

    The delete is here, not in each acknowledgement's transaction, to keep it off the
    delivery's path: an acknowledged event stays in the file up to `purge_interval_s`.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        interval_s: float = 3600.0,
        purge_interval_s: float = PURGE_INTERVAL_S,
        clock: Clock = time.time,
    ) -> None:
        self._store = store
        self._settings = settings
        self._interval_s = interval_s
        self._purge_interval_s = purge_interval_s
        self._clock = clock
        self.passes = 0  # passes ended, failed or not
        self.pass_done: asyncio.Event | None = None  # set after each pass (for tests)

    def sweep(self) -> outbox.Expired:
        expired = outbox.expire(
            self._store, self._clock(), self._settings.notification_retention_days
        )
        outbox.purge(self._store)
        return expired

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        expire_at = loop.time()
        self.pass_done = self.pass_done or asyncio.Event()
        while True:
            try:
                if loop.time() >= expire_at:
                    await asyncio.to_thread(self.sweep)
                    expire_at = loop.time() + self._interval_s
                else:
                    await self._delete_acknowledged()
            except StoreError as exc:
                # A full disk or a lock held too long: the rows wait for the next pass;
                # the daemon (delivery, COMMANDs, status) goes on.
                log.error("outbox.purge_failed", reason=str(exc))
            self.passes += 1
            self.pass_done.set()
            await asyncio.sleep(min(self._purge_interval_s, self._interval_s))

    async def _delete_acknowledged(self) -> None:
        """One chunk a worker-thread call: between two, a waiting ack takes the lock."""
        chunk = outbox.PURGE_CHUNK
        delete = outbox.delete_acknowledged_chunk
        while await asyncio.to_thread(delete, self._store, chunk) == chunk:
            pass


class DeliveryWiring:
    """Everything delivery adds to the daemon, made once from the store and settings,
    and the one registry of the groups' ledgers (the supervisor asks `outbox(group)`
    for each connection; `/status` reads `ledgers`).

    The REST poller gets `waker` so its commits wake the connections too. New rows are
    found by the wake-ups (a datagram, the poller) and, should a datagram be lost, by
    the one `OutboxWatch`; a connection never polls the outbox on its own.
    """

    def __init__(self, store: Store, settings: Settings) -> None:
        self.waker = Waker()
        self.listener = WakeListener(settings.wake_socket, self.waker)
        self.watch = OutboxWatch(store, self.waker, settings.notification_rate_s)
        self.janitor = OutboxJanitor(store, settings)
        self.acks = AckCommitter(store)
        self._store = store
        self._outboxes: dict[str, GroupOutbox] = {}

    def outbox(self, group_id: str) -> GroupOutbox:
        """The group's outbox, made on first use: its ledger outlives each connection."""
        found = self._outboxes.get(group_id)
        if found is None:
            found = self._outboxes[group_id] = GroupOutbox(
                self._store, DeliveryLedger(group_id), self.waker, acks=self.acks
            )
        return found

    @property
    def ledgers(self) -> Mapping[str, DeliveryLedger]:
        return {group: found.ledger for group, found in self._outboxes.items()}

    def update_settings(self, settings: Settings) -> None:
        """A reload: the watch reads the outbox every `notification.scheduledRate` now
        (from its next period); a connection's resend wait changes with the next one."""
        self.watch.period_s = settings.notification_rate_s

    @property
    def components(self) -> tuple[WakeListener, OutboxWatch, OutboxJanitor]:
        return (self.listener, self.watch, self.janitor)
