"""`GroupConnection`, the sans-I/O rules of one live connection: plain values, a fake
clock, no socket, no event loop."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbwss.delivery import Batch, DeliveryMachine
from nbwss.messages import Message, MessageType, SubType, encode, request, response_to
from nbwss.properties import Settings
from nbwss.protocol import (
    Action,
    AnswerMalformedCommand,
    CarryOutCommand,
    Close,
    Counter,
    DeliveryProgressed,
    GroupConnection,
    HandshakeFailed,
    Opened,
    Report,
    SendPing,
    SendPong,
    State,
    WriteFrame,
)
from tests.test_delivery import ack, events, started

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
    report, close = connection.text_received("{garbage", T0)
    assert isinstance(report, Report)
    assert (report.event, report.counter) == ("frame.rejected", Counter.DECODE_ERRORS)
    assert isinstance(close, Close)
    assert close.code == 1002
    assert close.reason.startswith("undecodable frame: ")
    assert closes(connection.binary_received(T0)) == []  # one close, one reason
    delivery, batch = in_flight(connection)
    assert connection.text_received(text(ack(batch)), T0) == [DeliveryProgressed()]  # counts
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
    assert delivered == DeliveryProgressed()
    [duplicate] = connection.text_received(text(late), T0)
    assert isinstance(duplicate, Report)
    assert duplicate.event == "notification.duplicate_ack"


def in_flight(connection: GroupConnection) -> tuple[DeliveryMachine, Batch]:
    """The group delivers over `connection` and has one batch written, its ack awaited."""
    delivery = DeliveryMachine(group_id="G1", max_batch=10, max_bytes=1 << 20, rate_s=5.0,
                               acked_seq=0)
    batch = started(delivery, events("JOB"))
    delivery.write_done(batch.id, T0)
    connection.deliver_with(delivery)
    return delivery, batch


def test_responses_are_judged_by_the_groups_delivery() -> None:
    connection = opened()
    delivery, batch = in_flight(connection)
    [wrong] = connection.text_received(text(dataclasses.replace(ack(batch), id="OTHER")), T0)
    assert isinstance(wrong, Report)
    assert (wrong.event, wrong.level, wrong.fields["reason"]) == (
        "notification.response_refused", "warning", "wrong_id"
    )
    assert delivery.awaiting_commit is None
    assert connection.text_received(text(ack(batch)), T0) == [DeliveryProgressed()]
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
