"""One live connection to an endpoint: the asyncio driver of its `GroupConnection`.

The rules of the connection (CONNECT and its deadline, decoding and the decoder
policy, dispatch, pong misses, one close) are `nbwss.protocol.GroupConnection`'s: this
module dials, feeds it frames and the time, and carries out the actions it answers.
`connect()` dials over pinned TLS and completes the CONNECT handshake (spec section 3)
or raises; the `Session` it returns is the group's `Link` until `run()` returns. `run()`
is one loop, the only driver of the core: a reader task (the only caller of
`receive()`) hands it frames, and it waits for a frame, the end of the delivery
operation under way, a wake-up or the core's `next_deadline()` (pings, CONNECT's
answer, a resend due), and carries out the actions without waiting for any: a batch
write runs in a task of the connection, the group's store calls (`outboxes.GroupOutbox`)
in a worker thread (an outbox read at once when the store is free), one delivery
operation at a time;
COMMAND requests run in their own tasks so a slow REST call never stalls the loop.
`_write()` owns the write deadline (`notification.sendTimeout`). Every COMMAND request
gets one answer (a
400 when only its id and type could be read); one whose answer is lost with the
connection is logged `command.unanswered`, saying whether its REST call had started.
Every way the connection ends goes through `request_close`, so there is one close frame
and one recorded reason.

aiohttp's own heartbeat closes on the first missing pong, while NBWSS tolerates
`keepAlive.maxPongMissAllowed` of them, so pings and pongs are ours (`autoping=False`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import aiohttp

from nbwss import messages
from nbwss.delivery import Batch, EventRange
from nbwss.dial import Target, count_handshake, dial
from nbwss.errors import ConnectError, TokenRefusedError, TrustError
from nbwss.guard import loggable_method_and_uri
from nbwss.link import CommandHandler
from nbwss.logs import get_logger
from nbwss.messages import Message
from nbwss.metrics import (
    BATCHES_STALLED,
    COMMANDS,
    DECODE_ERRORS,
    NOTIFICATIONS_ACKED,
    NOTIFICATIONS_RESENT,
    NOTIFICATIONS_SENT,
    PONG_MISSES,
)
from nbwss.outbound import Proxy
from nbwss.properties import Settings
from nbwss.protocol import (
    CLOSE_NORMAL,
    Action,
    AnswerMalformedCommand,
    CarryOutCommand,
    Close,
    CommitAck,
    Counter,
    DeliveryOperation,
    GroupConnection,
    HandshakeFailed,
    Opened,
    PersistBatch,
    ReadEvents,
    Report,
    SendPing,
    SendPong,
    State,
    WriteBatch,
    WriteFrame,
)
from nbwss.trust import check_peer

if TYPE_CHECKING:
    from nbwss.outboxes import GroupOutbox

log = get_logger("nbwss.session")
T = TypeVar("T")

_ENDINGS: Final = frozenset({aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE,
                              aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED})
_MAX_REASON_BYTES: Final = 123  # RFC 6455: a close reason fits in a control frame
_TIMER_SLACK_S: Final = 0.001  # how far from the core's deadline its timer may fire


async def connect(
    http: aiohttp.ClientSession,
    target: Target,
    settings: Settings,
    ssl_context: ssl.SSLContext,
    *,
    delivery: GroupOutbox | None = None,
    command_handler: CommandHandler | None = None,
    clock: Callable[[], float] = time.time,
    dial_slots: asyncio.Semaphore | None = None,
    proxy: Proxy | None = None,
) -> Session:
    """Dial `target` (through `proxy`, an HTTP CONNECT tunnel, when given) and complete
    CONNECT; raise `ConnectError`/`TrustError` saying why.

    `dial_slots` bounds the dials (TCP, TLS, upgrade: CPU-bound) made at once; it is
    not held while the endpoint takes its time to answer CONNECT.
    """
    async with dial_slots or contextlib.nullcontext():
        ws = await dial(http, target, settings, ssl_context, proxy)
    # The pin is checked here, once: the session keeps its target without the pinned
    # certificate, which the group's endpoint record holds anyway (a re-read of the
    # records every `connectionInfo.period` would leave each live session the only
    # holder of a second copy: ~1 KiB a connection).
    unpinned = replace(target, certificate_der=b"")
    session = Session(ws, unpinned, settings, delivery, command_handler, clock)
    try:
        ssl_object = ws.get_extra_info("ssl_object")
        presented = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        try:
            check_peer(presented, target.certificate_der, target.host_name)
        except TrustError:
            count_handshake(target, "error")
            raise
        await session.handshake()
    except BaseException:
        await session.abort()
        raise
    return session


@dataclass(slots=True)
class _Command:
    """A COMMAND being answered: what `command.unanswered` says if its answer is lost."""

    id: str
    method: str
    uri: str
    api_called: bool = False  # its REST call started: the API may have carried it out


def not_implemented_response(request: Message, now: float) -> Message:
    """The answer to a COMMAND when no proxy is plugged in: never silence."""
    reason = "COMMAND is not available: this daemon has no REST proxy configured"
    return messages.command_error(request, 501, reason, now)


class WebSocket(Protocol):
    """What the driver uses of aiohttp's client WebSocket (a test may give its own)."""

    @property
    def closed(self) -> bool: ...

    @property
    def close_code(self) -> int | None: ...

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage: ...  # noqa: ASYNC109

    async def send_str(self, data: str, compress: int | None = None) -> None: ...

    async def ping(self, message: bytes = b"") -> None: ...

    async def pong(self, message: bytes = b"") -> None: ...

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool: ...


