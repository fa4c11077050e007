"""Hypothesis strategies for the inputs nbwss takes from outside: frames, details, properties.

Reusable by every test and by `bench/fuzz.py`. Each family has a valid generator (for
round trips) and a near-valid one: a valid value with one or a few faults applied (a
wrong type, a missing key, a huge value, deep nesting, a duplicate key, invalid UTF-8,
a cut), because near-valid input reaches deeper into a parser than random bytes do.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from nbwss.endpoints import JAVA_INT_MAX, JAVA_INT_MIN
from nbwss.messages import MAX_DEPTH

JsonValue = Any
MESSAGE_TYPES = ("CONNECT", "COMMAND", "NOTIFICATION")
SUB_TYPES = ("REQUEST", "RESPONSE")
DETAILS_KEYS = ("token", "priority", "groupId", "hostName", "url")

# -- JSON values -------------------------------------------------------------------------

json_scalars: st.SearchStrategy[JsonValue] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),  # what the strict codec accepts: a Java long
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)


def json_values(max_leaves: int = 10) -> st.SearchStrategy[JsonValue]:
    """Any JSON value (no NaN; string keys), nested a few levels."""
    return st.recursive(
        json_scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=8), children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


def to_text(value: JsonValue) -> str:
    """How an endpoint would put a value on the wire (may hold raw non-ASCII)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# -- NBWSS frames ----------------------------------------------------------------------

uuids = st.uuids().map(lambda u: str(u).upper())
time_stamps = st.integers(min_value=0, max_value=2**33)
_header_names = st.sampled_from(["Content-Type", "Authorization", "Accept", "date", "server"])


def _payload(message_type: str, sub_type: str) -> st.SearchStrategy[JsonValue]:
    if message_type == "CONNECT":
        if sub_type == "REQUEST":
            return st.fixed_dictionaries({"token": st.text(min_size=1, max_size=40)})
        return st.fixed_dictionaries({"valid": st.booleans()})
    if message_type == "COMMAND":
        headers = st.dictionaries(_header_names, st.text(max_size=30), max_size=4)
        if sub_type == "REQUEST":
            return st.fixed_dictionaries(
                {
                    "uri": st.text(max_size=40).map(lambda path: "/netbackup/" + path),
                    "method": st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
                    "headers": headers,
                },
                optional={"parameters": json_values(3).map(to_text)},
            )
        return st.fixed_dictionaries(
            {
                "headers": headers,
                "responseCode": st.integers(100, 599),
                "body": json_values(3).map(to_text),
            }
        )
    if sub_type == "RESPONSE":
        return st.just([])
    notification = st.dictionaries(st.text(max_size=12), json_scalars, max_size=4)
    element = st.fixed_dictionaries(
        {
            "notificationType": st.just("INFO"),
            "object": st.sampled_from(["JOB", "IMAGE"]),
            "data": st.lists(notification, max_size=3),
        }
    )
    return st.lists(element, max_size=2)


@st.composite
def valid_frames(draw: st.DrawFn) -> dict[str, JsonValue]:
    """A valid NBWSS message of any type and sub-type, as a JSON object."""
    message_type = draw(st.sampled_from(MESSAGE_TYPES))
    sub_type = draw(st.sampled_from(SUB_TYPES))
    return {
        "version": "1.0",
        "id": draw(uuids),
        "type": message_type,
        "subType": sub_type,
        "timeStamp": draw(time_stamps),
        "payload": draw(_payload(message_type, sub_type)),
    }


