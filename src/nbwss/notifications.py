"""Job and image notifications: intake validation and grouping into payload elements.

Pure functions (spec section 3, NOTIFICATION). Validation runs at intake, before
anything is queued, so the outbox only ever holds notifications an endpoint can read;
the error names the field and where the input was (`line 7`, `item 2`). Fields the
spec does not name are kept as they are: a newer NetBackup may add some.
"""

from __future__ import annotations

import itertools
import json
import operator
from collections.abc import Iterable
from typing import Any, Final, NamedTuple

from nbwss import strictjson
from nbwss.errors import NotificationError

OBJECTS: Final = ("JOB", "IMAGE")
NOTIFICATION_TYPE: Final = "INFO"
# Levels the envelope puts above a notification's data: the message object, its payload
# array, the element object and the element's data array.
ENVELOPE_DEPTH: Final = 4
# How deep one notification's data may nest, so that the frame carrying it stays within
# the decoder's own limit (`strictjson.MAX_DEPTH`).
DATA_MAX_DEPTH: Final = strictjson.MAX_DEPTH - ENVELOPE_DEPTH


class Field(NamedTuple):
    """One required field: its type, and where the spec lists them, its allowed values.

    (Tuples, not dataclasses: `nbwss notify` imports this once per event, and must not
    pay for `dataclasses`.)"""

    name: str
    kind: type
    choices: tuple[str, ...] = ()
    may_be_empty: bool = False


FIELDS: Final[dict[str, tuple[Field, ...]]] = {
    "JOB": (
        Field("scheduleType", str),
        # Empty on real IMAGEDELETE and other jobs that run for no client.
        Field("clientName", str, may_be_empty=True),
        Field("status", int),
        Field("startTime", int),
        Field("state", str, ("QUEUED", "ACTIVE", "DONE")),
        # Restores have no policy (spec: "may be empty").
        Field("policyName", str, may_be_empty=True),
        Field("parentJobId", int),
        Field("jobId", int),
        Field("policyType", str),
        Field("jobType", str),
    ),
    "IMAGE": (
        Field("clientType", str),
        Field("clientName", str),
        Field("backupTime", int),
        Field("createdTime", int),
        Field("operationId", str, ("CREATE", "UPDATE", "DELETE", "NO_LOCAL_COPY_AVAILABLE")),
        Field("backupId", str),
    ),
}

Notification = tuple[str, dict[str, Any]]


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True, default=repr, allow_nan=True)  # display only
    return text if len(text) <= 40 else text[:37] + "..."


_MISSING: Final = object()


def _check_field(spec: Field, value: Any) -> str | None:
    """Why `value` does not fit `spec` (for the error message), or None when it does.

    `type(...) is` rather than isinstance: JSON gives exact ints and strs, and a bool is
    an int subclass that must not pass as a job id.
    """
    if spec.kind is int:
        if type(value) is not int:
            return f"is {_show(value)}, expected an integer"
        if value < 0:
            return f"is {value}, expected an integer >= 0"
        return None
    if type(value) is not str:
        return f"is {_show(value)}, expected a string"
    if spec.choices and value not in spec.choices:
        return f"is {_show(value)}, expected one of {', '.join(spec.choices)}"
    if not value.strip() and not spec.may_be_empty:
        return "is empty"
    return None


class _FastCheck(NamedTuple):
    """`FIELDS` of one object regrouped by rule, so that a notification that fits (nearly
    all of them) is passed in one loop per rule, without a call per field; the first
    failure is then named by the field-by-field loop of `validate`."""

    integers: tuple[str, ...]  # int (not bool), >= 0
    texts: tuple[str, ...]  # non-blank str
    maybe_empty: tuple[str, ...]  # str
    choices: tuple[tuple[str, frozenset[str]], ...]  # one of the spec's values


def _fast_check(fields: tuple[Field, ...]) -> _FastCheck:
    strs = [f for f in fields if f.kind is str and not f.choices]
    return _FastCheck(
        tuple(f.name for f in fields if f.kind is int),
        tuple(f.name for f in strs if not f.may_be_empty),
        tuple(f.name for f in strs if f.may_be_empty),
        tuple((f.name, frozenset(f.choices)) for f in fields if f.choices),
    )


# Public for `nbwss notify -`, which runs them inline (a call less per line).
FAST_CHECKS: Final = {obj: _fast_check(fields) for obj, fields in FIELDS.items()}


def all_fit_fast(check: _FastCheck, data: dict[str, Any]) -> bool:
    """Whether `_check_field` passes every field, at once (`type(...) is`: see there)."""
    get = data.get
    for name in check.integers:
        value = get(name)
        if type(value) is not int or value < 0:
            return False
    for name in check.texts:
        value = get(name)
        if type(value) is not str or not value.strip():
            return False
    for name in check.maybe_empty:
        if type(get(name)) is not str:
            return False
    for name, allowed in check.choices:
        value = get(name)
        if type(value) is not str or value not in allowed:
            return False
    return True


