"""One live connection's rules, sans-I/O: `GroupConnection` (spec sections 3 and 4).

Like websockets' `protocol.py`, the core is fed what happened (a text frame received,
a binary one, a ping or pong, the CONNECT request written or not in time, the clock's
`tick(now)`, a wake-up, a delivery operation done, the connection gone) and answers
with actions for its driver (`session.py`) to carry out: write a frame, ping, pong,
carry out a COMMAND (the proxy), load the group's position, read outbox events,
persist a batch row, write a batch, commit an ack, report an event, close with a code
and reason. It imports nothing that does I/O, logs or counts: reports are actions too,
so every rule below can be tested with plain values and a fake clock.

The rules it keeps:
- CONNECT: the first frame written is the CONNECT request with the token. Its answer
  must come within `connect.responseTimeout` of the write (the guide sets no limit):
  a CONNECT RESPONSE with the same id and `valid: true` opens the connection; `valid:
  false` is a refused token (close 1008); another id, another type, a binary frame or
  an undecodable answer is a protocol error (close 1002); silence past the deadline, a
  write past `notification.sendTimeout` or the connection lost is a timeout or error
  (close 1000). Pings are answered meanwhile. Whatever fails is counted once
  (`handshakes{result}`) with the reason the supervisor records.
- Frames once open: every text frame is decoded with `message.maxBytes`. An undecodable
  frame (or a binary one) is counted; by default it closes the connection (1002, 1003
  for binary), and with `exception.ignoreDecoder=true` it is logged and skipped. A
  COMMAND request readable only as far as its id gets a 400 at once, whatever the
  policy: every request has exactly one response.
- Dispatch: a COMMAND request goes to the proxy; a NOTIFICATION response is judged by
  the group's `DeliveryMachine` (once `deliver` loaded it): an ack that counts is
  committed at once;
  any other response is unmatched and any other request unexpected (both logged, the
  connection stays). A timeStamp in milliseconds (the guide says seconds) is warned
  about once per connection.
- Keepalive: a ping every `keepAlive.scheduledRate`; a pong clears the count; after
  exactly `keepAlive.maxPongMissAllowed` pings in a row without one, close 1001.
- Delivery: the machine's steps become actions, one at a time (at most one operation
  under way: never two store calls of a group at once); its waits become
  `next_deadline()` (a resend due; an idle group has none), ended early by `wake` or
  an accepted ack. A connection never polls the outbox on its own: new rows come with
  a wake-up (`nbwss notify`'s datagram, the poller, or the daemon's one `OutboxWatch`
  should a datagram be lost), so a thousand idle groups cost no reads. Each connection
  loads the group's position from the database unless an ack is still to commit; the
  `DeliveryLedger` carries the machine (and its stall count) and the last ack from one
  connection to the next, and is held by one connection at a time (`deliver` to
  `release_delivery`).
- One close: the first close decided is the one, so there is one close frame and one
  reason. Frames fed after it still count (an ack then is still committed); no ping is
  sent, no second close decided and nothing new read or written. (The asyncio driver
  feeds what aiohttp had read before its close; aiohttp drops later frames while it
  waits for the peer's close frame, so an ack on its way then is lost and the batch is
  resent on the next connection: a duplicate, never a loss.)
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from nbwss import messages
from nbwss.delivery import (
    AckCommit,
    Batch,
    DeliveryMachine,
    EventRange,
    Send,
    Verdict,
    WaitUntil,
)
from nbwss.errors import CommandDecodeError, DecodeError
from nbwss.messages import Message, MessageType, SubType
from nbwss.values import GroupPosition, OutboxEvent, PersistedBatch

if TYPE_CHECKING:  # properties brings structlog (and asyncio): not at run time here
    from nbwss.properties import Settings

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_POLICY: Final = 1008
CLOSE_INTERNAL_ERROR: Final = 1011
PING_DATA: Final = b"nbwss"


class State(enum.StrEnum):
    CONNECTING = "connecting"  # CONNECT written or being written, its answer awaited
    OPEN = "open"
    CLOSING = "closing"  # a close was decided: frames still count until the transport ends
    CLOSED = "closed"  # the transport ended (or the handshake failed)


# -- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriteFrame:
    """Write `message` as one text frame (within `notification.sendTimeout`)."""

    message: Message


@dataclass(frozen=True, slots=True)
class SendPing:
    data: bytes = PING_DATA


@dataclass(frozen=True, slots=True)
class SendPong:
    data: bytes


@dataclass(frozen=True, slots=True)
class CarryOutCommand:
    """A COMMAND request for the proxy; its answer goes back as one frame."""

    request: Message


@dataclass(frozen=True, slots=True)
class AnswerMalformedCommand:
    """A COMMAND request readable only as far as its id: answer `response` (a 400)."""

    request_id: str
    response: Message
    reason: str


@dataclass(frozen=True, slots=True)
class LoadPosition:
    """Read the group's cursor and persisted batch (`outbox.load_position`); answer
    `position_loaded`."""

    group_id: str


@dataclass(frozen=True, slots=True)
class ReadEvents:
    """Read `range` from the outbox (`outbox.read_events`); answer `events_read`."""

    range: EventRange


@dataclass(frozen=True, slots=True)
class PersistBatch:
    """Commit the new batch's row before its first write, so a restart resends it with
    its id (`outbox.persist_batch`); answer `persist_done`."""

    group_id: str
    row: PersistedBatch


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """Write `batch.text` as one text frame within `notification.sendTimeout`;
    answer `batch_written` or `batch_write_timed_out` (a lost connection: `close`)."""

    batch: Batch
    resend: bool


@dataclass(frozen=True, slots=True)
class CommitAck:
    """Commit the acknowledgement's transaction (`outbox.acknowledge` with the next
    batch's row); answer `ack_committed`."""

    group_id: str
    commit: AckCommit


