"""The envelope codec: the guide's examples, every refusal with its reason, and fuzzing."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import bench.fuzz
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nbwss.errors import CommandDecodeError, DecodeError
from nbwss.messages import (
    MAX_DEPTH,
    MAX_ID_LENGTH,
    Message,
    MessageType,
    SubType,
    connect_request,
    connect_valid,
    decode,
    encode,
    in_milliseconds,
    new_id,
    notification_response,
    parse_json,
    request,
    response_to,
)
from tests.conftest import SPEC_EXAMPLES
from tests.strategies import arbitrary_frames, deep_nesting, near_valid_frames, valid_frames

EXAMPLES = SPEC_EXAMPLES
MESSAGE_FILES = sorted(p for p in EXAMPLES.glob("*.json") if p.name != "endpoint-details.json")

VALID: dict[str, Any] = {
    "version": "1.0",
    "id": "0CEAB6C2-0BBF-4F60-974D-C1F3EF39B872",
    "type": "CONNECT",
    "subType": "REQUEST",
    "timeStamp": 1444944181,
    "payload": {"token": "qwerrtrtrtrt2234344==="},
}


def frame(**changes: Any) -> str:
    obj = {**VALID, **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not _DROP})


_DROP = object()


def reason(text: str | bytes, max_bytes: int | None = None) -> str:
    with pytest.raises(DecodeError) as caught:
        decode(text, max_bytes)
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- the guide's examples ------------------------------------------------------------------


def test_the_examples_are_there() -> None:
    assert len(MESSAGE_FILES) >= 17


@pytest.mark.parametrize("path", MESSAGE_FILES, ids=lambda p: p.stem)
def test_every_example_decodes_and_encodes_back_equal(path: Path) -> None:
    raw = path.read_bytes()
    message = decode(raw)
    assert json.loads(encode(message)) == json.loads(raw)
    kind = path.stem.split("-")[0]
    expected_type = {"connect": MessageType.CONNECT, "command": MessageType.COMMAND}
    assert message.type is expected_type.get(kind, MessageType.NOTIFICATION)
    assert message.is_request is ("response" not in path.stem)


def test_example_fields_are_typed() -> None:
    message = decode((EXAMPLES / "connect-request.json").read_bytes())
    assert message == Message(
        id="0CEAB6C2-0BBF-4F60-974D-C1F3EF39B872",
        type=MessageType.CONNECT,
        sub_type=SubType.REQUEST,
        time_stamp=1444944181,
        payload={"token": "qwerrtrtrtrt2234344==="},
    )
    assert message.is_request


def test_encode_is_compact_and_keeps_non_ascii() -> None:
    message = request(MessageType.NOTIFICATION, [{"data": ["é"]}], 5.9, id="A")
    assert encode(message) == (
        '{"version":"1.0","id":"A","type":"NOTIFICATION","subType":"REQUEST",'
        '"timeStamp":5,"payload":[{"data":["é"]}]}'
    )


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (frame(version="2.0"), "'version' is \"2.0\", expected '1.0'"),
        (frame(version=1.0), "'version' is 1.0, expected '1.0'"),
        (frame(version=_DROP), "message has no 'version'"),
        (frame(id=_DROP), "message has no 'id'"),
        (frame(id=""), "'id' is \"\", expected a non-empty string"),
        (frame(id=7), "'id' is 7, expected a non-empty string"),
        (frame(id="x" * 129), "expected a non-empty string of at most 128 characters"),
        (frame(type="PING"), "'type' is \"PING\", expected one of CONNECT, COMMAND, NOTIFICATION"),
        (frame(type=["CONNECT"]), "'type' is [\"CONNECT\"], expected one of"),
        (frame(subType="ACK"), "'subType' is \"ACK\", expected one of REQUEST, RESPONSE"),
        (frame(subType=_DROP), "message has no 'subType'"),
        (frame(timeStamp="1444944181"), "'timeStamp' is \"1444944181\", expected epoch seconds"),
        (frame(timeStamp=True), "'timeStamp' is true, expected epoch seconds"),
        (frame(timeStamp=None), "'timeStamp' is null, expected epoch seconds"),
        (frame(timeStamp=_DROP), "message has no 'timeStamp'"),
        (frame(timeStamp=2**63), "integer 9223372036854775808 in message is outside the signed"),
        (frame(timeStamp=-(2**63)), "expected epoch seconds"),
        (frame(timeStamp=-(2**63) - 1), "integer -9223372036854775809 in message is outside"),
        (frame(timeStamp=1e300), "'timeStamp' is 1e+300, expected epoch seconds"),
        (frame(timeStamp=7).replace(": 7,", ": 1e999,"), "number 1e999 in message overflows a"),
        (frame(timeStamp=7).replace(": 7,", ": " + "1" * 4300 + ","), "(4300 digits) in message"),
        (frame(payload=_DROP), "message has no 'payload'"),
        (frame(payload=[]), "'payload' of a CONNECT message must be an object"),
        (frame(type="COMMAND", payload="{}"), "'payload' of a COMMAND message must be an object"),
        (frame(type="NOTIFICATION", payload={}), "'payload' of a NOTIFICATION message must be an"),
        (frame(type="NOTIFICATION", payload=None), "must be an array"),
        ("[]", "message is a JSON list, expected an object"),
        ('"x"', "message is a JSON str, expected an object"),
        ("", "message is not JSON: Expecting value at offset 0"),
        ('{"é":x}', "message is not JSON: Expecting value at offset 6"),  # bytes, not characters
        ('{"version":"1.0"', "message is not JSON"),
        ('{"id":"a","id":"b"}', "duplicate key 'id' in message"),
        ('{"payload":{"a":1,"a":2}}', "duplicate key 'a' in message"),
        ('{"timeStamp":NaN}', "NaN in message is not valid JSON"),
        ('{"timeStamp":-Infinity}', "-Infinity in message is not valid JSON"),
        ('{"payload":{"x":[1e400]}}', "number 1e400 in message overflows a double"),
        (b'{"id":"\xff"}', "message is not valid UTF-8 (invalid start byte): byte 0xFF at offset"),
        (b'{"id":"\xed\xa0\x80"}', "message is not valid UTF-8"),  # an encoded surrogate
        ('{"id":"\ud800"}', "message is not valid UTF-8 (surrogates not allowed)"),
        ('{"id":"\\ud800"}', "message holds an unpaired UTF-16 surrogate escape at offset 7"),
        ('{"id":"\\uDFFF\\ud800"}', "unpaired UTF-16 surrogate"),
        ('{"n":' + "1" * 5000 + "}", "integer 11111111111111111111... (5000 digits) in message"),
        (deep_nesting(MAX_DEPTH + 1), f"message is nested deeper than {MAX_DEPTH} levels"),
        (deep_nesting(100_000), "nested"),
    ],
)
def test_decode_refuses_with_a_one_line_reason(text: str | bytes, expected: str) -> None:
    assert expected in reason(text)


def test_oversize_is_refused_before_parsing() -> None:
    text = frame(payload={"token": "x" * 2000})
    size = len(text.encode())
    assert reason(text, max_bytes=size - 1) == (
        f"message of {size} bytes exceeds the limit of {size - 1} bytes"
    )
    assert reason("é" * 600, max_bytes=1024).startswith("message of 1200 bytes")
    assert decode(text, max_bytes=size).payload == {"token": "x" * 2000}


def test_a_surrogate_pair_escape_is_one_character_and_accepted() -> None:
    assert decode(frame(id="X").replace('"X"', '"\\ud83d\\ude00"')).id == "\U0001f600"
    assert parse_json('"\\ud83d\\ude00"') == "\U0001f600"
    assert parse_json('"\\\\ud800"') == "\\ud800"  # an escaped backslash, no surrogate


def test_nesting_up_to_the_limit_is_accepted() -> None:
    assert parse_json(deep_nesting(MAX_DEPTH)) is not None


def test_a_float_time_stamp_is_tolerated_and_truncated() -> None:
    assert decode(frame(timeStamp=1444944181.9)).time_stamp == 1444944181
    assert decode(frame(timeStamp=2**63 - 1)).time_stamp == 2**63 - 1


# -- builders ------------------------------------------------------------------------------


def test_new_id_is_an_upper_case_uuid_and_fresh() -> None:
    ids = {new_id() for _ in range(100)}
    assert len(ids) == 100
    for message_id in ids:
        assert re.fullmatch(r"[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}",
                            message_id)


def test_a_response_carries_its_requests_id_and_type() -> None:
    req = connect_request("secret-token", 1000.7)
    assert (req.type, req.sub_type, req.time_stamp) == (MessageType.CONNECT, SubType.REQUEST, 1000)
    assert req.payload == {"token": "secret-token"}
    ack = notification_response(request(MessageType.NOTIFICATION, [], 1.0), 2.0)
    assert (ack.sub_type, ack.payload, ack.time_stamp) == (SubType.RESPONSE, [], 2)
    answer = response_to(req, {"valid": True}, 1001.0)
    assert (answer.id, answer.type, answer.is_request) == (req.id, MessageType.CONNECT, False)


@pytest.mark.parametrize(("payload", "valid"), [({"valid": True}, True), ({"valid": False}, False)])
def test_connect_valid_reads_the_answer(payload: dict[str, Any], valid: bool) -> None:
    assert connect_valid(decode(frame(subType="RESPONSE", payload=payload))) is valid


@pytest.mark.parametrize("payload", [{}, {"valid": "true"}, {"valid": 1}, {"valid": None}])
def test_connect_valid_refuses_a_malformed_answer(payload: dict[str, Any]) -> None:
    with pytest.raises(DecodeError, match="CONNECT response 'valid' is"):
        connect_valid(decode(frame(subType="RESPONSE", payload=payload)))


# -- properties ------------------------------------------------------------------------------


def decode_error(text: str | bytes) -> str | None:
    """The DecodeError line, or None; any other exception escapes and fails the test."""
    try:
        decode(text, max_bytes=1 << 20)
    except DecodeError as error:
        return str(error)
    return None


@given(valid_frames())
def test_valid_frames_round_trip(obj: dict[str, Any]) -> None:
    text = json.dumps(obj, ensure_ascii=False)
    message = decode(text.encode())
    assert json.loads(encode(message)) == obj
    assert decode(encode(message)) == message


@given(arbitrary_frames())
def test_decode_never_raises_anything_but_decode_error(data: bytes | str) -> None:
    assert "\n" not in (decode_error(data) or "")


@given(near_valid_frames())
def test_what_decodes_can_be_encoded_again(data: bytes) -> None:
    if decode_error(data) is None:
        text = encode(decode(data))
        text.encode("utf-8")  # a text frame must be valid UTF-8
        assert decode(text) == decode(data)


@given(st.text(min_size=1, max_size=MAX_ID_LENGTH).filter(lambda s: s.strip() != ""))
def test_any_id_is_echoed_unchanged(message_id: str) -> None:
    req = decode(frame(id=message_id, type="COMMAND", payload={}))
    assert decode(encode(response_to(req, {}, 0))).id == message_id


# -- a COMMAND request that can be answered --------------------------------------------------


def command_frame(**changes: Any) -> str:
    return frame(**{"type": "COMMAND", "payload": {"uri": "/x", "method": "GET"}, **changes})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (command_frame(payload=[]), "'payload' of a COMMAND message must be an object"),
        (command_frame(payload="{}"), "'payload' of a COMMAND message must be an object"),
        (command_frame(version="2.0"), "'version' is \"2.0\", expected '1.0'"),
        (command_frame(timeStamp="now"), "'timeStamp' is \"now\", expected epoch seconds"),
        (command_frame(subType="REQ"), "'subType' is \"REQ\", expected one of"),
        (command_frame(subType=_DROP), "message has no 'subType'"),
        (command_frame(payload=_DROP), "message has no 'payload'"),
    ],
)
def test_a_command_request_with_a_readable_id_gets_its_id_back(text: str, expected: str) -> None:
    with pytest.raises(CommandDecodeError) as caught:
        decode(text)
    assert caught.value.message_id == VALID["id"]
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("splice", "expected"),
    [
        ('"timeout": NaN', "NaN in message is not valid JSON"),
        ('"size": 1e400', "number 1e400 in message overflows a double"),
        ('"count": 18446744073709551616', "integer 18446744073709551616 in message is outside"),
        ('"uri": "/x", "uri": "/y"', "duplicate key 'uri' in message"),
        ('"note": "\\ud800"', "unpaired UTF-16 surrogate escape"),
    ],
)
def test_a_command_request_that_is_not_strict_json_still_gets_its_id_back(
    splice: str, expected: str
) -> None:
    """Strict JSON refuses the frame, but a COMMAND request whose id Python can read is
    answered (400) rather than left without a response (issue 11)."""
    text = command_frame().replace('"payload": {', '"payload": {' + splice + ", ", 1)
    with pytest.raises(CommandDecodeError) as caught:
        decode(text)
    assert caught.value.message_id == VALID["id"]
    assert expected in str(caught.value)


def test_a_command_request_whose_id_cannot_be_echoed_gets_no_answer() -> None:
    text = command_frame(id="X").replace('"X"', '"\\udc00"').replace(
        '"payload": {', '"payload": {"n": NaN, ', 1)
    with pytest.raises(DecodeError) as caught:
        decode(text)
    assert not isinstance(caught.value, CommandDecodeError)


@pytest.mark.parametrize(
    "text",
    [
        command_frame(id="", payload=[]),  # no id to answer
        command_frame(id="x" * (MAX_ID_LENGTH + 1), payload=[]),  # not an id we echo
        command_frame(id=7, payload=[]),
        command_frame(subType="RESPONSE", payload=[]),  # we send no COMMAND requests
        frame(type="NOTIFICATION", payload={}),  # not a COMMAND
        frame(type="command", payload=[]),  # not even a type
        "[1, 2]",
        "{not json",
    ],
)
def test_a_frame_without_an_answerable_command_falls_under_the_decoder_policy(
    text: str,
) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(text)
    assert not isinstance(caught.value, CommandDecodeError)


def test_an_id_of_the_longest_length_is_accepted() -> None:
    assert decode(frame(id="x" * MAX_ID_LENGTH)).id == "x" * MAX_ID_LENGTH


def test_a_time_stamp_in_milliseconds_is_recognised() -> None:
    assert in_milliseconds(1444944181000)
    assert not in_milliseconds(1444944181)
    assert not in_milliseconds(0)


# -- the long fuzz run (bench/fuzz.py) stays runnable and can fail ----------------------------


def test_the_fuzz_bench_runs_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.fuzz.main(["--cases", "10", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    for target in bench.fuzz.TARGETS:
        assert f"{target:16} cases      10  failures    0" in out


def test_the_fuzz_bench_reports_a_planted_crash(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def crashing_decode(data: str | bytes, max_bytes: int | None = None) -> Message:
        raise KeyError("planted")

    monkeypatch.setattr(bench.fuzz, "decode", crashing_decode)
    assert bench.fuzz.main(["--cases", "10", "--targets", "messages", "--seed", "1"]) == 1
    out = capsys.readouterr().out
    assert "messages         cases      10  failures   10" in out
    assert "10 x KeyError" in out
    assert "result: FAILURES FOUND" in out
