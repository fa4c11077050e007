"""One live connection's rules, sans-I/O: `GroupConnection` (spec sections 3 and 4).

Like websockets' `protocol.py`, the core is fed what happened (a text frame received,
a binary one, a ping or pong, the CONNECT request written or not in time, the clock's
`tick(now)`, the connection gone) and answers with actions for its driver
(`session.py`) to carry out: write a frame, ping, pong, carry out a COMMAND (the
proxy), go on delivering after an accepted ack, report an event, close with a code
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
  the group's `DeliveryMachine` (`deliver_with`): an ack that counts wakes delivery;
  any other response is unmatched and any other request unexpected (both logged, the
  connection stays). A timeStamp in milliseconds (the guide says seconds) is warned
  about once per connection.
- Keepalive: a ping every `keepAlive.scheduledRate`; a pong clears the count; after
  exactly `keepAlive.maxPongMissAllowed` pings in a row without one, close 1001.
- One close: the first close decided is the one, so there is one close frame and one
  reason. Frames fed after it still count; no ping is sent and no second close
  decided. (The asyncio driver feeds what aiohttp had read before its close; aiohttp
  drops later frames while it waits for the peer's close frame, so an ack on its way
  then is lost and the batch is resent on the next connection: a duplicate, never a
  loss.)
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from nbwss import messages
from nbwss.delivery import DeliveryMachine, Verdict
from nbwss.errors import CommandDecodeError, DecodeError
from nbwss.messages import Message, MessageType, SubType

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
class DeliveryProgressed:
    """A NOTIFICATION response acknowledged the batch in flight (judged here by the
    group's `DeliveryMachine`): its driver commits it and goes on at once."""


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


@dataclass(frozen=True, slots=True)
class Report:
    """An event for the log (`level`: info or warning) and, when named, a counter."""

    event: str
    level: str = "info"
    fields: Mapping[str, object] = field(default_factory=dict)
    counter: Counter | None = None


Action = (
    WriteFrame | SendPing | SendPong | CarryOutCommand | AnswerMalformedCommand
    | DeliveryProgressed | Opened | HandshakeFailed | Close | Report
)


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
        self._delivery: DeliveryMachine | None = None

    def deliver_with(self, machine: DeliveryMachine | None) -> None:
        """The group's delivery state while it delivers over this connection: NOTIFICATION
        responses are judged by it (before, they are unexpected)."""
        self._delivery = machine

    # -- the handshake -------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """The CONNECT request to write first."""
        request = messages.connect_request(self._token, now)
        self._connect_id = request.id
        return [WriteFrame(request)]

    def connect_written(self, now: float) -> list[Action]:
        """The CONNECT request is written: its answer is due within the response timeout."""
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
            actions.extend(self._judge(message))
        elif message.sub_type is SubType.RESPONSE:
            actions.append(Report("response.unmatched", "warning",
                                  {"id": message.id, "type": str(message.type)}))
        else:
            actions.append(Report("request.unexpected", "warning",
                                  {"id": message.id, "type": str(message.type)}))
        return actions

    def _judge(self, response: Message) -> list[Action]:
        machine = self._delivery
        if machine is None:
            return [Report("notification.unexpected_response", "warning", {"id": response.id})]
        verdict = machine.response_received(response)
        if verdict is Verdict.ACKNOWLEDGED:
            return [DeliveryProgressed()]
        if verdict is Verdict.DUPLICATE:
            return [Report("notification.duplicate_ack", "info", {"id": response.id})]
        return [Report("notification.response_refused", "warning",
                       {"id": response.id, "reason": str(verdict)})]

    def binary_received(self, now: float) -> list[Action]:
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

    # -- time and closing ----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When `tick` next has something to do (None: only an event can change that)."""
        if self.state is State.CONNECTING:
            return self._answer_due
        if self.state is State.OPEN:
            return self._next_ping
        return None

    def tick(self, now: float) -> list[Action]:
        """The clock moved: the CONNECT answer's deadline, or the next keepalive ping."""
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