def deep_nesting(depth: int) -> str:
    """A JSON text nested `depth` levels (arrays and objects alternating)."""
    return '{"a":' * (depth // 2) + "[" * (depth - depth // 2) + "]" * (depth - depth // 2) + (
        "}" * (depth // 2)
    )


wrong_values: st.SearchStrategy[JsonValue] = st.one_of(
    json_values(6),
    st.integers(min_value=2**63),  # beyond every fixed-width integer
    st.integers(1000, 100_000).map(lambda size: "x" * size),  # a huge string, cheaply
    st.just("1.0 "),
    st.just(""),
    st.just(1.5),
    st.just(True),
)


def _dump_with_raw(obj: dict[str, JsonValue], raw: dict[str, str]) -> str:
    """Serialise `obj`, then splice raw JSON texts for some keys (deep nesting, NaN...)."""
    parts = [f"{json.dumps(k)}:{raw.get(k, to_text(v))}" for k, v in obj.items()]
    return "{" + ",".join(parts) + "}"


@st.composite
def near_valid_frames(draw: st.DrawFn) -> bytes:
    """A valid frame with one to three faults: what a buggy or hostile endpoint sends."""
    frame: dict[str, JsonValue] = draw(valid_frames())
    raw: dict[str, str] = {}
    duplicates: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from([*frame, "payload"]))
        fault = draw(
            st.sampled_from(
                ["drop", "wrong", "deep", "nan", "huge-number", "duplicate", "swap-kind",
                 "inner-wrong", "extra"]
            )
        )
        if fault == "drop":
            frame.pop(key, None)
        elif fault == "wrong":
            frame[key] = draw(wrong_values)
        elif fault == "deep":
            raw[key] = deep_nesting(draw(st.sampled_from([MAX_DEPTH - 2, MAX_DEPTH, 200, 5000])))
        elif fault == "nan":
            raw[key] = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"]))
        elif fault == "huge-number":  # past Python's 4,300-digit int conversion limit
            raw[key] = draw(st.sampled_from(["9" * 5000, "-" + "1" * 4301, "1" * 4300, "1e400"]))
        elif fault == "duplicate":
            duplicates.append(key)
        elif fault == "swap-kind":
            frame["payload"] = {} if isinstance(frame.get("payload"), list) else []
        elif fault == "inner-wrong" and isinstance(frame.get("payload"), dict) and frame["payload"]:
            inner = draw(st.sampled_from(sorted(frame["payload"])))
            frame["payload"][inner] = draw(wrong_values)
        else:
            frame[draw(st.text(max_size=8))] = draw(json_values(4))
    text = _dump_with_raw(frame, raw)
    for key in duplicates:
        text = text[:-1] + f",{json.dumps(key)}:{draw(json_values(2).map(to_text))}" + "}"
    data = text.encode("utf-8")
    return draw(st.one_of(st.just(data), _byte_faults(data)))


def _byte_faults(data: bytes) -> st.SearchStrategy[bytes]:
    """Faults below JSON: invalid UTF-8 spliced in, a lone surrogate escape, a cut frame."""

    @st.composite
    def corrupt(draw: st.DrawFn) -> bytes:
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["invalid-utf8", "surrogate", "cut", "bom"]))
        if kind == "invalid-utf8":
            junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80"]))
            return data[:at] + junk + data[at:]
        if kind == "surrogate":
            escape = draw(st.sampled_from([b"\\ud800", b"\\uDFFF", b"\\udbff\\u0041"]))
            return data.replace(b'"id":"', b'"id":"' + escape, 1)
        if kind == "bom":
            return b"\xef\xbb\xbf" + data
        return data[:at]

    return corrupt()


def arbitrary_frames() -> st.SearchStrategy[bytes | str]:
    """Anything at all: random bytes, random text, random JSON, near-valid frames."""
    return st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200),
        json_values(20).map(to_text),
        near_valid_frames(),
    )


# -- endpoint details ------------------------------------------------------------------

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_host_labels = st.lists(st.text(_ALNUM, min_size=1, max_size=6), min_size=1, max_size=2).map(
    "-".join
)
host_names = st.lists(_host_labels, min_size=1, max_size=4).map(".".join)
_printable = st.text(
    # No controls or format characters: C1 controls and bidi marks are refused (issue 11).
    st.characters(min_codepoint=0x20, blacklist_characters="'\x7f",
                  blacklist_categories=["Cs", "Cc", "Cf"]),
    min_size=1,
    max_size=40,
).filter(lambda text: text.strip() != "")


