"""`strictjson.quick_record`, intake's fast path for a notification line (issue 14, item 4):
it may decline any line, but what it takes must be exactly what `strictjson.loads`
takes, value for value (every rule of issue 11 kept)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nbwss import strictjson
from nbwss.commands import notify
from nbwss.errors import NotificationError

_KEYS = st.sampled_from(["a", "b", "a:b", ":", "data", "object"])
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**65), 2**65)
    | st.sampled_from([2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 10**18, 1.5, 1e308])
    | st.sampled_from(["x", "x:y", "{", "[", "é", "\\u00e9", "\\ud800", "1" * 19])
)
_LITERALS = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "[]", "{}"])


def _member(key: str, value: Any) -> str:
    if isinstance(value, str) and value.startswith("\\u"):
        return f'"{key}": "{value}"'  # the escape as written, not escaped again
    return f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}"


def _object(members: list[tuple[str, Any]], raw: list[tuple[str, str]]) -> str:
    parts = [_member(k, v) for k, v in members] + [f"{json.dumps(k)}: {t}" for k, t in raw]
    return "{" + ", ".join(parts) + "}"


@st.composite
def _lines(draw: st.DrawFn) -> bytes:
    data = _object(
        draw(st.lists(st.tuples(_KEYS, _SCALARS), max_size=5)),
        draw(st.lists(st.tuples(_KEYS, _LITERALS), max_size=1)),
    )
    outer: list[tuple[str, str]] = [("object", '"JOB"'), ("data", data)]
    outer += draw(st.lists(st.tuples(_KEYS, _SCALARS.map(json.dumps)), max_size=2))
    order = draw(st.permutations(outer))
    text = "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in order) + "}"
    return (text + draw(st.sampled_from(["", "\n", " \r\n", " x"]))).encode()


@given(_lines())
def test_a_quick_record_is_what_the_full_parse_gives(line: bytes) -> None:
    quick = strictjson.quick_record(line, "data")
    try:
        full = strictjson.loads(line, "line 1")
    except strictjson.StrictJsonError:
        assert quick is None
        return
    assert quick is None or quick == full


@pytest.mark.parametrize(
    "line",
    [
        b'{"object": "JOB", "data": {"jobId": 1, "jobId": 2}}',  # duplicate key
        b'{"object": "JOB", "object": "IMAGE", "data": {"jobId": 1}}',
        b'{"object": "JOB", "data": {"a": "x:y", "jobId": 1, "jobId": 2}}',  # and a colon
        b'{"object": "JOB", "data": {"jobId": 9223372036854775808}}',
        b'{"object": "JOB", "data": {"jobId": -9223372036854775809}}',
        b'{"object": "JOB", "data": {"x": 1e400}}',
        b'{"object": "JOB", "data": {"x": NaN}}',
        b'{"object": "JOB", "data": {"x": "\\ud800"}}',
        b'{"object": "JOB", "data": {"x": "\xff"}}',
        b'{"object": "JOB", "data": {"x": 1}} {}',
    ],
)
def test_a_line_the_rules_refuse_is_never_taken_quickly(line: bytes) -> None:
    assert strictjson.quick_record(line, "data") is None
    with pytest.raises(strictjson.StrictJsonError):
        strictjson.loads(line, "line 1")


@pytest.mark.parametrize(
    "line",
    [
        b'{"object": "JOB", "data": {"jobId": 9223372036854775807, "n": -9223372036854775808}}',
        b'{"object": "JOB", "data": {"startTime": "2026-12-02T17:18:49Z", "jobId": 1}}\n',
        b'{"data": {"jobId": 1, "clientName": "\xc3\xa9"}, "object": "IMAGE", "extra": 1}',
    ],
)
def test_a_line_the_rules_take_is_taken_quickly(line: bytes) -> None:
    assert strictjson.quick_record(line, "data") == strictjson.loads(line, "line 1")


_JOB = {
    "scheduleType": "ST_FULL", "clientName": "c1", "status": 0, "startTime": 1459829698,
    "state": "DONE", "policyName": "p", "parentJobId": 1, "jobId": 7, "policyType": "VMWARE",
    "jobType": "BACKUP",
}  # fmt: skip


@st.composite
def _notification_lines(draw: st.DrawFn) -> bytes:
    """A JOB line, often valid, with members added, replaced or repeated."""
    members = list(_JOB.items()) + draw(
        st.lists(st.tuples(_KEYS | st.sampled_from(sorted(_JOB)), _SCALARS), max_size=3)
    )
    data = _object(draw(st.permutations(members)), [])
    text = '{"object": "JOB", "data": ' + data + "}"
    return (text + draw(st.sampled_from(["", "\n", "\r\n"]))).encode()


def _queued(line: bytes) -> tuple[str, str] | str:
    try:
        (row,) = notify.rows_from_lines([line], 1 << 20)
        return row
    except NotificationError as exc:
        return str(exc)


def _the_full_way(line: bytes) -> tuple[str, str] | str | None:
    try:
        return notify._line_row(line, "line 1")
    except NotificationError as exc:
        return str(exc)


@given(_notification_lines() | _lines())
def test_a_line_is_queued_or_refused_alike_the_quick_way_and_the_full_way(line: bytes) -> None:
    assert _queued(line) == _the_full_way(line)
