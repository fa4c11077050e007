"""`GroupConnection`, the sans-I/O rules of one live connection: plain values, a fake
clock, no socket, no event loop."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbwss.delivery import Batch, DeliveryMachine, EventRange
from nbwss.messages import Message, MessageType, SubType, encode, request, response_to
from nbwss.notifications import repeated_objects
from nbwss.properties import Settings
from nbwss.protocol import (
    Action,
    AnswerMalformedCommand,
    CarryOutCommand,
    Close,
    CommitAck,
    Counter,
    DeliveryLedger,
    GroupConnection,
    HandshakeFailed,
    LoadPosition,
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
from nbwss.values import GroupPosition, OutboxEvent, PersistedBatch
from tests.test_delivery import ack, events, seqs_in

T0 = 1_700_000_000.0
TOKEN = "token-of-the-endpoint=="
RULES = Settings(send_timeout_s=2.0, connect_response_timeout_s=30.0, keepalive_rate_s=10.0,
                 max_pong_misses=3)


def connecting(rules: Settings = RULES) -> tuple[GroupConnection, Message]:
    """A connection whose CONNECT request is written at T0."""
    connection = GroupConnection(rules, TOKEN)
    [write] = connection.start(T0)
    assert isinstance(write, WriteFrame)
    assert connection.connect_written(T0) == []
    return connection, write.message


def answer(connect: Message, valid: Any = True, **changes: Any) -> str:
    document = json.loads(encode(response_to(connect, {"valid": valid}, T0)))
    return json.dumps(document | changes)


def opened(rules: Settings = RULES) -> GroupConnection:
    connection, connect = connecting(rules)
    assert connection.text_received(answer(connect), T0 + 1) == [Opened()]
    return connection


def text(message: Message) -> str:
    return encode(message)


def closes(actions: list[Action]) -> list[Close]:
    return [action for action in actions if isinstance(action, Close)]


# -- CONNECT ---------------------------------------------------------------------------------


def test_connect_carries_the_token_and_a_valid_answer_opens() -> None:
    connection, connect = connecting()
    assert (connect.type, connect.sub_type, connect.payload) == (
        MessageType.CONNECT, SubType.REQUEST, {"token": TOKEN})
    assert connection.next_deadline() == T0 + 30.0
    assert connection.ping_received(b"x") == [SendPong(b"x")]  # answered meanwhile
    assert connection.text_received(answer(connect), T0 + 1) == [Opened()]
    assert connection.state is State.OPEN


@pytest.mark.parametrize(("make", "result", "code", "reason"), [
    (lambda c: answer(c, valid=False), "invalid", 1008, "the endpoint refused the token"),
    (lambda c: answer(c, id="OTHER"), "error", 1002, "CONNECT response has another id"),
    (lambda c: answer(c, valid="yes"), "error", 1002, "malformed CONNECT response: "),
    (lambda c: "{not json", "error", 1002, "malformed CONNECT response: "),
    (lambda c: answer(c, type="COMMAND"), "error", 1002,
     "malformed CONNECT response: expected a CONNECT RESPONSE"),
])
def test_a_connect_answer_that_is_not_valid_fails_the_handshake(
    make: Any, result: str, code: int, reason: str
) -> None:
    connection, connect = connecting()
    [failed] = connection.text_received(make(connect), T0 + 1)
    assert isinstance(failed, HandshakeFailed)
    assert (failed.result, failed.code) == (result, code)
    assert failed.reason.startswith(reason)
    assert failed.token_refused is (result == "invalid")
    assert connection.state is State.CLOSED
    assert connection.text_received(answer(connect), T0 + 2) == []  # decided once


def test_no_answer_within_the_response_timeout_fails_at_the_deadline() -> None:
    connection, _ = connecting()
    assert connection.tick(T0 + 29.9) == []
    assert connection.tick(T0 + 30.0) == [HandshakeFailed(
        "timeout", "no CONNECT response in 30 s (connect.responseTimeout)", 1000)]


def test_a_connect_not_written_in_time_or_a_lost_connection_fails() -> None:
    connection = GroupConnection(RULES, TOKEN)
    connection.start(T0)
    assert connection.write_timed_out(T0 + 2) == [
        HandshakeFailed("timeout", "CONNECT not sent in 2000 ms", 1000)]
    lost, _ = connecting()
    [failed] = lost.connection_lost("reset")
    assert failed == HandshakeFailed("error", "connection lost during CONNECT: reset", 1000)


def test_a_binary_answer_is_a_protocol_error() -> None:
    connection, _ = connecting()
    [failed] = connection.binary_received(T0)
    assert isinstance(failed, HandshakeFailed)
    assert (failed.result, failed.code) == ("error", 1002)


# -- frames once open ------------------------------------------------------------------------


def test_commands_go_to_the_proxy_and_notification_responses_to_delivery() -> None:
    connection = opened()
    command = request(MessageType.COMMAND, {"method": "GET", "uri": "/x"}, T0)
    assert connection.text_received(text(command), T0) == [CarryOutCommand(command)]
    ack = Message("M1", MessageType.NOTIFICATION, SubType.RESPONSE, int(T0), [])
    [unexpected] = connection.text_received(text(ack), T0)  # no delivery on it yet
    assert isinstance(unexpected, Report)
    assert unexpected.event == "notification.unexpected_response"


def test_other_messages_are_logged_and_the_connection_stays() -> None:
    connection = opened()
    stray = Message("C1", MessageType.COMMAND, SubType.RESPONSE, int(T0), {})
    [report] = connection.text_received(text(stray), T0)
    assert isinstance(report, Report)
    assert report.event == "response.unmatched"
    unexpected = request(MessageType.NOTIFICATION, [], T0)
    [report] = connection.text_received(text(unexpected), T0)
    assert isinstance(report, Report)
    assert report.event == "request.unexpected"
    assert connection.state is State.OPEN


def test_an_undecodable_frame_closes_by_default() -> None:
    connection = opened()
    delivery, batch = in_flight(connection)
    report, close = connection.text_received("{garbage", T0)
    assert isinstance(report, Report)
    assert (report.event, report.counter) == ("frame.rejected", Counter.DECODE_ERRORS)
    assert isinstance(close, Close)
    assert close.code == 1002
    assert close.reason.startswith("undecodable frame: ")
    assert closes(connection.binary_received(T0)) == []  # one close, one reason
    assert commits(connection.text_received(text(ack(batch)), T0))  # still counts
    assert delivery.awaiting_commit is not None
    connection.connection_lost("closed by the endpoint (code 1002)")
    assert connection.text_received(text(ack(batch)), T0) == []


def test_with_ignore_decoder_bad_frames_are_counted_and_skipped() -> None:
    connection = opened(Settings(ignore_decoder=True))
    [report] = connection.binary_received(T0)
    assert isinstance(report, Report)
    assert (report.event, report.counter) == ("frame.ignored", Counter.DECODE_ERRORS)
    assert connection.state is State.OPEN


@pytest.mark.parametrize("ignore_decoder", [False, True])
def test_a_command_readable_only_as_far_as_its_id_gets_a_400(ignore_decoder: bool) -> None:
    connection = opened(Settings(ignore_decoder=ignore_decoder))
    frame = json.dumps({"id": "C7", "type": "COMMAND", "subType": "REQUEST",
                        "timeStamp": int(T0), "payload": "not an object"})
    report, answer_400 = connection.text_received(frame, T0)
    assert isinstance(report, Report)
    assert report.counter is Counter.COMMANDS_400
    assert isinstance(answer_400, AnswerMalformedCommand)
    assert answer_400.response.id == "C7"
    assert isinstance(answer_400.response.payload, dict)
    assert answer_400.response.payload["responseCode"] == 400
    assert connection.state is State.OPEN


def test_a_time_stamp_in_milliseconds_is_warned_about_once() -> None:
    connection = opened()
    _, batch = in_flight(connection)
    late = dataclasses.replace(ack(batch), time_stamp=int(T0 * 1000))
    warned, delivered = connection.text_received(text(late), T0)
    assert isinstance(warned, Report)
    assert warned.event == "message.timestamp_milliseconds"
    assert isinstance(delivered, CommitAck)
    [duplicate] = connection.text_received(text(late), T0)
    assert isinstance(duplicate, Report)
    assert duplicate.event == "notification.duplicate_ack"


class Database:
    """The outbox, the cursor and the batch row in memory; answers the core's delivery
    operations at once, as the driver does, or holds one (`hold`) to answer it later
    (`answer_held`), and records what was written."""

    def __init__(self, rows: list[OutboxEvent]) -> None:
        self.rows = rows
        self.acked_seq = 0
        self.batch_row: PersistedBatch | None = None
        self.written: list[Message] = []
        self.committed: set[str] = set()  # ids of the batches whose ack is committed
        self._ids: Iterator[str] = (f"ID-{n}" for n in itertools.count())
        self.held: tuple[GroupConnection, Action] | None = None  # an operation under way

    def read(self, wanted: EventRange) -> list[OutboxEvent]:
        ceiling = wanted.up_to_seq if wanted.up_to_seq is not None else 1 << 62
        return [e for e in self.rows if wanted.after_seq < e.seq <= ceiling][: wanted.limit]

    def position(self) -> GroupPosition:
        """As `outbox.load_position` reads it: the batch row while it is unacknowledged."""
        row = self.batch_row
        return GroupPosition(self.acked_seq, row if row and row.last_seq > self.acked_seq else None)

    def carry_out(
        self, connection: GroupConnection, actions: list[Action], now: float,
        *, write_times_out: bool = False, acked_before_written: bool = False,
        hold: bool = False,
    ) -> list[Action]:
        """Answer every delivery operation (and those they lead to), but hold the first
        one with `hold`; the other actions.
        `acked_before_written`: the endpoint's ack of a batch arrives before its write is
        known to be complete (the frame went out, the driver still awaited the drain)."""
        rest: list[Action] = []
        todo = list(actions)
        while todo:
            action = todo.pop(0)
            if isinstance(action, DELIVERY_OPERATIONS):  # one at a time:
                assert not any(isinstance(a, DELIVERY_OPERATIONS) for a in todo)
                assert self.held is None  # never beside one under way
                if hold:
                    self.held, hold = (connection, action), False
                    continue
            if isinstance(action, LoadPosition):
                todo += connection.position_loaded(self.position(), now)
            elif isinstance(action, ReadEvents):
                todo += connection.events_read(self.read(action.range), now, next(self._ids))
            elif isinstance(action, PersistBatch):
                self.batch_row = action.row
                todo += connection.persist_done(action.row.message_id, now)
            elif isinstance(action, WriteBatch):
                assert self.batch_row == action.batch.persisted()  # never before its row
                if write_times_out:
                    todo += connection.batch_write_timed_out(now)
                elif acked_before_written:
                    self.written.append(action.batch.message)
                    ack_first = response_to(action.batch.message, [], now)
                    todo += connection.text_received(encode(ack_first), now)
                    todo += connection.batch_written(now)
                else:
                    self.written.append(action.batch.message)
                    todo += connection.batch_written(now)
            elif isinstance(action, CommitAck):
                commit = action.commit  # one transaction: the cursor and the next row
                self.acked_seq, self.batch_row = commit.last_seq, commit.next_row
                self.committed.add(commit.acknowledged.id)
                todo += connection.ack_committed(commit, now, commit.last_seq)
            else:
                rest.append(action)
        return rest


    def answer_held(self, now: float, **how: bool) -> list[Action]:
        """The operation held ends now: answered to the connection that asked for it."""
        if self.held is None:
            return []
        (connection, action), self.held = self.held, None
        return self.carry_out(connection, [action], now, **how)


DELIVERY_OPERATIONS = (LoadPosition, ReadEvents, PersistBatch, WriteBatch, CommitAck)


def commits(actions: list[Action]) -> list[CommitAck]:
    return [action for action in actions if isinstance(action, CommitAck)]


def in_flight(connection: GroupConnection) -> tuple[DeliveryMachine, Batch]:
    """The group delivers over `connection` and has one batch written, its ack awaited."""
    ledger = DeliveryLedger("G1")
    db = Database(events("JOB"))
    db.carry_out(connection, connection.deliver(ledger, T0), T0)
    assert ledger.machine is not None
    assert ledger.machine.outstanding is not None
    [written] = db.written
    assert ledger.machine.outstanding.message == written
    return ledger.machine, ledger.machine.outstanding


def test_delivery_steps_are_actions_one_at_a_time() -> None:
    connection = opened()
    ledger = DeliveryLedger("G1")
    [load] = connection.deliver(ledger, T0)
    assert load == LoadPosition("G1")
    assert connection.text_received(text(Message(
        "M1", MessageType.NOTIFICATION, SubType.RESPONSE, int(T0), [])), T0)[0] == Report(
        "notification.unexpected_response", "warning", {"id": "M1"})  # not loaded yet
    [read] = connection.position_loaded(GroupPosition(0, None), T0)
    assert read == ReadEvents(EventRange(0, 500))
    [persist] = connection.events_read(events("JOB"), T0, "ID-1")
    assert persist == PersistBatch("G1", PersistedBatch("ID-1", 1, 1, T0))
    [write] = connection.persist_done("ID-1", T0)
    assert isinstance(write, WriteBatch)
    assert (write.batch.id, write.resend) == ("ID-1", False)
    sent, read_ahead = connection.batch_written(T0)
    assert isinstance(sent, Report)
    assert (sent.event, sent.counter, sent.amount) == (
        "notification.sent", Counter.NOTIFICATIONS_SENT, 1)
    assert read_ahead == ReadEvents(EventRange(1, 500, ahead=True))
    assert connection.events_read([], T0, "ID-2") == []
    # Waiting: a resend is due after `notification.rate` (5 s), before the ping (T0 + 11).
    assert connection.next_deadline() == T0 + 5.0
    [commit] = connection.text_received(text(ack(write.batch)), T0 + 2)
    assert isinstance(commit, CommitAck)
    acked, read = connection.ack_committed(commit.commit, T0 + 2, cursor=1)
    assert isinstance(acked, Report)
    assert (acked.event, acked.amount, acked.fields["last_seq"]) == ("notification.acked", 1, 1)
    assert ledger.last_ack_at == T0 + 2
    assert read == ReadEvents(EventRange(1, 500))
    # The ack ended the wait: once read after the cursor moved, delivery waits again.
    assert connection.events_read([], T0 + 2, "ID-3") == []


def test_an_idle_group_waits_for_a_wake_up_and_never_polls_the_outbox() -> None:
    """No per-connection poll: with nothing in flight, only a wake-up (a datagram, the
    poller, the daemon's one outbox watch) reads the outbox again."""
    rules = Settings(keepalive_rate_s=1000.0, notification_rate_s=5.0)
    connection = opened(rules)
    db = Database([])
    opened_at = T0 + 1  # the time never goes back (that would be a clock step)
    assert db.carry_out(connection, connection.deliver(DeliveryLedger("G1"), opened_at),
                        opened_at) == []
    assert connection.next_deadline() == T0 + 1001.0  # the ping only: no poll every rate
    assert connection.tick(T0 + 5.0) == []
    assert connection.tick(T0 + 500.0) == []
    assert connection.wake(T0 + 600) == [ReadEvents(EventRange(0, 500))]
    # A wake-up during a read may announce rows the read missed: it ends the next wait.
    assert connection.wake(T0 + 600.1) == []
    assert connection.events_read([], T0 + 600.2, "ID-1") == [ReadEvents(EventRange(0, 500))]
    assert connection.events_read([], T0 + 600.3, "ID-2") == []  # consumed: once only
    assert connection.next_deadline() == T0 + 1001.0
    assert connection.wake(T0 + 601) == [ReadEvents(EventRange(0, 500))]


def test_a_wake_up_before_the_position_is_loaded_is_answered_by_the_first_read() -> None:
    connection = opened(Settings(keepalive_rate_s=1000.0, notification_rate_s=5.0))
    now = T0 + 1  # when it opened: the time never goes back (that would be a clock step)
    [load] = connection.deliver(DeliveryLedger("G1"), now)
    assert load == LoadPosition("G1")
    assert connection.wake(now) == []  # rows committed while the position is read
    assert connection.position_loaded(GroupPosition(0, None), now) == [
        ReadEvents(EventRange(0, 500))]  # begun after the wake-up: it sees those rows
    assert connection.events_read([], now, "ID-1") == []  # so the wake-up is spent
    assert connection.next_deadline() == T0 + 1001.0


def test_a_wake_up_during_a_write_is_answered_by_the_read_that_follows_it() -> None:
    connection = opened(Settings(keepalive_rate_s=1000.0, notification_rate_s=5.0))
    [_load] = connection.deliver(DeliveryLedger("G1"), T0)
    [_read] = connection.position_loaded(GroupPosition(0, None), T0)
    [_persist] = connection.events_read(events("JOB"), T0, "ID-1")
    [_write] = connection.persist_done("ID-1", T0)
    assert connection.wake(T0) == []  # the write is under way
    _sent, read_ahead = connection.batch_written(T0)
    assert read_ahead == ReadEvents(EventRange(1, 500, ahead=True))
    assert connection.events_read([], T0, "ID-2") == []  # that read answered the wake-up
    assert connection.next_deadline() == T0 + 5.0


def test_a_wake_up_with_nothing_to_read_ends_one_wait_only() -> None:
    """The next batch is read ahead and the ack awaited: a wake-up has nothing to read,
    and the connection waits on for the resend (a driver that saw the wait end again
    and again would spin and starve the reader of the ack)."""
    rules = Settings(keepalive_rate_s=1000.0, notification_rate_s=5.0, notification_max_batch=1)
    connection = opened(rules)
    db = Database(events("JOB", "JOB"))
    db.carry_out(connection, connection.deliver(DeliveryLedger("G1"), T0), T0)
    assert len(db.written) == 1  # the second is prepared, not sent
    assert connection.next_deadline() == T0 + 5.0
    assert connection.wake(T0 + 1) == []
    assert connection.next_deadline() == T0 + 5.0
    assert connection.tick(T0 + 1) == []
    assert connection.wake(T0 + 2) == []
    assert connection.next_deadline() == T0 + 5.0


def test_a_write_past_the_send_timeout_counts_as_not_sent_and_goes_after_the_rate() -> None:
    rules = Settings(keepalive_rate_s=1000.0, notification_rate_s=5.0)
    connection = opened(rules)
    db = Database(events("JOB"))
    actions = db.carry_out(connection, connection.deliver(DeliveryLedger("G1"), T0), T0,
                           write_times_out=True)
    assert [a.event for a in actions if isinstance(a, Report)] == ["notification.send_timeout"]
    assert db.written == []
    assert connection.next_deadline() == T0 + 5.0
    actions = db.carry_out(connection, connection.tick(T0 + 5.0), T0 + 5.0)
    assert [a.event for a in actions if isinstance(a, Report)] == ["notification.sent"]
    assert len(db.written) == 1


def test_a_write_lost_with_the_connection_counts_as_not_sent_and_closes() -> None:
    connection = opened(Settings(keepalive_rate_s=1000.0))
    ledger = DeliveryLedger("G1")
    [_load] = connection.deliver(ledger, T0)
    [_read] = connection.position_loaded(GroupPosition(0, None), T0)
    [_persist] = connection.events_read(events("JOB"), T0, "ID-1")
    [_write] = connection.persist_done("ID-1", T0)
    assert connection.batch_write_failed(T0, "reset") == [Close(1001, "delivery stopped: reset")]
    assert ledger.machine is not None
    assert ledger.machine.sends == 0
    failed_store = opened()
    failed_store.deliver(DeliveryLedger("G1"), T0)
    assert failed_store.operation_failed() == [Close(1011, "delivery failed")]


def test_no_delivery_operation_once_the_connection_closes() -> None:
    connection = opened()
    ledger = DeliveryLedger("G1")
    assert connection.deliver(ledger, T0) == [LoadPosition("G1")]
    connection.close(1000, "asked")
    assert connection.position_loaded(GroupPosition(0, None), T0) == []  # told, not acted on
    assert ledger.machine is not None
    closing = opened()
    closing.close(1000, "asked")
    assert closing.deliver(DeliveryLedger("G1"), T0) == []  # nothing starts once closing


def test_responses_are_judged_by_the_groups_delivery() -> None:
    connection = opened()
    delivery, batch = in_flight(connection)
    [wrong] = connection.text_received(text(dataclasses.replace(ack(batch), id="OTHER")), T0)
    assert isinstance(wrong, Report)
    assert (wrong.event, wrong.level, wrong.fields["reason"]) == (
        "notification.response_refused", "warning", "wrong_id"
    )
    assert delivery.awaiting_commit is None
    assert commits(connection.text_received(text(ack(batch)), T0))
    assert delivery.awaiting_commit is not None


# -- keepalive -------------------------------------------------------------------------------


def test_pings_every_rate_and_closes_after_exactly_the_allowed_misses() -> None:
    connection = opened()  # open at T0 + 1: pings at T0 + 11, 21, ...
    assert connection.next_deadline() == T0 + 11
    assert connection.tick(T0 + 10.9) == []
    assert connection.tick(T0 + 11) == [SendPing()]
    for misses in (1, 2):
        missed, ping = connection.tick(T0 + 11 + 10 * misses)
        assert isinstance(missed, Report)
        assert (missed.event, missed.fields["misses"]) == ("keepalive.pong_missed", misses)
        assert ping == SendPing()
    missed, close = connection.tick(T0 + 41)
    assert close == Close(1001, "no pong for 3 pings")
    assert connection.tick(T0 + 51) == []


def test_a_pong_clears_the_misses() -> None:
    connection = opened()
    connection.tick(T0 + 11)
    connection.tick(T0 + 21)
    assert connection.pong_misses == 1
    connection.pong_received()
    assert connection.pong_misses == 0
    assert connection.tick(T0 + 31) == [SendPing()]


def test_one_connection_at_a_time_delivers_with_a_groups_ledger() -> None:
    ledger = DeliveryLedger("G1")
    first, second = opened(), opened()
    assert first.deliver(ledger, T0) == [LoadPosition("G1")]
    with pytest.raises(RuntimeError, match="another connection delivers"):
        second.deliver(ledger, T0)  # the driver waits for the release instead
    first.connection_lost("gone")
    first.release_delivery()
    assert second.deliver(ledger, T0) == [LoadPosition("G1")]
    assert second.position_loaded(GroupPosition(0, None), T0) == [ReadEvents(EventRange(0, 500))]
    machine = ledger.machine
    # An answer to the first connection's operation that comes after its release is
    # not applied: the second connection's machine stays as it is.
    assert first.position_loaded(GroupPosition(7, None), T0) == []
    assert ledger.machine is machine
    assert machine is not None
    assert machine.acked_seq == 0


# -- a wall clock that steps back ------------------------------------------------------------


def test_a_clock_stepped_back_moves_every_deadline_back_with_it() -> None:
    """The time fed is wall time (for timeStamps); NTP or a VM resumed can step it back.
    The CONNECT answer's deadline, the keepalive and a resend then stay as far away as
    they were, not as far as the step."""
    connection, _connect = connecting()  # its answer is due at T0 + 30
    assert connection.tick(T0 - 100) == []
    [failed] = connection.tick(T0 - 70)
    assert isinstance(failed, HandshakeFailed)
    assert failed.result == "timeout"

    connection = opened(Settings(keepalive_rate_s=10.0, notification_rate_s=5.0))
    _machine, batch = in_flight(connection)  # written at T0: resent at T0 + 5, ping T0 + 11
    assert connection.tick(T0 - 1000) == []  # stepped back 1000 s
    assert connection.tick(T0 - 995) == [ReadEvents(EventRange(1, 500, ahead=True))]
    [resend] = connection.events_read([], T0 - 995, "ID-2")
    assert isinstance(resend, WriteBatch)
    assert (resend.batch.id, resend.resend) == (batch.id, True)
    sent, _read_ahead = connection.batch_written(T0 - 995)
    assert isinstance(sent, Report)
    assert connection.events_read([], T0 - 995, "ID-3") == []
    assert connection.tick(T0 - 990)[0] == SendPing()  # T0 + 11, moved back 1000 s

    # 1 s after the ping's deadline was set, stepped back 30 s: the ping is 10 s from
    # this tick (the core cannot know how much of the step was time passing, so it
    # counts none: late by at most that).
    keepalive = opened(Settings(keepalive_rate_s=10.0))  # open at T0 + 1: ping T0 + 11
    assert keepalive.tick(T0 - 28) == []
    assert keepalive.next_deadline() == T0 - 18
    assert keepalive.tick(T0 - 18) == [SendPing()]


# -- any sequence of events ------------------------------------------------------------------

EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), st.floats(0.0, 25.0)),
        st.tuples(st.sampled_from(["pong", "ping", "garbage", "binary", "ack", "command",
                                   "close", "lost"]), st.just(0.0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(events=EVENTS, ignore_decoder=st.booleans(), allowed=st.integers(1, 4))
def test_whatever_happens_there_is_one_close_and_the_pong_rule_holds(
    events: list[tuple[str, float]], ignore_decoder: bool, allowed: int
) -> None:
    rules = Settings(keepalive_rate_s=10.0, max_pong_misses=allowed,
                     ignore_decoder=ignore_decoder)
    connection = opened(rules)
    now = T0 + 1
    closed: list[Close] = []
    pings_unanswered = 0
    for kind, seconds in events:
        if kind == "wait":
            now += seconds
            actions = connection.tick(now)
        elif kind == "pong":
            actions = connection.pong_received()
            if not closed:
                pings_unanswered = 0
        elif kind == "ping":
            actions = connection.ping_received(b"p")
        elif kind == "garbage":
            actions = connection.text_received("{", now)
        elif kind == "binary":
            actions = connection.binary_received(now)
        elif kind == "ack":
            ack = Message("M", MessageType.NOTIFICATION, SubType.RESPONSE, int(now), [])
            actions = connection.text_received(text(ack), now)
        elif kind == "command":
            actions = connection.text_received(
                text(request(MessageType.COMMAND, {"method": "GET", "uri": "/"}, now)), now)
        elif kind == "close":
            actions = connection.close(1000, "asked")
        else:
            actions = connection.connection_lost("gone")
        if closed:
            assert closes(actions) == []
            assert not any(isinstance(action, SendPing) for action in actions)
        pings_unanswered += sum(isinstance(action, SendPing) for action in actions)
        closed += closes(actions)
        assert len(closed) <= 1  # one close frame, one reason
        ending = connection.state in (State.CLOSING, State.CLOSED)
        assert connection.pong_misses < allowed or ending
        if ending:
            assert connection.next_deadline() is None
        if connection.state is State.CLOSED:
            assert not any(isinstance(action, CarryOutCommand) for action in actions)
    if closed and closed[0].code == 1001:
        assert closed[0].reason == f"no pong for {allowed} pings"
        assert pings_unanswered == allowed  # exactly N pings in a row went unanswered
    if closed and closed[0].code in (1002, 1003):
        assert not ignore_decoder


# -- delivery over connections that fail over, and a daemon that restarts ---------------------

RATE = 5.0
DELIVERY_STEPS = st.sampled_from(
    ["ack", "lose", "wrong", "wait", "wake", "queue", "timeout", "early_ack", "failover",
     "ack_while_closing", "restart", "hold"]
)
OBJECTS = st.sampled_from(["JOB", "IMAGE"])


def delivering(ledger: DeliveryLedger, db: Database, now: float, max_batch: int) -> GroupConnection:
    rules = Settings(keepalive_rate_s=1e9, notification_rate_s=RATE,
                     notification_max_batch=max_batch)
    connection = opened(rules)
    db.carry_out(connection, connection.deliver(ledger, now), now)
    return connection


@settings(max_examples=200, deadline=None)
@given(
    initial=st.lists(OBJECTS, min_size=1, max_size=10),
    steps=st.lists(st.tuples(DELIVERY_STEPS, st.lists(OBJECTS, min_size=1, max_size=3)),
                   max_size=60),
    max_batch=st.integers(1, 4),
)
def test_whatever_happens_the_core_delivers_in_order_across_failovers_and_restarts(
    initial: list[str], steps: list[tuple[str, list[str]]], max_batch: int
) -> None:
    """The core driven as the asyncio driver drives it, over a modelled database: acks,
    losses, refusals, write timeouts, wake-ups, failovers (a new connection, the same
    ledger) and restarts (a new ledger, only the database left), and a delivery
    operation still under way during the next event (`hold`), a failover (the driver
    waits for it and tells the old core) or a restart (lost with the process). Every
    event arrives in order, a resend is the same bytes, a row is persisted before its
    write, never two operations are under way at once and never two requests are
    unacknowledged at once."""
    db = Database(events(*initial))
    ledger = DeliveryLedger("G1")
    now = T0
    connection = delivering(ledger, db, now, max_batch)
    total = len(initial) + sum(len(queued) for step, queued in steps if step == "queue")
    settle: list[tuple[str, list[str]]] = [("wait", []), ("ack", [])] * (2 * total + 10)
    holding = False
    for step, queued in [*steps, *settle]:
        actions: list[Action] = []
        how = {"write_times_out": step == "timeout", "acked_before_written": step == "early_ack"}
        under_way = db.held
        if step == "hold":
            holding = True  # the next operation stays under way through the next step
        elif step in ("ack", "early_ack", "wrong") and db.written:
            payload: list[Any] = [{"refused": True}] if step == "wrong" else []
            actions = connection.text_received(text(response_to(db.written[-1], payload, now)),
                                               now)
        elif step in ("wait", "timeout"):  # timeout: the write now due takes too long
            now += RATE
            actions = connection.tick(now)
        elif step == "wake":
            actions = connection.wake(now)
        elif step == "queue":
            db.rows += events(*queued, start=len(db.rows) + 1)
            actions = connection.wake(now)
        elif step == "failover":
            connection.connection_lost("gone")
            # The driver waits for the operation under way and tells the closed core:
            # nothing new starts; then it releases the ledger.
            assert all(isinstance(a, Report) for a in db.answer_held(now))
            connection.release_delivery()
            connection = delivering(ledger, db, now, max_batch)
        elif step == "ack_while_closing" and db.written:
            # The close is decided, then the endpoint's ack arrives: it still commits.
            connection.close(1001, "going away")
            closing = connection.text_received(text(response_to(db.written[-1], [], now)), now)
            assert all(isinstance(a, (CommitAck, Report)) for a in closing)
            db.carry_out(connection, closing, now)
            db.answer_held(now)  # then the ack's commit, if it waited for it
            connection.connection_lost("closed")
            connection.release_delivery()
            connection = delivering(ledger, db, now, max_batch)
        elif step == "restart":
            connection.connection_lost("killed")
            db.held = None  # killed with the process: never done (a write never sent)
            ledger = DeliveryLedger("G1")
            connection = delivering(ledger, db, now, max_batch)
        # early_ack: the ack of each batch written next beats the end of its write.
        db.carry_out(connection, actions, now, hold=holding, **how)
        holding = holding and db.held is None
        if under_way is not None and db.held is under_way:  # it ends after the event
            db.answer_held(now, **how)
        assert len({m.id for m in db.written} - db.committed) <= 1
        assert connection.next_deadline() is not None  # delivery never stops waiting
    assert_delivered_in_order(db)


def assert_delivered_in_order(db: Database) -> None:
    """Every event arrived once in order (resends aside, each the same bytes), one
    element per object type per message, and every ack is committed."""
    first_copy: dict[str, str] = {}
    order: list[int] = []
    for message in db.written:
        assert isinstance(message.payload, list)
        assert repeated_objects(message.payload) == []
        if message.id in first_copy:
            assert encode(message) == first_copy[message.id]  # a resend is the same bytes
            continue
        first_copy[message.id] = encode(message)
        order += seqs_in(message)
    assert order == [e.seq for e in db.rows]  # in order, nothing lost or skipped
    assert db.acked_seq == len(db.rows)