def validate(obj: Any, data: Any, where: str = "") -> Notification:
    """Check one notification; return it as `(object, data)` or raise `NotificationError`.

    `where` prefixes the message (e.g. "line 7") so a refused stream names its line.
    """
    fast = FAST_CHECKS.get(obj) if type(obj) is str else None
    if fast is not None and type(data) is dict and all_fit_fast(fast, data):
        return obj, data
    prefix = f"{where}: " if where else ""
    if obj not in OBJECTS:
        raise NotificationError(f"{prefix}object is {_show(obj)}, expected JOB or IMAGE")
    if not isinstance(data, dict):
        raise NotificationError(f"{prefix}{obj} data is {_show(data)}, expected an object")
    for spec in FIELDS[obj]:
        value = data.get(spec.name, _MISSING)
        problem = _check_field(spec, value)
        if problem is None:
            continue
        if value is _MISSING:
            raise NotificationError(f"{prefix}{obj} field {spec.name!r} is missing")
        raise NotificationError(f"{prefix}{obj} field {spec.name!r} {problem}")
    return obj, data


def check_depth(obj: str, data: Any, where: str = "") -> None:
    """Refuse data nested deeper than DATA_MAX_DEPTH: its frame would exceed the decoder's
    limit, and the endpoint would never acknowledge it."""
    prefix = f"{where}: " if where else ""
    try:
        strictjson.check_depth(data, DATA_MAX_DEPTH, f"{prefix}{obj} data")
    except strictjson.StrictJsonError as exc:
        raise NotificationError(str(exc)) from None


def check_wire(obj: str, data: dict[str, Any], where: str = "") -> None:
    """Refuse data built in memory (a mapped REST record) that no endpoint could decode:
    the rules `strictjson.loads` applies to intake text (NaN, Infinity, integers outside
    a Java long, unpaired surrogates, depth)."""
    prefix = f"{where}: " if where else ""
    try:
        strictjson.check_value(data, DATA_MAX_DEPTH, f"{prefix}{obj} data")
    except strictjson.StrictJsonError as exc:
        raise NotificationError(str(exc)) from None


def encode_data(data: dict[str, Any]) -> str:
    """The stored (and sent) form of one notification's data: compact JSON, UTF-8 as is.

    It is the exact text `messages.encode` produces for the same value, so a batch's
    frame size can be counted from the stored rows without encoding it.
    """
    if _encode_chunks is None:
        return _ENCODER.encode(data)
    return "".join(_encode_chunks(data, 0))


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# The C encoder `_ENCODER.encode` makes on every call, made once (intake encodes each of
# 100,000 lines). No cycle check: the data comes from parsed JSON (or is mapped from it),
# which cannot hold a cycle. None where the C accelerator is missing.
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_encode_chunks: Final[Any] = _c_make_encoder and _c_make_encoder(
    None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
)


def element(obj: str, data: list[dict[str, Any]]) -> dict[str, Any]:
    """One payload element: the notifications of one object type in one message."""
    return {"notificationType": NOTIFICATION_TYPE, "object": obj, "data": data}


def message_payloads(notifications: Iterable[Notification]) -> list[list[dict[str, Any]]]:
    """The payloads of the messages that carry `notifications`, caps aside (spec section 3).

    One element per object type per message, in the order of its first notification; a
    message ends before a type would come again after the other. JOB, JOB, IMAGE, JOB
    gives [JOB x2, IMAGE] then [JOB]: merging the two JOB runs would move the last job
    before the image, and the order is the guarantee. `delivery.build_batch` keeps the
    same rule over stored rows (and the caps); this is its plain statement.
    """
    payloads: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    for obj, run in itertools.groupby(notifications, key=operator.itemgetter(0)):
        if any(e["object"] == obj for e in current):
            payloads.append(current)
            current = []
        current.append(element(obj, [data for _, data in run]))
    return [*payloads, current] if current else payloads


def repeated_objects(payload: Iterable[Any]) -> list[str]:
    """The object types that have more than one element in a NOTIFICATION payload.

    Empty for every message nbwss sends; a cloud app written to the guide may index the
    payload by `object`, and would lose all but one element of a repeated type.
    """
    seen: set[Any] = set()
    repeated: list[str] = []
    for item in payload:
        if not isinstance(item, dict):
            continue  # not an element at all: another problem, for the caller to name
        obj = item.get("object")
        if obj in seen and str(obj) not in repeated:
            repeated.append(str(obj))
        seen.add(obj)
    return repeated
