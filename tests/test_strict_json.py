"""Strict JSON everywhere text reaches an endpoint (issue 11, item 1).

`strictjson` is the one parser of the wire and of intake; its refusals are tested here
as properties, and a scan of the source keeps every encoder from writing NaN/Infinity.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nbwss import strictjson
from nbwss.messages import MessageType, decode, encode, request
from nbwss.notifications import DATA_MAX_DEPTH, element
from nbwss.strictjson import INT_MAX, INT_MIN, MAX_DEPTH, StrictJsonError

SRC = Path(__file__).resolve().parent.parent / "src" / "nbwss"


def refusal(text: str | bytes, max_depth: int = MAX_DEPTH) -> str:
    with pytest.raises(StrictJsonError) as caught:
        strictjson.loads(text, "line 3", max_depth)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"x": NaN}', "NaN in line 3 is not valid JSON"),
        ('{"x": Infinity}', "Infinity in line 3 is not valid JSON"),
        ('[-Infinity]', "-Infinity in line 3 is not valid JSON"),
        ('{"x": 1e400}', "number 1e400 in line 3 overflows a double"),
        ('{"x": -1.5e309}', "number -1.5e309 in line 3 overflows a double"),
        ('{"x": 9223372036854775808}', "integer 9223372036854775808 in line 3 is outside"),
        ('{"x": -9223372036854775809}', "integer -9223372036854775809 in line 3 is outside"),
        ("[[1, [18446744073709551616]]]", "integer 18446744073709551616 in line 3 is outside"),
        ('{"a": [{"b": [1, -9223372036854775809]}]}', "integer -9223372036854775809 in line"),
        ("9223372036854775808", "integer 9223372036854775808 in line 3 is outside"),
        ('{"x": 00000000000000000001}', "is not JSON"),
        ('{"x": ' + "9" * 5000 + "}", "integer 99999999999999999999... (5000 digits) in line 3"),
        ('{"x": "\\ud800"}', "line 3 holds an unpaired UTF-16 surrogate escape at offset 7"),
        ('{"x": "\\udc00\\ud800"}', "unpaired UTF-16 surrogate escape at offset 7"),
        ('{"x": "\\ud800 \\udc00"}', "unpaired UTF-16 surrogate escape at offset 7"),
        ('{"x": "\ud800"}', "line 3 is not valid UTF-8 (surrogates not allowed): character U+D800"),
        (b'{"x": "caf\xe9"}', "line 3 is not valid UTF-8 (invalid continuation byte): byte 0xE9 at"
         " offset 10"),
        ('{"x": 1, "x": 2}', "duplicate key 'x' in line 3"),
        ('{"{0}": 1, "{0}": 2}', "duplicate key '{0}' in line 3"),
        ('{"é": 1, "y": }', "line 3 is not JSON: Expecting value at offset 15"),
        ("[" * 65 + "]" * 65, "line 3 is nested deeper than 64 levels"),
        ("[" * 100_000 + "]" * 100_000, "line 3 is nested deeper than 64 levels"),
    ],
)
def test_refusals_name_what_and_where(text: str | bytes, expected: str) -> None:
    assert expected in refusal(text)


def test_the_edges_of_the_ranges_are_accepted() -> None:
    text = json.dumps([INT_MIN, INT_MAX, 1.7976931348623157e308, -0.0, "\U0001f600"])
    assert strictjson.loads(text) == json.loads(text)
    assert strictjson.loads('"\\ud83d\\ude00"') == "\U0001f600"  # an escaped pair is one character
    assert strictjson.loads('"\\\\ud800"') == "\\ud800"  # an escaped backslash, no surrogate
    assert strictjson.loads("[" * 64 + "]" * 64) is not None


# Any value the strict parser accepts must encode again and decode to itself.
_scalars = (
    st.none() | st.booleans() | st.integers(INT_MIN, INT_MAX)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner,
                                                                           max_size=4),
    max_leaves=20,
)


@given(_values)
def test_what_is_accepted_round_trips(value: Any) -> None:
    text = strictjson.dumps(value)
    assert strictjson.loads(text) == value
    strictjson.check_value(value, MAX_DEPTH, "value")


@given(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", str(2**63),
                        str(-(2**63) - 1), "1" * 4301, '"\\udfff"']),
       st.integers(0, 5))
def test_an_unencodable_value_is_refused_at_any_depth(literal: str, depth: int) -> None:
    text = '{"a":' * depth + literal + "}" * depth
    refusal(text)


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, -math.inf, 2**63, -(2**63) - 1, pytest.param(10**5000, id="huge"),
     "\udc80", {"k": [1, {"deep": math.nan}]}, {1: "not a string key"}, {"x": b"bytes"}],
)
def test_check_value_refuses_what_loads_would(value: Any) -> None:
    with pytest.raises(StrictJsonError):
        strictjson.check_value(value, MAX_DEPTH, "record")


def test_dumps_never_writes_nan() -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        strictjson.dumps({"x": math.inf})


def test_notification_data_at_its_limit_still_decodes_inside_a_frame() -> None:
    """The envelope's levels are counted: the deepest data intake accepts decodes."""
    data: Any = {"jobId": 1}
    for _ in range(DATA_MAX_DEPTH - 1):
        data = {"n": data}
    strictjson.check_depth(data, DATA_MAX_DEPTH, "data")
    frame = encode(request(MessageType.NOTIFICATION, [element("JOB", [data])], 1.0))
    payload = decode(frame).payload
    assert isinstance(payload, list)
    assert payload[0]["data"][0] == data
    deeper = encode(request(MessageType.NOTIFICATION, [element("JOB", [{"n": data}])], 1.0))
    with pytest.raises(StrictJsonError, match="nested deeper than 64"):
        decode(deeper)