class _Attention:
    """Something for the driver's loop to look at (a frame, an operation done, a
    wake-up, its timer): an `asyncio.Event` for its one waiter, the loop.

    One per connection, so it is lean (issue 14): an Event brings a deque of waiters
    (~0.7 KiB); this is a flag and a future while the loop waits.
    """

    __slots__ = ("_is_set", "_waiter")

    def __init__(self) -> None:
        self._is_set = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._is_set

    def set(self) -> None:
        self._is_set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._is_set = False

    async def wait(self) -> None:
        """Until set (at once if it is); one waiter at a time."""
        if self._is_set:
            return
        assert self._waiter is None, "one waiter at a time"  # a second would strand the first
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None


class _WakeFlag:
    """What the `Waker` sets: a wake-up for the driver's loop, told apart from a frame."""

    __slots__ = ("_attention", "woken")

    def __init__(self, attention: _Attention) -> None:
        self.woken = False
        self._attention = attention

    def set(self) -> None:
        self.woken = True
        self._attention.set()


@dataclass(frozen=True, slots=True)
class _Pending:
    """The one delivery operation under way: a store call in a worker thread or a
    batch write (a task of the connection)."""

    operation: DeliveryOperation
    future: asyncio.Future[Any]
    started_at: float


def _in_thread(call: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """A blocking store call in a worker thread, with the caller's context variables:
    the loop never waits on SQLite. What `asyncio.to_thread` does, as a future rather
    than a coroutine: wrapped in a task it cost 20 us of CPU more a call (issue 13's
    review). Not a task of the connection: it cannot be stopped, so it is never
    cancelled but waited for (`run()`)."""
    context = contextvars.copy_context()
    return asyncio.get_running_loop().run_in_executor(
        None, functools.partial(context.run, call, *args)
    )


def _read_events(outbox: GroupOutbox, wanted: EventRange) -> asyncio.Future[Any]:
    """The read at once when the store is free (a WAL read waits for no writer, and two
    thread hand-offs cost as much as the read), else in a worker thread."""
    done = asyncio.get_running_loop().create_future()
    try:
        events = outbox.read_events_if_free(wanted)
    except Exception as exc:  # as from a worker thread: `delivery.failed`, close 1011
        done.set_exception(exc)
        return done
    if events is None:  # after the acks' commit that holds the store, else in a thread
        later = outbox.read_events_after_commit(wanted)
        return later if later is not None else _in_thread(outbox.read_events, wanted)
    done.set_result(events)
    return done


class Session:
    """One CONNECTED endpoint of a server group; implements `nbwss.link.CommandLink`."""

    def __init__(
        self,
        ws: WebSocket,
        target: Target,
        settings: Settings,
        delivery: GroupOutbox | None,
        command_handler: CommandHandler | None,
        clock: Callable[[], float],
    ) -> None:
        self._ws = ws
        self.target = target
        self._settings = settings
        self._delivery = delivery
        self._command_handler = command_handler
        self._clock = clock
        self._tasks: set[asyncio.Task[Any]] = set()
        self._close_task: asyncio.Task[bool] | None = None
        self._reason: str | None = None
        self._core = GroupConnection(settings, target.token)  # the connection's rules
        self._commands: dict[int, _Command] = {}  # by id() of the request being answered
        self._attention = _Attention()  # a frame, an operation done, or a wake-up
        # Frames read, not yet handled; a list, not a deque: empty most of the time,
        # and an empty deque holds a block of 64 slots (~0.6 KiB a connection).
        self._frames: list[aiohttp.WSMessage] = []
        self._wake = _WakeFlag(self._attention)
        self._pending: _Pending | None = None
        self._ledger_free = False  # the group's ledger was released to this connection
        self._pong_due: bytes | None = None  # the latest ping's data, not answered yet
        self._timer: asyncio.TimerHandle | None = None  # the core's next deadline
        self._ponging = False  # a pong write is outstanding
        # Done when `run()` returned. A future, not an `asyncio.Event`: one of these per
        # connection, and an Event brings a deque of waiters (~0.7 KiB a connection).
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @functools.cached_property
    def _log(self) -> Any:
        """The session's logger, bound on first use: most idle connections never log
        after CONNECT, and a bound logger costs ~0.3 KiB a connection."""
        return log.bind(group=self.target.group_id, host=self.target.host_name)

    # -- Link ------------------------------------------------------------------------------

    @property
    def group_id(self) -> str:
        return self.target.group_id

    @property
    def host_name(self) -> str:
        return self.target.host_name

    async def send(self, message: Message) -> None:
        """Write one frame (a COMMAND answer; `Link.send`'s contract)."""
        await self._write(messages.encode(message))

    async def _write(self, text: str) -> None:
        """Write one text frame within `notification.sendTimeout` (the one owner of that
        deadline): `TimeoutError` past it, `ConnectionError` when the connection failed."""
        if self._reason is not None or self._ws.closed:
            raise ConnectionError(f"connection to {self.host_name} is closed")
        try:
            async with asyncio.timeout(self._settings.send_timeout_s):
                await self._ws.send_str(text)
        except TimeoutError:
            raise  # an OSError too, but not a lost connection: the caller decides
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionError(f"connection to {self.host_name} failed: {exc}") from exc

    # -- handshake -------------------------------------------------------------------------

    async def handshake(self) -> None:
        """Send CONNECT and require a `valid: true` answer with its id in time (the rules
        are `GroupConnection`'s); the caller dials nothing else for the group meanwhile."""
        [write] = self._core.start(self._clock())
        assert isinstance(write, WriteFrame)
        try:
            await self.send(write.message)
        except TimeoutError:
            await self._settle_handshake(self._core.write_timed_out(self._clock()))
        except ConnectionError as exc:
            await self._settle_handshake(self._core.connection_lost(str(exc)))
        self._core.connect_written(self._clock())
        while self._core.state is State.CONNECTING:
            await self._settle_handshake(await self._handshake_event())

    async def _handshake_event(self) -> list[Action]:
        """The next thing that happens while CONNECT's answer is awaited."""
        now = self._clock()
        due = self._core.tick(now)  # first, so the delay is in the time the core saw
        if due:
            return due
        deadline = self._core.next_deadline()
        delay = None if deadline is None else max(0.0, deadline - now)
        try:
            async with asyncio.timeout(delay):
                frame = await self._ws.receive()
        except TimeoutError:
            return self._core.tick(self._clock())
        except (aiohttp.ClientError, OSError) as exc:
            return self._core.connection_lost(str(exc))
        if frame.type is aiohttp.WSMsgType.PING:
            for action in self._core.ping_received(frame.data):
                if isinstance(action, SendPong):  # within the write deadline: a peer
                    # that pings and never reads must not hold CONNECT's past its own
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        async with asyncio.timeout(self._settings.send_timeout_s):
                            await self._ws.pong(action.data)
            return []
        return self._on_frame(frame)

    async def _settle_handshake(self, actions: list[Action]) -> None:
        """Count and raise on a failed handshake; the supervisor goes on to the next
        endpoint. An open connection is counted valid."""
        for action in actions:
            if isinstance(action, Opened):
                count_handshake(self.target, "valid")
            elif isinstance(action, HandshakeFailed):
                count_handshake(self.target, action.result)
                self._reason = action.reason
                await self._close_now(action.code, action.reason)
                # Logs and /status name the host beside the reason.
                error = TokenRefusedError if action.token_refused else ConnectError
                raise error(action.reason)

    async def abort(self) -> None:
        """Close after a failed handshake (no-op if already closed)."""
        await self._close_now(CLOSE_NORMAL, self._reason or "handshake failed")

    async def _close_now(self, code: int, reason: str) -> None:
        if not self._ws.closed:
            await self._ws.close(code=code, message=_reason_bytes(reason))

    # -- the live connection ---------------------------------------------------------------

    @property
    def pong_misses(self) -> int:
        return self._core.pong_misses

    async def run(self) -> str:
        """Serve the connection until it ends; return why it ended."""
        waker = self._delivery.waker if self._delivery is not None else None
        if waker is not None:
            waker.register(self._wake)
        try:
            async with asyncio.TaskGroup() as group:
                reader = group.create_task(self._receive())
                await self._serve(group)
                if self._close_task is not None:
                    await self._close_task
                for task in (reader, *self._tasks):
                    task.cancel()
        finally:
            if self._timer is not None:
                self._timer.cancel()
            if waker is not None:
                waker.unregister(self._wake)
            # Cancelled from outside (shutdown): still say goodbye with a close frame.
            self._reason = self._reason or "daemon stopping"
            # The transport is done with (cancelled from outside, the core may still be
            # open): what the last store call answers starts nothing more.
            self._core.connection_lost(self._reason)
            try:
                await self._settle_store_operation()
                if self._close_task is not None:
                    await self._close_task
                elif not self._ws.closed:
                    await self._ws.close(code=CLOSE_NORMAL, message=_reason_bytes(self._reason))
            finally:
                if not self.ended.done():
                    self.ended.set_result(None)
        return self._reason

    async def _receive(self) -> None:
        """The only caller of `receive()`: hands each frame to the loop in `_serve`."""
        while True:
            frame = await self._ws.receive()
            self._frames.append(frame)
            self._attention.set()
            if frame.type in _ENDINGS:
                return

    async def _serve(self, group: asyncio.TaskGroup) -> None:
        """The one loop of the connection: each frame, finished operation, wake-up and
        deadline goes to the core, and its actions are carried out, until the
        transport ends. Nothing here waits but the loop itself: writes and store calls
        run beside it, one delivery operation at a time."""
        if self._delivery is not None:
            if self._delivery.ledger.owner is None:
                self._deliver(group)
            else:  # served meanwhile (pings, COMMANDs); delivery starts once it is free
                self._start(group, self._await_ledger(self._delivery))
        while True:
            now = self._clock()
            # Every pass tells the core the time (never only when a deadline looks due:
            # a clock stepped back must reach it to move its deadlines back too).
            self._carry_out_all(self._core.tick(now), group)
            await self._attend(now)
            pending = self._pending
            if pending is not None and pending.future.done():
                self._pending = None
                self._carry_out_all(self._finished(pending), group)
            if self._ledger_free:
                self._ledger_free = False
                self._deliver(group)
            if self._wake.woken:
                self._wake.woken = False
                self._carry_out_all(self._core.wake(self._clock()), group)
            if not self._frames:
                continue
            frames, self._frames = self._frames, []
            for frame in frames:  # the reader appends none meanwhile: nothing here waits
                self._carry_out_all(self._on_frame(frame), group)
                if frame.type in _ENDINGS:
                    return

    async def _attend(self, now: float) -> None:
        """Until something happened (a frame, an operation done, a wake-up) or the
        core's next deadline (seen from `now`, the time last fed to it): the loop's one
        wait and one timer."""
        if not self._attention.is_set():
            self._set_timer(self._core.next_deadline(), now)
            await self._attention.wait()
        self._attention.clear()

    def _set_timer(self, deadline: float | None, now: float) -> None:
        """The loop timer that ends `_attend`'s wait at the core's `deadline`, moved only
        when the deadline moves: a new timer (an `asyncio.timeout`) every pass cost more
        than the rest of the wait, at four passes a batch and a hundred connections.
        Kept while it fires within `_TIMER_SLACK_S` of the deadline (the loop's timers
        are no finer; early, the pass finds nothing due and waits again)."""
        loop = asyncio.get_running_loop()
        when = None if deadline is None else loop.time() + max(0.0, deadline - now)
        timer = self._timer
        if timer is not None and when is not None and abs(when - timer.when()) < _TIMER_SLACK_S:
            return
        if timer is not None:
            timer.cancel()
        self._timer = None if when is None else loop.call_at(when, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._attention.set()

    def _deliver(self, group: asyncio.TaskGroup) -> None:
        assert self._delivery is not None
        self._carry_out_all(self._core.deliver(self._delivery.ledger, self._clock()), group)

    async def _await_ledger(self, outbox: GroupOutbox) -> None:
        """Until the group's previous connection released its ledger (it may still wait
        for its last store call: a shutdown cancelled it twice, say); then the loop
        starts delivering."""
        while outbox.ledger.owner is not None:
            outbox.released.clear()
            await outbox.released.wait()
        self._ledger_free = True
        self._attention.set()

    async def _settle_store_operation(self) -> None:
        """A store call still running when the connection ended is waited for (it cannot
        be stopped) and told to the core, so the group's next connection starts from
        what it did; then the ledger is released: never two store calls of one group at
        once. Cancelled meanwhile, the call is told and the ledger released when it
        ends, and the group's next connection waits for that. A batch write is told
        too if it completed before the connection's tasks were cancelled (it was sent:
        its report and its count for a stall)."""
        pending, self._pending = self._pending, None
        if pending is not None and not isinstance(pending.operation, WriteBatch):
            try:
                await asyncio.wait([pending.future])
            except asyncio.CancelledError:
                pending.future.add_done_callback(lambda _: self._settled(pending))
                raise
        self._settled(pending)

    def _settled(self, pending: _Pending | None) -> None:
        if pending is not None and pending.future.done():  # a write may be cancelled
            for action in self._finished(pending):
                if isinstance(action, Report):  # nothing else starts now
                    self._report(action)
        if self._delivery is not None:
            self._core.release_delivery()
            self._delivery.released.set()

    async def close(self, reason: str, code: int = CLOSE_NORMAL) -> None:
        """Ask the connection to close (normal close frame) and wait until `run()` ended;
        for a session that is served (`run()` running or about to be)."""
        self.request_close(reason, code)
        await asyncio.shield(self.ended)

    def request_close(self, reason: str, code: int = CLOSE_NORMAL) -> None:
        """Start closing (normal close frame by default) without waiting; idempotent."""
        if self._close_task is not None or self._reason is not None:
            return
        for action in self._core.close(code, reason):
            if isinstance(action, Close):
                self._start_closing(action)

    def _start_closing(self, close: Close) -> None:
        if self._close_task is not None or self._reason is not None:
            return
        self._reason = close.reason
        self._log.info("connection.closing", reason=close.reason, code=close.code)
        self._close_task = asyncio.ensure_future(
            self._ws.close(code=close.code, message=_reason_bytes(close.reason))
        )

    def _on_frame(self, frame: aiohttp.WSMessage) -> list[Action]:
        """One frame as an event for the core."""
        kinds = aiohttp.WSMsgType
        now = self._clock()
        if frame.type is kinds.TEXT:
            return self._core.text_received(frame.data, now)
        if frame.type is kinds.BINARY:
            return self._core.binary_received(now)
        if frame.type is kinds.PING:
            return self._core.ping_received(frame.data)
        if frame.type is kinds.PONG:
            return self._core.pong_received()
        if frame.type is kinds.ERROR:
            why = f"protocol error: {frame.data}"
        elif self._core.state is State.CONNECTING:
            why = f"the endpoint closed the connection ({frame.type.name})"
        else:  # CLOSE, CLOSING, CLOSED
            why = f"closed by the endpoint (code {self._ws.close_code})"
        if self._core.state is not State.CONNECTING:
            self._reason = self._reason or why
        return self._core.connection_lost(why)

    # -- carrying out the core's actions (none of them waits) --------------------------------

    def _carry_out_all(self, actions: list[Action], group: asyncio.TaskGroup) -> None:
        for action in actions:
            self._carry_out_action(action, group)

    def _carry_out_action(self, action: Action, group: asyncio.TaskGroup) -> None:
        if isinstance(action, Report):
            self._report(action)
        elif isinstance(action, DeliveryOperation):
            self._operate(action, group)
        elif isinstance(action, SendPing):
            self._start(group, self._control(self._ws.ping, action.data))
        elif isinstance(action, SendPong):
            self._pong(action.data, group)
        elif isinstance(action, Close):
            self._start_closing(action)
        elif isinstance(action, CarryOutCommand):
            self._start(group, self._answer_command(action.request))
        elif isinstance(action, AnswerMalformedCommand):
            self._start(group, self._answer_malformed(action))

    def _operate(self, operation: DeliveryOperation, group: asyncio.TaskGroup) -> None:
        """Start the delivery operation the core asked for (one at a time)."""
        assert self._delivery is not None
        assert self._pending is None
        outbox, now = self._delivery, self._clock()
        future: asyncio.Future[Any]
        if isinstance(operation, WriteBatch):
            future = self._start(group, self._write_batch(operation.batch))
        elif isinstance(operation, ReadEvents):
            future = _read_events(outbox, operation.range)
        elif isinstance(operation, PersistBatch):
            future = _in_thread(outbox.persist_batch, operation.row)
        elif isinstance(operation, CommitAck):  # with other groups' acks, when it can
            joint = outbox.commit_ack(operation.commit, now)
            future = joint or _in_thread(outbox.acknowledge, operation.commit, now)
        else:
            future = _in_thread(outbox.load_position, now)
        self._pending = _Pending(operation, future, now)
        future.add_done_callback(self._operation_done)

    def _operation_done(self, _: asyncio.Future[Any]) -> None:
        self._attention.set()

    async def _write_batch(self, batch: Batch) -> Exception | None:
        """Write a NOTIFICATION; a failure is an outcome for the loop (`_finished`), never
        one that ends the connection's TaskGroup."""
        try:
            await self._write(batch.text)  # spliced from the stored rows (delivery.py)
        except Exception as exc:  # judged in `_finished`
            return exc
        return None

    def _finished(self, pending: _Pending) -> list[Action]:
        """A delivery operation ended: its outcome for the core, or the close it calls
        for (the connection lost under a write, the store failing)."""
        future, operation = pending.future, pending.operation
        if future.cancelled():
            return []
        error, now = future.exception(), self._clock()
        if isinstance(operation, WriteBatch) and error is None:
            error = future.result()
            if error is None:
                return self._core.batch_written(now)
            if isinstance(error, TimeoutError):
                return self._core.batch_write_timed_out(now)
            if isinstance(error, ConnectionError):
                return self._core.batch_write_failed(now, str(error))
        if error is not None:
            self._log.error("delivery.failed", exc_info=error)
            return self._core.operation_failed()
        result = future.result()
        if isinstance(operation, ReadEvents):
            return self._core.events_read(result, now, messages.new_id())
        if isinstance(operation, PersistBatch):
            return self._core.persist_done(operation.row.message_id, now)
        if isinstance(operation, CommitAck):
            return self._core.ack_committed(operation.commit, pending.started_at, result)
        return self._core.position_loaded(result, now)

    async def _control(
        self, write: Callable[[bytes], Coroutine[Any, Any, None]], data: bytes
    ) -> None:
        # A failed ping or pong needs no handling: the reader sees the connection end next,
        # and a ping that never goes out is a missed pong.
        with contextlib.suppress(aiohttp.ClientError, OSError):
            await write(data)

    def _pong(self, data: bytes, group: asyncio.TaskGroup) -> None:
        """Answer a ping with at most one pong write outstanding: a peer that pings and
        never reads costs one write, not a task and a buffer per ping. Pings that come
        meanwhile get one pong, the latest's (RFC 6455 5.5.3 allows it)."""
        self._pong_due = data
        if not self._ponging:
            self._ponging = True
            self._start(group, self._answer_pings())

    async def _answer_pings(self) -> None:
        try:
            while self._pong_due is not None:
                data, self._pong_due = self._pong_due, None
                await self._control(self._ws.pong, data)
        finally:
            self._ponging = False

    def _report(self, report: Report) -> None:
        log_method = {"warning": self._log.warning, "error": self._log.error}.get(
            report.level, self._log.info
        )
        log_method(report.event, **report.fields)
        counter = report.counter
        if counter is None:
            return
        if counter is Counter.DECODE_ERRORS:
            DECODE_ERRORS.labels(group=self.group_id, host=self.host_name).inc()
        elif counter is Counter.PONG_MISSES:
            PONG_MISSES.labels(group=self.group_id, host=self.host_name).inc()
        elif counter is Counter.COMMANDS_400:
            COMMANDS.labels(status="400").inc()
        else:
            _DELIVERY_COUNTERS[counter].labels(self.group_id).inc(report.amount)

    def _start(self, group: asyncio.TaskGroup, job: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task of this connection: cancelled when it ends."""
        task = group.create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- COMMAND requests ----------------------------------------------------------------

    def command_reached_api(self, request: Message) -> None:
        command = self._commands.get(id(request))
        if command is not None:
            command.api_called = True

    async def _answer_command(self, request: Message) -> None:
        method, uri = loggable_method_and_uri(request.payload)
        command = self._commands[id(request)] = _Command(request.id, method, uri)
        try:
            await self._send_answer(command, await self._carry_out(request))
        except asyncio.CancelledError:
            self._unanswered(command, self._reason or "the connection ended")
            raise
        finally:
            del self._commands[id(request)]

    async def _carry_out(self, request: Message) -> Message:
        # `command.maxConcurrent` is applied by the handler (the proxy queues per link).
        if self._command_handler is None:
            return not_implemented_response(request, self._clock())
        try:
            return await self._command_handler(request, self)
        except Exception:
            self._log.exception("command.failed", id=request.id)
            reason = "the daemon failed to carry out the COMMAND"
            return messages.command_error(request, 500, reason, self._clock())

    async def _answer_malformed(self, malformed: AnswerMalformedCommand) -> None:
        """A COMMAND request readable only as far as its id and type: its 400 (every
        request has exactly one response; the connection stays up)."""
        command = _Command(malformed.request_id, "", "")
        try:
            await self._send_answer(command, malformed.response)
        except asyncio.CancelledError:
            self._unanswered(command, self._reason or "the connection ended")
            raise

    async def _send_answer(self, command: _Command, response: Message) -> None:
        try:
            await self.send(response)
        except (ConnectionError, TimeoutError) as exc:
            self._unanswered(command, str(exc) or type(exc).__name__)

    def _unanswered(self, command: _Command, reason: str) -> None:
        """The app will never see this COMMAND's answer: it cannot know the outcome."""
        self._log.warning(
            "command.unanswered",
            id=command.id,
            method=command.method,
            uri=command.uri,
            api_called=command.api_called,
            reason=reason,
        )


_DELIVERY_COUNTERS: Final = {
    Counter.NOTIFICATIONS_SENT: NOTIFICATIONS_SENT,
    Counter.NOTIFICATIONS_RESENT: NOTIFICATIONS_RESENT,
    Counter.NOTIFICATIONS_ACKED: NOTIFICATIONS_ACKED,
    Counter.BATCHES_STALLED: BATCHES_STALLED,
}


def _reason_bytes(reason: str) -> bytes:
    data = reason.encode("utf-8")
    if len(data) <= _MAX_REASON_BYTES:
        return data
    return data[:_MAX_REASON_BYTES].decode("utf-8", "ignore").encode("utf-8")