@st.composite
def valid_details(draw: st.DrawFn) -> dict[str, JsonValue]:
    """An endpoint-details object the guide accepts (values already trimmed)."""
    host = draw(host_names)
    port = draw(st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")))
    segments = st.text(_ALNUM + "ABCXYZ._-", min_size=1, max_size=12)
    path = "".join("/" + segment for segment in draw(st.lists(segments, max_size=3)))
    return {
        "token": draw(_printable.map(str.strip)),
        "priority": draw(st.integers(JAVA_INT_MIN, JAVA_INT_MAX)),
        "groupId": draw(_printable.map(str.strip)),
        "hostName": host,
        "url": f"wss://{host}{port}{path}",
    }


@st.composite
def near_valid_details(draw: st.DrawFn) -> str:
    """Valid details with one or two faults, serialised (keys shuffled)."""
    details: dict[str, JsonValue] = draw(valid_details())
    for _ in range(draw(st.integers(1, 2))):
        key = draw(st.sampled_from(DETAILS_KEYS))
        fault = draw(st.sampled_from(["drop", "wrong", "apostrophe", "url", "blank", "list"]))
        if fault == "drop":
            details.pop(key, None)
        elif fault == "wrong":
            details[key] = draw(wrong_values)
        elif fault == "apostrophe":
            details[draw(st.sampled_from([key, "x'y"]))] = "it's"
        elif fault == "url":
            details["url"] = draw(
                st.sampled_from(
                    ["ws://h", "https://h", "wss://", "wss://:443", "wss://h:0", "wss://h:99999",
                     "wss://h:x", "wss://[::1", "wss:/h", "WSS://H", "wss://h /p", "wss://h\t"]
                )
            )
        elif fault == "blank":
            details[key] = draw(st.sampled_from(["", " ", "\t", "\u3000"]))
        else:
            return to_text([details])
    order = draw(st.permutations(list(details)))
    return to_text({key: details[key] for key in order})


def arbitrary_details() -> st.SearchStrategy[bytes | str]:
    return st.one_of(
        st.binary(max_size=100),
        json_values(15).map(to_text),
        near_valid_details(),
        valid_details().map(to_text),
    )


# -- properties files ------------------------------------------------------------------


def java_store_escape(text: str, is_key: bool) -> str:
    """Escape as java.util.Properties.store does (saveConvert with escUnicode)."""
    out: list[str] = []
    for index, char in enumerate(text):
        code = ord(char)
        if char == " ":
            out.append("\\ " if index == 0 or is_key else " ")
        elif char in "\t\n\r\f":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f"}[char])
        elif char in "=:#!\\":
            out.append("\\" + char)
        elif code < 0x20 or code > 0x7E:
            # Java works on UTF-16 units: one escape per unit, upper-case hex.
            units = char.encode("utf-16-be", "surrogatepass")
            for at in range(0, len(units), 2):
                out.append(f"\\u{int.from_bytes(units[at:at + 2], 'big'):04X}")
        else:
            out.append(char)
    return "".join(out)


def java_store(pairs: dict[str, str]) -> str:
    """A whole file as `Properties.store` writes it: a comment, a date, then key=value."""
    lines = ["#written by a hypothesis test", "#Thu Nov 26 12:00:00 UTC 2026"]
    lines += [
        f"{java_store_escape(key, True)}={java_store_escape(value, False)}"
        for key, value in pairs.items()
    ]
    return "\n".join(lines) + "\n"


property_keys = st.text(min_size=1, max_size=15)
property_values = st.text(max_size=30)
property_pairs = st.dictionaries(property_keys, property_values, max_size=8)

_line_pieces = st.sampled_from(
    ["#", "!", "=", ":", " ", "\t", "\f", "\\", "\\\\", "\\u", "\\u00e9", "\\uZZ", "\\\n",
     "\\\r\n", "\n", "\r", "\r\n", "key", "value", "é", "hibernate.x", "log.level",
     "keepAlive.scheduledRate", "0", "-1", "true", "\x00", "~nobody", "~"]
)


def properties_texts() -> st.SearchStrategy[str]:
    """Text built from the pieces the grammar cares about, plus random text."""
    return st.one_of(
        st.lists(_line_pieces, max_size=40).map("".join),
        st.text(max_size=200),
        property_pairs.map(java_store),
    )


_SETTING_VALUES = {
    "exception.ignoreDecoder": ["true", "false", "TRUE", "yes", ""],
    "notification.sendTimeout": ["2000", "0.5", "0", "-1", "x"],
    "keepAlive.maxPongMissAllowed": ["10", "0", "1e3", "99999999999999999999"],
    "connectionInfo.period": ["60", "0", "nan", "inf", "-5"],
    "connect.responseTimeout": ["30", "0.5", "0", "-1", "1e400"],
    "store.path": ["/tmp/x.db", "", "~", "~nosuchuser/x"],
    "restApi.baseUrl": ["https://h:1556", "ftp://h", "https://"],
    "command.allowedPrefixes": ["/netbackup/", "netbackup", ",", "/a,/b"],
    "poller.enabled": ["auto", "true", "maybe"],
    "log.level": ["info", "DEBUG", "trace"],
}


@st.composite
def settings_texts(draw: st.DrawFn) -> str:
    """Files of real keys with good and bad values, unknown keys and hibernate keys."""
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        key = draw(st.sampled_from([*_SETTING_VALUES, "hibernate.show_sql", "unknown.key"]))
        value = draw(st.sampled_from(_SETTING_VALUES.get(key, ["x"])) | st.text(max_size=10))
        separator = draw(st.sampled_from(["=", ":", " ", " = ", "\t"]))
        lines.append(f"{key}{separator}{value}")
    return "\n".join(lines)
