"""The NBWSS envelope: decode, validate and build messages (spec section 3).

Pure functions over values: no sockets, no clock (the caller passes `now`). Every
frame that is not a valid envelope raises `DecodeError` with a one-line reason, so the
I/O layer can apply `exception.ignoreDecoder` without knowing why a frame was bad.
One exception to that: a COMMAND request whose `id` and `type` can be read raises
`CommandDecodeError` (a `DecodeError` carrying the id), so it gets a 400 answer: every
request has exactly one response, and only a frame that cannot be read at all falls
under the decoder policy.
"""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import dataclass
from typing import Any, Final

from nbwss import strictjson
from nbwss.errors import CommandDecodeError, DecodeError

VERSION: Final = "1.0"

JsonObject = dict[str, Any]
Payload = JsonObject | list[Any]


class MessageType(enum.StrEnum):
    CONNECT = "CONNECT"
    COMMAND = "COMMAND"
    NOTIFICATION = "NOTIFICATION"


class SubType(enum.StrEnum):
    REQUEST = "REQUEST"
    RESPONSE = "RESPONSE"


@dataclass(frozen=True, slots=True)
class Message:
    """One NBWSS message. `payload` is an object, except for NOTIFICATION (an array)."""

    id: str
    type: MessageType
    sub_type: SubType
    time_stamp: int
    payload: Payload
    version: str = VERSION

    @property
    def is_request(self) -> bool:
        return self.sub_type is SubType.REQUEST

    def to_json(self) -> JsonObject:
        return {
            "version": self.version,
            "id": self.id,
            "type": str(self.type),
            "subType": str(self.sub_type),
            "timeStamp": self.time_stamp,
            "payload": self.payload,
        }


def new_id() -> str:
    """A fresh request id: an upper-case UUID, as in the guide's examples."""
    return str(uuid.uuid4()).upper()


def encode(message: Message) -> str:
    """The text frame for `message`: compact, valid JSON (the guide's typos are not ours)."""
    return strictjson.dumps(message.to_json())


def notification_frame(message_id: str, time_stamp: int, payload_text: str) -> str:
    """The text `encode` writes for a NOTIFICATION request whose payload is JSON text
    already (`payload_text`, compact, UTF-8 as is, as `encode` writes it).

    Delivery splices the stored notifications into a frame this way, never decoding
    them: the envelope's keys, their order and separators are `encode`'s (the tests
    compare the two byte for byte).
    """
    return "".join(
        (_NOTIFICATION_HEAD, strictjson.dumps(message_id), _NOTIFICATION_STAMP,
         str(time_stamp), _NOTIFICATION_PAYLOAD, payload_text, "}")
    )  # fmt: skip


_NOTIFICATION_HEAD: Final = '{"version":"' + VERSION + '","id":'
_NOTIFICATION_STAMP: Final = (
    f',"type":"{MessageType.NOTIFICATION}","subType":"{SubType.REQUEST}","timeStamp":'
)
_NOTIFICATION_PAYLOAD: Final = ',"payload":'


# -- decoding ------------------------------------------------------------------------------


# The decoder's depth limit (see `strictjson`): notification data leaves room for the envelope.
MAX_DEPTH: Final = strictjson.MAX_DEPTH
# A Java long, what the vendor's side keeps a time stamp in.
MAX_TIME_STAMP: Final = 2**63 - 1
# The longest id accepted (a UUID is 36 characters): an id is echoed in the response.
MAX_ID_LENGTH: Final = 128
# Epoch seconds reach 10**11 in the year 5138; epoch milliseconds passed it in 1973.
MILLISECONDS_FROM: Final = 10**11


def parse_json(
    text: str | bytes, max_bytes: int | None = None, subject: str = "message"
) -> Any:
    """Strict JSON (`strictjson`: UTF-8 only, no duplicate keys, no NaN/Infinity, integers
    within a Java long, no unpaired surrogates, bounded depth) of bounded size; `subject`
    names the text in errors.

    Unpaired surrogates are refused because a string holding one cannot be encoded again
    as UTF-8, so echoing it (an id in a response) would fail later.
    """
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if max_bytes is not None and size > max_bytes:
        raise DecodeError(f"{subject} of {size} bytes exceeds the limit of {max_bytes} bytes")
    return strictjson.loads(text, subject, MAX_DEPTH)


def _field(obj: JsonObject, key: str) -> Any:
    if key not in obj:
        raise DecodeError(f"message has no {key!r}")
    return obj[key]


def _enum_field(obj: JsonObject, key: str, kind: type[enum.StrEnum]) -> Any:
    value = _field(obj, key)
    try:
        return kind(value)
    except (ValueError, TypeError):
        allowed = ", ".join(kind)
        raise DecodeError(f"{key!r} is {_show(value)}, expected one of {allowed}") from None