# What delivery asks of the driver: at most one of these is pending at a time.
DeliveryOperation = LoadPosition | ReadEvents | PersistBatch | WriteBatch | CommitAck


@dataclass(frozen=True, slots=True)
class Opened:
    """CONNECT was answered `valid: true`: the connection is the group's now."""


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """CONNECT failed: close with `code`; `result` is the `handshakes` label (`invalid`
    for a refused token, `timeout`, `error`) and `reason` what the supervisor records."""

    result: str
    reason: str
    code: int

    @property
    def token_refused(self) -> bool:
        return self.result == "invalid"


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection with `code` and `reason` (one close frame)."""

    code: int
    reason: str


class Counter(enum.StrEnum):
    """What the driver counts (labelled with the group and host)."""

    DECODE_ERRORS = "decode_errors"
    PONG_MISSES = "pong_misses"
    COMMANDS_400 = "commands_400"
    NOTIFICATIONS_SENT = "notifications_sent"  # these four by `amount` events
    NOTIFICATIONS_RESENT = "notifications_resent"
    NOTIFICATIONS_ACKED = "notifications_acked"
    BATCHES_STALLED = "batches_stalled"


@dataclass(frozen=True, slots=True)
class Report:
    """An event for the log (`level`: info, warning or error) and, when named, a
    counter to add `amount` to."""

    event: str
    level: str = "info"
    fields: Mapping[str, object] = field(default_factory=dict)
    counter: Counter | None = None
    amount: int = 1


Action = (
    WriteFrame | SendPing | SendPong | CarryOutCommand | AnswerMalformedCommand
    | LoadPosition | ReadEvents | PersistBatch | WriteBatch | CommitAck
    | Opened | HandshakeFailed | Close | Report
)


@dataclass(eq=False, slots=True)
class DeliveryLedger:
    """What of a group's delivery outlives each connection: its machine (for the send
    count of the batch in flight, which each connection reloads from the database, and
    an acknowledgement still to commit) and when an ack was last committed. One per
    group (`outboxes.DeliveryWiring`); status reads it.

    One connection at a time delivers with it (never two store calls of a group at
    once): `owner` is the generation of the connection that holds it, from `deliver`
    until its driver `release_delivery()`s it after its last store call ended; a second
    connection waits for that, and what a connection's operations answer once it no
    longer holds the ledger is ignored."""

    group_id: str
    machine: DeliveryMachine | None = None
    last_ack_at: float | None = None
    owner: int | None = None
    generation: int = 0


# -- the connection --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    """A read-only view of one connection, for status and tests."""

    state: State
    pong_misses: int
    close_reason: str | None


class GroupConnection:
    """The rules of one live connection to a group's endpoint; see the module docstring.

    Made with the settings the connection was dialled with: a reload reaches the next
    connection, never a live one.
    """

    def __init__(self, settings: Settings, token: str) -> None:
        self._max_bytes = settings.message_max_bytes
        self._ignore_decoder = settings.ignore_decoder
        self._send_timeout_s = settings.send_timeout_s
        self._response_timeout_s = settings.connect_response_timeout_s
        self._keepalive_s = settings.keepalive_rate_s
        self._pong_misses_allowed = settings.max_pong_misses
        self._token = token
        self.state = State.CONNECTING
        self._connect_id: str | None = None
        self._answer_due: float | None = None  # set once CONNECT is written
        self._next_ping: float | None = None
        self._awaiting_pong = False
        self._warned_milliseconds = False
        self.pong_misses = 0
        self.close_reason: str | None = None
        self._settings = settings
        self._ledger: DeliveryLedger | None = None
        self._delivery: DeliveryMachine | None = None  # judges responses once loaded
        self._operation: DeliveryOperation | None = None  # the one the driver carries out
        self._wait_due: float | None = None  # delivery waits until then (None: a wake-up)
        self._woken = False  # a wake-up or an ack came: end the next wait at once
        self._last_now: float | None = None  # the latest time fed (see `_observe`)
        self._generation = 0  # this connection's hold on the ledger (see `DeliveryLedger`)

    def _observe(self, now: float) -> None:
        """Every time fed goes through here first. `now` is wall time (timeStamps,
        `sent_at` and `last_ack_at` need it), so it can step back (NTP, a VM resumed):
        then every pending deadline moves back by the step, so that CONNECT's answer,
        the keepalive and a resend stay as far away as they were, not as far as the
        step. (A step forward only brings them early, once.)"""
        last, self._last_now = self._last_now, now
        if last is None or now >= last:
            return
        step = now - last
        self._answer_due = _moved(self._answer_due, step)
        self._next_ping = _moved(self._next_ping, step)
        self._wait_due = _moved(self._wait_due, step)
        if self._ledger is not None and self._ledger.machine is not None:
            self._ledger.machine.clock_stepped(step)

    # -- the handshake -------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """The CONNECT request to write first."""
        self._observe(now)
        request = messages.connect_request(self._token, now)
        self._connect_id = request.id
        return [WriteFrame(request)]

    def connect_written(self, now: float) -> list[Action]:
        """The CONNECT request is written: its answer is due within the response timeout."""
        self._observe(now)
        self._answer_due = now + self._response_timeout_s
        return []

    def write_timed_out(self, now: float) -> list[Action]:
        """A write did not complete within `notification.sendTimeout`. During CONNECT
        that fails the handshake; later writes are the driver's and delivery's concern."""
        if self.state is not State.CONNECTING:
            return []
        return self._fail("timeout", f"CONNECT not sent in {self._send_timeout_s * 1000:g} ms",
                          CLOSE_NORMAL)

    def connection_lost(self, why: str) -> list[Action]:
        """The transport ended (closed by the endpoint, reset, protocol error)."""
        if self.state is State.CONNECTING:
            return self._fail("error", f"connection lost during CONNECT: {why}", CLOSE_NORMAL)
        self.state, self.close_reason = State.CLOSED, self.close_reason or why
        return []

    def _connect_answer(self, text: str, now: float) -> list[Action]:
        try:
            answer = messages.decode(text, self._max_bytes)
            if answer.type is not MessageType.CONNECT or answer.is_request:
                raise DecodeError(f"expected a CONNECT RESPONSE, got {answer.type} "
                                  f"{answer.sub_type}")
        except DecodeError as exc:
            return self._fail("error", f"malformed CONNECT response: {exc}", CLOSE_PROTOCOL_ERROR)
        if answer.id != self._connect_id:
            return self._fail("error", "CONNECT response has another id", CLOSE_PROTOCOL_ERROR)
        try:
            valid = messages.connect_valid(answer)
        except DecodeError as exc:
            return self._fail("error", f"malformed CONNECT response: {exc}", CLOSE_PROTOCOL_ERROR)
        if not valid:
            return self._fail("invalid", "the endpoint refused the token", CLOSE_POLICY)
        self.state, self._answer_due = State.OPEN, None
        self._next_ping = now + self._keepalive_s
        return [Opened()]

    def _fail(self, result: str, reason: str, code: int) -> list[Action]:
        self.state, self.close_reason, self._answer_due = State.CLOSED, reason, None
        return [HandshakeFailed(result, reason, code)]

    # -- frames --------------------------------------------------------------------------

    def text_received(self, text: str, now: float) -> list[Action]:
        self._observe(now)
        if self.state is State.CONNECTING:
            return self._connect_answer(text, now)
        if self.state is State.CLOSED:
            return []  # OPEN or CLOSING: what arrives still counts
        try:
            message = messages.decode(text, self._max_bytes)
        except CommandDecodeError as exc:
            return self._malformed_command(exc, now)
        except DecodeError as exc:
            return self._bad_frame(str(exc), CLOSE_PROTOCOL_ERROR)
        actions: list[Action] = self._check_time_stamp(message)
        if message.type is MessageType.COMMAND and message.is_request:
            actions.append(CarryOutCommand(message))
        elif message.type is MessageType.NOTIFICATION and not message.is_request:
            actions.extend(self._judge(message, now))
        elif message.sub_type is SubType.RESPONSE:
            actions.append(Report("response.unmatched", "warning",
                                  {"id": message.id, "type": str(message.type)}))
        else:
            actions.append(Report("request.unexpected", "warning",
                                  {"id": message.id, "type": str(message.type)}))
        return actions

    def _judge(self, response: Message, now: float) -> list[Action]:
        machine = self._delivery
        if machine is None:
            return [Report("notification.unexpected_response", "warning", {"id": response.id})]
        verdict = machine.response_received(response)
        if verdict is Verdict.ACKNOWLEDGED:
            return self.wake(now)  # commit it and go on at once
        if verdict is Verdict.DUPLICATE:
            return [Report("notification.duplicate_ack", "info", {"id": response.id})]
        return [Report("notification.response_refused", "warning",
                       {"id": response.id, "reason": str(verdict)})]

    def binary_received(self, now: float) -> list[Action]:
        self._observe(now)
        why = "a binary frame is not a message"
        if self.state is State.CONNECTING:
            return self._fail("error", f"malformed CONNECT response: {why}", CLOSE_PROTOCOL_ERROR)
        if self.state is State.CLOSED:
            return []
        return self._bad_frame(why, CLOSE_UNSUPPORTED_DATA)

    def ping_received(self, data: bytes) -> list[Action]:
        return [] if self.state is State.CLOSED else [SendPong(data)]

    def pong_received(self) -> list[Action]:
        self._awaiting_pong, self.pong_misses = False, 0
        return []

    def _malformed_command(self, error: CommandDecodeError, now: float) -> list[Action]:
        reason = str(error)
        response = messages.command_error_to(error.message_id, 400, reason, now)
        return [
            Report("command.done", "warning",
                   {"id": error.message_id, "status": 400, "reason": reason},
                   Counter.COMMANDS_400),
            AnswerMalformedCommand(error.message_id, response, reason),
        ]

    def _bad_frame(self, why: str, code: int) -> list[Action]:
        if self._ignore_decoder:
            return [Report("frame.ignored", "warning", {"reason": why}, Counter.DECODE_ERRORS)]
        return [
            Report("frame.rejected", "warning", {"reason": why}, Counter.DECODE_ERRORS),
            *self.close(code, f"undecodable frame: {why}"),
        ]

    def _check_time_stamp(self, message: Message) -> list[Action]:
        if self._warned_milliseconds or not messages.in_milliseconds(message.time_stamp):
            return []
        self._warned_milliseconds = True
        return [Report("message.timestamp_milliseconds", "warning", {
            "id": message.id, "type": str(message.type), "time_stamp": message.time_stamp,
        })]

    # -- delivery: its steps as actions, one at a time -----------------------------------

    def deliver(self, ledger: DeliveryLedger, now: float) -> list[Action]:
        """Deliver the group's outbox over this (open) connection from now on.

        Each connection starts from what the database says (the batch in flight is
        persisted, so it comes back as the same message): a group deleted and added
        again meanwhile starts at its new cursor. Only an acknowledgement still to commit
        keeps the machine, with this connection's caps.

        The ledger must be free (`DeliveryLedger.owner`): the driver waits for the
        group's previous connection to release it."""
        self._observe(now)
        if ledger.owner is not None:
            raise RuntimeError(f"group {ledger.group_id}: another connection delivers")
        ledger.generation += 1
        self._generation = ledger.owner = ledger.generation
        self._ledger = ledger
        if self.state is not State.OPEN:
            return []
        machine = ledger.machine
        if machine is None or machine.awaiting_commit is None:
            return self._begin(LoadPosition(ledger.group_id))
        self._configure(machine)
        return self._delivering(machine, now)

    def release_delivery(self) -> None:
        """The driver has no delivery operation under way any more, and starts none: the
        group's next connection may deliver (idempotent)."""
        self._operation = None
        if self._ledger is not None and self._ledger.owner == self._generation:
            self._ledger.owner = None

    def _answered(self) -> bool:
        """An operation answered: whether its outcome is this connection's to apply (it
        still holds the ledger; otherwise it is ignored, and nothing follows)."""
        self._operation = None
        return self._ledger is not None and self._ledger.owner == self._generation

    def position_loaded(self, position: GroupPosition, now: float) -> list[Action]:
        """The answer to `LoadPosition`: the machine starts from it, keeping the send
        count of the batch in flight before (`DeliveryMachine.carry_over`)."""
        self._observe(now)
        if not self._answered():
            return []
        assert self._ledger is not None
        settings = self._settings
        machine = DeliveryMachine(
            group_id=self._ledger.group_id,
            max_batch=settings.notification_max_batch,
            max_bytes=settings.message_max_bytes,
            rate_s=settings.notification_rate_s,
            stall_after=settings.notification_stall_after_sends,
            acked_seq=position.acked_seq,
            restored=position.outstanding,
            legacy_up_to_seq=position.legacy_up_to_seq,
        )
        machine.carry_over(self._ledger.machine)
        self._ledger.machine = machine
        return self._delivering(machine, now)

    def _configure(self, machine: DeliveryMachine) -> None:
        settings = self._settings
        machine.max_batch = settings.notification_max_batch
        machine.max_bytes = settings.message_max_bytes
        machine.rate_s = settings.notification_rate_s
        machine.stall_after = settings.notification_stall_after_sends

    def _delivering(self, machine: DeliveryMachine, now: float) -> list[Action]:
        machine.connection_opened(now)
        self._delivery = machine  # from now on, responses are judged by it
        return self._advance(now)

    def events_read(self, events: list[OutboxEvent], now: float, message_id: str) -> list[Action]:
        """The answer to `ReadEvents`; `message_id` names a batch built from them."""
        self._observe(now)
        if not self._answered():
            return []
        if self._delivery is not None:
            self._delivery.events_read(events, now, message_id)
        return self._advance(now)

    def persist_done(self, message_id: str, now: float) -> list[Action]:
        """The answer to `PersistBatch`: the row is committed."""
        self._observe(now)
        if not self._answered():
            return []
        if self._delivery is not None:
            self._delivery.persist_done(message_id)
        return self._advance(now)

    def batch_written(self, now: float) -> list[Action]:
        """The answer to `WriteBatch`: the frame was written."""
        self._observe(now)
        write = self._operation
        if not self._answered():
            return []
        machine = self._delivery
        if not isinstance(write, WriteBatch) or machine is None:
            return self._advance(now)
        batch = write.batch
        stall = machine.write_done(batch.id, now)
        counter = Counter.NOTIFICATIONS_RESENT if write.resend else Counter.NOTIFICATIONS_SENT
        event = "notification.resent" if write.resend else "notification.sent"
        actions: list[Action] = [Report(event, "info", _batch_fields(batch), counter, batch.count)]
        if stall is not None:
            actions.append(Report("notification.stalled", "error",
                                  {**_batch_fields(batch), "sends": stall.sends},
                                  Counter.BATCHES_STALLED))
        return [*actions, *self._advance(now)]

    def batch_write_timed_out(self, now: float) -> list[Action]:
        """The answer to `WriteBatch` past `notification.sendTimeout`: it counts as not
        sent (the machine writes it again after `notification.rate`)."""
        self._observe(now)
        write = self._operation
        if not self._answered():
            return []
        if not isinstance(write, WriteBatch) or self._delivery is None:
            return self._advance(now)
        self._delivery.write_timed_out(write.batch.id, now)
        report = Report("notification.send_timeout", "warning", _batch_fields(write.batch))
        return [report, *self._advance(now)]

    def batch_write_failed(self, now: float, why: str) -> list[Action]:
        """The answer to `WriteBatch` when the connection failed under it: not sent (the
        next connection sends it again), and this one closes."""
        self._observe(now)
        write = self._operation
        if self._answered() and isinstance(write, WriteBatch) and self._delivery is not None:
            self._delivery.write_timed_out(write.batch.id, now)
        return self.close(CLOSE_GOING_AWAY, f"delivery stopped: {why}")

    def operation_failed(self) -> list[Action]:
        """A store call failed (the driver logs why): the connection closes, and the
        group's next connection starts again from the database."""
        self._operation = None
        return self.close(CLOSE_INTERNAL_ERROR, "delivery failed")

    def ack_committed(self, commit: AckCommit, now: float, cursor: int | None) -> list[Action]:
        """The answer to `CommitAck`: the cursor moved (to `cursor`, what the transaction
        left: see `DeliveryMachine.commit_done`)."""
        self._observe(now)
        if not self._answered():
            return []
        if self._delivery is not None:
            self._delivery.commit_done(commit, now, cursor)
        if self._ledger is not None:
            self._ledger.last_ack_at = now
        batch = commit.acknowledged
        report = Report("notification.acked", "info", _batch_fields(batch),
                        Counter.NOTIFICATIONS_ACKED, batch.count)
        return [report, *self._advance(now)]

    def wake(self, now: float) -> list[Action]:
        """New outbox rows may be committed (`nbwss notify`, the poller, the outbox
        watch), or an ack came: the wait ends now, or, with an operation under way (or
        the position not loaded yet), the next wait ends at once."""
        self._observe(now)
        machine = self._delivery
        if machine is None or self._operation is not None:
            self._woken = True
            return self._advance(now)
        self._wait_due = None
        machine.waited()
        return self._advance(now)

    def _begin(self, operation: DeliveryOperation) -> list[Action]:
        self._operation, self._wait_due = operation, None
        return [operation]

    def _advance(self, now: float) -> list[Action]:
        """The machine's next step as an action, unless one is under way; or the time
        to look again. Once closing, only an acknowledgement is still committed."""
        machine = self._delivery
        if machine is None or self._operation is not None or self.state is State.CLOSED:
            return []
        if self.state is State.CLOSING:  # an ack judged still commits; nothing else starts
            if machine.awaiting_commit is None:
                return []
            return self._begin(CommitAck(machine.group_id, machine.ack_commit(now)))
        while True:
            step = machine.next_step(now)
            if isinstance(step, AckCommit):
                return self._begin(CommitAck(machine.group_id, step))
            if isinstance(step, EventRange):
                self._woken = False  # the read sees whatever the wake-up announced
                return self._begin(ReadEvents(step))
            if isinstance(step, Send):
                return self._write(step, machine)
            if not isinstance(step, WaitUntil):
                return self._begin(PersistBatch(machine.group_id, step))
            if not self._woken:
                self._wait_due = step.deadline  # a resend due, or None: until woken
                return []
            # Consumed: a wake-up ends one wait, never every wait after it.
            self._woken = False
            machine.waited()

    def _write(self, send: Send, machine: DeliveryMachine) -> list[Action]:
        batch = send.batch
        actions: list[Action] = []
        if batch.oversized:
            actions.append(Report("notification.oversized", "warning", {
                "id": batch.id, "size_bytes": batch.size_bytes, "max_bytes": machine.max_bytes,
                "first_seq": batch.first_seq,
            }))
        return [*actions, *self._begin(WriteBatch(batch, send.resend))]

    def _delivery_tick(self, now: float) -> list[Action]:
        if self._wait_due is None or now < self._wait_due or self._delivery is None:
            return []
        self._wait_due = None
        self._delivery.waited()  # the deadline: a resend due
        return self._advance(now)

    # -- time and closing ----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When `tick` next has something to do (None: only an event can change that)."""
        if self.state is State.CONNECTING:
            return self._answer_due
        if self.state is State.OPEN:
            return _earliest(self._next_ping, self._wait_due)
        return None

    def tick(self, now: float) -> list[Action]:
        """The clock moved: the CONNECT answer's deadline, the next keepalive ping, or
        a resend due."""
        self._observe(now)
        if self.state is not State.OPEN:
            return self._keepalive_tick(now)
        return [*self._keepalive_tick(now), *self._delivery_tick(now)]

    def _keepalive_tick(self, now: float) -> list[Action]:
        if self.state is State.CONNECTING:
            if self._answer_due is None or now < self._answer_due:
                return []
            why = f"no CONNECT response in {self._response_timeout_s:g} s (connect.responseTimeout)"
            return self._fail("timeout", why, CLOSE_NORMAL)
        if self.state is not State.OPEN or self._next_ping is None or now < self._next_ping:
            return []
        self._next_ping = now + self._keepalive_s
        actions: list[Action] = []
        if self._awaiting_pong:
            self.pong_misses += 1
            allowed = self._pong_misses_allowed
            actions.append(Report("keepalive.pong_missed", "info",
                                  {"misses": self.pong_misses, "allowed": allowed},
                                  Counter.PONG_MISSES))
            if self.pong_misses >= allowed:
                return [*actions, *self.close(CLOSE_GOING_AWAY, f"no pong for {allowed} pings")]
        self._awaiting_pong = True
        return [*actions, SendPing()]

    def close(self, code: int, reason: str) -> list[Action]:
        """Decide to close (the first decision stands; later ones are no-ops)."""
        if self.state in (State.CLOSING, State.CLOSED):
            return []
        self.state, self.close_reason = State.CLOSING, reason
        return [Close(code, reason)]

    def status(self) -> ConnectionStatus:
        return ConnectionStatus(self.state, self.pong_misses, self.close_reason)


def _earliest(first: float | None, second: float | None) -> float | None:
    if first is None:
        return second
    return first if second is None else min(first, second)


def _moved(deadline: float | None, step: float) -> float | None:
    return None if deadline is None else deadline + step


def _batch_fields(batch: Batch) -> dict[str, object]:
    return {"id": batch.id, "count": batch.count, "first_seq": batch.first_seq,
            "last_seq": batch.last_seq}