# -- every encoder refuses NaN ------------------------------------------------------------

# Functions whose text no endpoint reads: a value shown in an error line, a record's
# digest (a hash of whatever the REST API sent, NaN included), and the stand-in REST
# API's pages (a test makes a record hold what a faulty API could send).
DISPLAY_ONLY = {("messages.py", "_show"), ("notifications.py", "_show"),
                ("mapping.py", "record_digest"), ("restapi.py", "_api_json"),
                # a log line, as structlog's own renderer (and its fallback encoder)
                ("logs.py", "_render_json"), ("logs.py", "_make_json_encoder")}


def _encoder_calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """(enclosing function, call) for every json.dump/dumps/JSONEncoder call."""
    found: list[tuple[str, ast.Call]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = (
                child.name
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                else function
            )
            if (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Attribute)
                and child.func.attr in ("dump", "dumps", "JSONEncoder")
                and isinstance(child.func.value, ast.Name)
                and child.func.value.id == "json"
            ):
                found.append((function, child))
            visit(child, name)

    visit(tree, "<module>")
    return found


def test_every_json_encoder_in_the_source_refuses_nan() -> None:
    """A new `json.dumps` without `allow_nan=False` fails here: Python's default writes
    NaN/Infinity, which no endpoint can decode and which would block a server group."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        for function, call in _encoder_calls(ast.parse(path.read_text(encoding="utf-8"))):
            flags = {k.arg: k.value for k in call.keywords}
            value = flags.get("allow_nan")
            refuses = isinstance(value, ast.Constant) and value.value is False
            if not refuses and (path.name, function) not in DISPLAY_ONLY:
                offenders.append(f"{path.relative_to(SRC)}:{call.lineno} in {function}")
    assert offenders == []


def test_the_scan_finds_encoders() -> None:
    """The scan above is not vacuous: it sees a call without the flag."""
    calls = _encoder_calls(ast.parse("import json\ndef f():\n    return json.dumps(1)\n"))
    assert [(f, c.lineno) for f, c in calls] == [("f", 3)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (' {"a": 1}', {"a": 1}),
        ('{"a": 1} \t\r\n', {"a": 1}),
        ("\n[1, 2]\n", [1, 2]),
        ('"x"', "x"),
        ("7", 7),
    ],
)
def test_json_whitespace_around_a_value_is_accepted(text: str, expected: object) -> None:
    assert strictjson.loads(text) == expected
    assert strictjson.loads(text.encode()) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1} x', "line 3 is not JSON: Extra data at offset 9"),
        ('{"a": 1}{}', "line 3 is not JSON: Extra data at offset 8"),
        ("[1] 2", "line 3 is not JSON: Extra data at offset 4"),
        ('{"a": 1}\u00a0', "line 3 is not JSON: Extra data at offset 8"),
        ("", "line 3 is not JSON: Expecting value at offset 0"),
        ("  ", "line 3 is not JSON: Expecting value at offset 2"),
        ('{"a": }', "line 3 is not JSON: Expecting value at offset 6"),
    ],
)
def test_text_that_is_not_one_json_value_is_named_with_its_offset(
    text: str, message: str
) -> None:
    with pytest.raises(strictjson.StrictJsonError) as caught:
        strictjson.loads(text, "line 3")
    assert str(caught.value) == message


class _Pairs(list):  # type: ignore[type-arg]
    """An object as written: its members in order, keys possibly repeated."""


def _written(value: Any) -> str:
    if isinstance(value, _Pairs):
        return "{" + ", ".join(f"{json.dumps(k)}: {_written(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_written(v) for v in value) + "]"
    return json.dumps(value)


_KEYS = st.sampled_from(["a", "b", "a:b", ":"])
_WRITTEN = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.sampled_from(["x", "x:y"]),
    lambda children: st.lists(children, max_size=3)
    | st.lists(st.tuples(_KEYS, children), max_size=3).map(_Pairs),
    max_leaves=12,
)


@given(_WRITTEN)
def test_the_quick_parse_accepts_only_what_the_full_parse_accepts(written: Any) -> None:
    """Duplicate keys and integers outside a long are proved absent without the per-object
    hook, or left to the full parse: both must agree on every text the quick one takes."""
    text = _written(written)
    quick = strictjson._quick_decode(text)
    try:
        full = strictjson._DECODER.decode(text)
    except ValueError:
        assert quick is None
        return
    assert quick is None or quick == [full]


def test_a_duplicate_key_is_refused_beside_a_colon_in_a_string() -> None:
    with pytest.raises(strictjson.StrictJsonError, match="duplicate key 'a' in line 3"):
        strictjson.loads('{"a": 1, "u": "http://x", "a": 2}', "line 3")
    with pytest.raises(strictjson.StrictJsonError, match="duplicate key 'a' in line 3"):
        strictjson.loads('{"d": {"a": 1, "a": 2}}', "line 3")
    with pytest.raises(strictjson.StrictJsonError, match="outside the signed 64-bit range"):
        strictjson.loads('{"d": [1, {"n": 9223372036854775808}]}', "line 3")