def _show(value: Any) -> str:
    """A short rendering of a bad value for an error line (never a whole payload)."""
    text = json.dumps(value, ensure_ascii=True, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def decode(text: str | bytes, max_bytes: int | None = None) -> Message:
    """Parse and validate one frame into a `Message`, or raise `DecodeError` saying why
    (`CommandDecodeError` for a COMMAND request that can still be answered)."""
    try:
        obj = parse_json(text, max_bytes)
    except strictjson.StrictJsonError as exc:
        # JSON, but not strict JSON (NaN, a huge number, a duplicate key...): a COMMAND
        # request whose id still reads gets its 400, like any other malformed request.
        command_id = _lenient_command_id(text)
        if command_id is None:
            raise
        raise CommandDecodeError(str(exc), command_id) from None
    if not isinstance(obj, dict):
        raise DecodeError(f"message is a JSON {type(obj).__name__}, expected an object")
    try:
        return _envelope(obj)
    except DecodeError as exc:
        command_id = answerable_command_id(obj)
        if command_id is None:
            raise
        raise CommandDecodeError(str(exc), command_id) from None


def _lenient_command_id(text: str | bytes) -> str | None:
    """The id of a COMMAND request read by Python's own lenient parser, or None."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # not JSON at all, or past Python's limits
        return None
    command_id = answerable_command_id(obj) if isinstance(obj, dict) else None
    if command_id is None or _unencodable(command_id):
        return None  # an id that cannot be echoed gets no answer
    return command_id


def _unencodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _usable_id(message_id: Any) -> bool:
    return (
        isinstance(message_id, str)
        and bool(message_id.strip())
        and len(message_id) <= MAX_ID_LENGTH
    )


def answerable_command_id(obj: JsonObject) -> str | None:
    """The id of a frame that reads as a COMMAND request (a usable `id`, `type` COMMAND,
    `subType` anything but RESPONSE: an app sends COMMAND requests only), else None."""
    message_id = obj.get("id")
    if not _usable_id(message_id) or obj.get("type") != MessageType.COMMAND:
        return None
    if obj.get("subType") == SubType.RESPONSE:
        return None
    return str(message_id)


def _envelope(obj: JsonObject) -> Message:
    version = _field(obj, "version")
    if version != VERSION:
        raise DecodeError(f"'version' is {_show(version)}, expected {VERSION!r}")
    message_id = _field(obj, "id")
    if not _usable_id(message_id):
        raise DecodeError(
            f"'id' is {_show(message_id)}, expected a non-empty string of at most "
            f"{MAX_ID_LENGTH} characters"
        )
    message_type = _enum_field(obj, "type", MessageType)
    sub_type = _enum_field(obj, "subType", SubType)
    time_stamp = _field(obj, "timeStamp")
    # The guide says epoch seconds as an integer; a float is tolerated and truncated.
    # The range check also refuses inf (and NaN) without math.isfinite, which overflows
    # on a 4,000-digit integer.
    if (
        isinstance(time_stamp, bool)
        or not isinstance(time_stamp, int | float)
        or not -MAX_TIME_STAMP <= time_stamp <= MAX_TIME_STAMP
    ):
        raise DecodeError(f"'timeStamp' is {_show(time_stamp)}, expected epoch seconds")
    payload = _field(obj, "payload")
    wants_array = message_type is MessageType.NOTIFICATION
    if not (isinstance(payload, list) if wants_array else isinstance(payload, dict)):
        kind = "an array" if wants_array else "an object"
        raise DecodeError(f"'payload' of a {message_type} message must be {kind}")
    return Message(
        id=message_id,
        type=message_type,
        sub_type=sub_type,
        time_stamp=int(time_stamp),
        payload=payload,
        version=version,
    )


# -- building ------------------------------------------------------------------------------


def request(message_type: MessageType, payload: Payload, now: float, *, id: str = "") -> Message:
    return Message(
        id=id or new_id(),
        type=message_type,
        sub_type=SubType.REQUEST,
        time_stamp=int(now),
        payload=payload,
    )


def response_to(req: Message, payload: Payload, now: float) -> Message:
    """The response to `req`: same id and type, as every request has exactly one."""
    return Message(
        id=req.id, type=req.type, sub_type=SubType.RESPONSE, time_stamp=int(now), payload=payload
    )


def connect_request(token: str, now: float) -> Message:
    return request(MessageType.CONNECT, {"token": token}, now)


def connect_valid(response: Message) -> bool:
    """Whether a CONNECT RESPONSE accepts the token; a malformed answer is a DecodeError."""
    assert isinstance(response.payload, dict)
    valid = response.payload.get("valid")
    if not isinstance(valid, bool):
        raise DecodeError(f"CONNECT response 'valid' is {_show(valid)}, expected true or false")
    return valid


def error_body(status: int, reason: str, **details: Any) -> JsonObject:
    """The body of a COMMAND answer nbwss makes itself, in NetBackup's error shape, with
    `origin: nbwss` so an app can tell it from an answer of the REST API."""
    return {"errorCode": status, "errorMessage": reason, **details, "origin": "nbwss"}


def command_error(req: Message, status: int, reason: str, now: float) -> Message:
    """A COMMAND RESPONSE nbwss answers itself (no API call was made, or it failed)."""
    return command_error_to(req.id, status, reason, now)


def command_error_to(request_id: str, status: int, reason: str, now: float) -> Message:
    """`command_error` for a request known only by its id (one that did not decode)."""
    payload = {
        "headers": {"content-type": "application/json"},
        "responseCode": status,
        "body": json.dumps(error_body(status, reason), allow_nan=False),
    }
    return Message(request_id, MessageType.COMMAND, SubType.RESPONSE, int(now), payload)


def in_milliseconds(time_stamp: int) -> bool:
    """Whether a timeStamp looks like epoch milliseconds (the guide says seconds)."""
    return abs(time_stamp) >= MILLISECONDS_FROM


def notification_response(req: Message, now: float) -> Message:
    return response_to(req, [], now)
