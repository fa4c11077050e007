"""Strict JSON: the one parser for text that reaches an endpoint, and the wire's rules.

Used by the frame decoder (`messages.parse_json`) and by notification intake
(`nbwss notify`), so nothing is queued that the other side of the wire could not
decode. Every endpoint, ours or a Java one, must be able to read what we send; so JSON
is refused, with one line naming what and where, when it holds:

- NaN, Infinity or -Infinity (not JSON; Python would write them back literally);
- a number that overflows a double (`1e400` becomes inf);
- an integer outside a Java `long` (signed 64-bit); the digits are counted before any
  conversion, so a 5,000-digit integer never reaches Python's int-size limit;
- an unpaired UTF-16 surrogate (raw, or escaped as `\\ud800`): it cannot be encoded
  as UTF-8 again;
- a duplicate key (decoders disagree on which value wins);
- nesting deeper than a limit (decoders on both sides recurse);
- bytes that are not UTF-8.

Positions are byte offsets into the UTF-8 text (what `cmp` or a hex dump shows), not
character indexes. `check_value` applies the same rules to a value built in memory (a
REST API record mapped to a notification).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any, Final

from nbwss.errors import DecodeError

# The frame decoder's depth limit. Real messages nest four or five levels; anything far
# deeper is an attack on the stack of every consumer that walks a payload recursively.
MAX_DEPTH: Final = 64
# A Java long: what a Java endpoint reads a JSON integer into.
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1
_INT_MAX_DIGITS: Final = len(str(INT_MAX))
# A JSON escape of a UTF-16 surrogate: the only way an unpaired one gets past UTF-8 decoding.
# Patterns, not compiled regexes: compiling costs every process that imports this module
# (`nbwss notify`, once per event) a few milliseconds; `re` compiles them on first use
# (text holding a `\\u` escape) and caches them.
_SURROGATE_ESCAPE: Final = r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}"
_HIGH_THEN_LOW: Final = r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"


class StrictJsonError(DecodeError):
    """JSON refused by the strict rules; the message names the subject and the place."""


def utf8_problem(data: bytes, subject: str) -> str | None:
    """Why `data` is not UTF-8 (which byte, at which offset), or None when it is."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (
            f"{subject} is not valid UTF-8 ({exc.reason}): byte 0x{data[exc.start]:02X} "
            f"at offset {exc.start}"
        )
    return None


def _text_of(text: str | bytes, subject: str) -> str:
    if isinstance(text, bytes):
        try:
            return text.decode("utf-8")  # once: the check is the decoding
        except UnicodeDecodeError:
            raise StrictJsonError(utf8_problem(text, subject) or subject) from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        offset = len(text[: exc.start].encode("utf-8", "surrogatepass"))
        raise StrictJsonError(
            f"{subject} is not valid UTF-8 ({exc.reason}): character "
            f"U+{ord(text[exc.start]):04X} at offset {offset}"
        ) from None
    return text


def _byte_offset(text: str, index: int) -> int:
    return len(text[:index].encode("utf-8"))


def _shown_number(literal: str) -> str:
    digits = len(literal.lstrip("-"))
    return literal if len(literal) <= 24 else f"{literal[:20]}... ({digits} digits)"


class _Refused(ValueError):
    """Raised inside `json`'s hooks, which do not know the subject; `loads` names it."""

    def __init__(self, message: Callable[[str], str]) -> None:
        super().__init__()
        self.message = message


def _duplicate(key: str) -> Callable[[str], str]:
    return lambda subject: f"duplicate key {key!r} in {subject}"


def _out_of_range(value: int) -> Callable[[str], str]:
    return lambda subject: (
        f"integer {_shown_number(str(value))} in {subject} is outside the signed 64-bit range"
    )


def _check_integers(values: list[Any]) -> None:
    """Integers among `values` and in the arrays nested in them (the objects in them were
    checked when `json` built them)."""
    pending = [values]
    while pending:
        for value in pending.pop():
            kind = type(value)
            if kind is int:
                if not INT_MIN <= value <= INT_MAX:
                    raise _Refused(_out_of_range(value))
            elif kind is list:
                pending.append(value)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Each object as `json` builds it: no duplicate key, no integer outside a long."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(_duplicate(key))
            seen.add(key)
    for value in obj.values():  # the flat case inline: most objects are flat
        kind = type(value)
        if kind is int:
            if not INT_MIN <= value <= INT_MAX:
                raise _Refused(_out_of_range(value))
        elif kind is list:
            _check_integers(value)
    return obj


def _constant(name: str) -> Any:
    raise _Refused(lambda subject: f"{name} in {subject} is not valid JSON")


def _integer(literal: str) -> int:
    """Only for text with an integer past Python's digit limit: names it, shortened."""
    if len(literal) - literal.startswith("-") <= _INT_MAX_DIGITS:
        value = int(literal)
        if INT_MIN <= value <= INT_MAX:
            return value
    raise _Refused(
        lambda subject: f"integer {_shown_number(literal)} in {subject} is outside the signed "
        "64-bit range"
    )


def _number(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise _Refused(
            lambda subject: f"number {_shown_number(literal)} in {subject} overflows a double"
        )
    return value


# Decoders made once (json.loads builds one per call). Integers are converted by `json`
# itself (a Python call per integer would cost intake a fifth of its time) and checked
# per object in `_pairs`; only text whose integer Python cannot convert (past 4,300
# digits) is parsed again with the integer hook, to name it.
_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_number
)
_DECODER_NAMING_INTEGERS: Final = json.JSONDecoder(
    object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_number, parse_int=_integer
)


# `scan_once` is set by JSONDecoder.__init__ (the C scanner), not declared in its stubs.
_scan_once: Final[Callable[[str, int], tuple[Any, int]]] = getattr(_DECODER, "scan_once")  # noqa: B009
_JSON_WHITESPACE: Final = " \t\n\r"


# The same decoder without the per-object hook, for `_quick_decode`.
_plain_scan: Final[Callable[[str, int], tuple[Any, int]]] = getattr(  # noqa: B009
    json.JSONDecoder(parse_constant=_constant, parse_float=_number), "scan_once"
)
_QUICK_MAX_CHARS: Final = 64 * 1024


def _quick_decode(text: str) -> list[Any] | None:
    """`[value]` when `text` is one JSON value that keeps the rules, proved without a Python
    call per object (`_pairs`); None when not proved: then the full way parses it and names
    what is wrong, exactly as before. A plain decode keeps the last of duplicate keys, so
    duplicates are found by counting: each member of an object takes one ':' of the text,
    so as many members as colons means none was lost (a colon in a string, or a text over
    `_QUICK_MAX_CHARS`, leaves it to the full way, which costs that text a second parse)."""
    if len(text) > _QUICK_MAX_CHARS:
        return None
    try:
        value, end = _plain_scan(text, 0)
    except (ValueError, StopIteration, RecursionError):
        return None
    if end != len(text) and text[end:].strip(_JSON_WHITESPACE):
        return None
    members = 0
    pending: list[Any] = [[value]]
    while pending:
        node = pending.pop()
        if type(node) is dict:
            members += len(node)
            children: Any = node.values()
        else:
            children = node
        for child in children:
            kind = type(child)
            if kind is int:
                if not INT_MIN <= child <= INT_MAX:
                    return None
            elif kind is dict or kind is list:
                pending.append(child)
    return [value] if members == text.count(":") else None


# Digits as '0', the rest as is: a run of `_INT_MAX_DIGITS` zeros in the translation is a
# run of that many digits in the text, the least an integer outside a Java long needs.
_DIGITS_AS_ZERO: Final = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGIT_RUN: Final = b"0" * _INT_MAX_DIGITS


def quick_record(line: bytes, inner: str) -> dict[str, Any] | None:
    """The JSON object on `line` (UTF-8) when it is an object whose only container is an
    object under the key `inner` (a notification line: `{"object": "JOB", "data": {...}}`)
    and it keeps every rule; None when it does not, or when that is not proved here
    (another shape, a `\\u` escape): `loads` then parses it the full way and names what
    is wrong, as for any text.

    Proved in C calls, without a Python call per object or a walk of its values: with
    two `{` and no `[` in the line, the two objects are the only containers, so the depth
    is 2 and each of their members takes one of the line's colons (as many members as
    colons: no key was lost to a duplicate, as in `_quick_decode`); an integer outside a
    long has at least 19 digits; NaN, Infinity and a double's overflow are refused by the
    scanner's hooks. A colon in a string or a run of 19 digits leaves the line to the
    per-object hook (one more parse, as `loads` would make next); any `\\u` escape (a
    surrogate may hide in one) to `loads`, and so are bytes that are not UTF-8."""
    # The counts and searches on the bytes: a third cheaper than on the decoded text.
    if line.count(b"{") != 2 or b"[" in line or b"\\u" in line or len(line) > _QUICK_MAX_CHARS:
        return None
    try:
        text = line.decode("utf-8")
        value, end = _plain_scan(text, 0)
    except (ValueError, StopIteration):  # UnicodeDecodeError is a ValueError
        return None
    if end != len(text) and text[end:].strip(_JSON_WHITESPACE):
        return None
    if type(value) is not dict:
        return None
    data = value.get(inner)
    if type(data) is not dict:
        return None
    if len(value) + len(data) == line.count(b":") and (
        _LONG_DIGIT_RUN not in line.translate(_DIGITS_AS_ZERO)
    ):
        return value
    try:
        checked: dict[str, Any] = _scan_once(text, 0)[0]  # duplicates and ranges, per object
    except ValueError:  # `_Refused` among them: `loads` names it
        return None
    return checked


def _decode(text: str) -> Any:
    quick = _quick_decode(text)
    if quick is not None:
        return quick[0]
    try:
        # `JSONDecoder.decode`'s own steps, minus its two Python-level calls and two regex
        # matches per text (a fifth of intake's parsing): a value from the first character,
        # then only JSON whitespace. Anything else (leading whitespace, extra data, bad
        # JSON) is parsed again by `decode`, for its exact error.
        try:
            value, end = _scan_once(text, 0)
        except (StopIteration, json.JSONDecodeError):
            value, end = None, -1
        if end != len(text) and (end < 0 or text[end:].strip(_JSON_WHITESPACE)):
            value = _DECODER.decode(text)
    except _Refused:
        raise
    except json.JSONDecodeError:
        raise
    except ValueError:  # an integer past Python's digit limit
        value = _DECODER_NAMING_INTEGERS.decode(text)
    if type(value) is list:
        _check_integers(value)
    elif type(value) is int:
        _check_integers([value])
    return value


def loads(
    text: str | bytes,
    subject: str = "JSON text",
    max_depth: int = MAX_DEPTH,
    *,
    brackets: int | None = None,
) -> Any:
    """Parse `text` under the strict rules; `subject` names it in errors ("line 7").

    `brackets`: how many `[` and `{` the text holds, when the caller has counted them
    already (intake does, for its own depth limit): the depth is walked only past
    `max_depth` of them, and the text is not counted again."""
    if type(text) is bytes:  # `_text_of`'s common case, without the call
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            text = _text_of(text, subject)  # raises, naming the byte
    else:
        text = _text_of(text, subject)
    if brackets is None:
        brackets = text.count("[") + text.count("{")
    try:
        value = _decode(text)
    except _Refused as exc:
        raise StrictJsonError(exc.message(subject)) from None
    except json.JSONDecodeError as exc:
        raise StrictJsonError(
            f"{subject} is not JSON: {exc.msg} at offset {_byte_offset(text, exc.pos)}"
        ) from None
    except RecursionError:
        raise StrictJsonError(f"{subject} is nested deeper than {max_depth} levels") from None
    if brackets > max_depth:  # else it cannot nest that deep
        check_depth(value, max_depth, subject)
    if "\\u" in text and re.search(_SURROGATE_ESCAPE, text):
        _check_surrogate_escapes(text, value, subject)
    return value


def _check_surrogate_escapes(text: str, value: Any, subject: str) -> None:
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        pairs = {m.start() for m in re.finditer(_HIGH_THEN_LOW, text)}
        where = ""
        for match in re.finditer(_SURROGATE_ESCAPE, text):
            if match.start() not in pairs and match.start() - 6 not in pairs:
                where = f" at offset {_byte_offset(text, match.start())}"
                break
        raise StrictJsonError(
            f"{subject} holds an unpaired UTF-16 surrogate escape{where}"
        ) from None


def check_depth(value: Any, max_depth: int, subject: str) -> None:
    """Refuse containers nested deeper than `max_depth`, one level at a time (no recursion).

    Written for speed as well: a 16 MiB frame of five million empty arrays takes about
    half a second here, a fraction of what `json.loads` itself spends on it.
    """
    level = [value] if type(value) in (dict, list) else []
    for _ in range(max_depth):
        if not level:
            return
        deeper = []
        for node in level:
            for child in node.values() if type(node) is dict else node:
                if type(child) is dict or type(child) is list:
                    deeper.append(child)
        level = deeper
    if level:
        raise StrictJsonError(f"{subject} is nested deeper than {max_depth} levels")


def check_value(value: Any, max_depth: int, subject: str) -> None:
    """The strict rules for a value built in memory: what `loads` would have refused.

    Walked without recursion; keys must be strings (JSON has no other kind).
    """
    check_depth(value, max_depth, subject)
    pending = [value]
    while pending:
        node = pending.pop()
        kind = type(node)
        if kind is dict:
            for key in node:
                if type(key) is not str:
                    raise StrictJsonError(f"key {key!r} in {subject} is not a string")
                _check_string(key, subject)
            pending.extend(node.values())
        elif kind is list:
            pending.extend(node)
        elif kind is str:
            _check_string(node, subject)
        elif kind is int:
            if not INT_MIN <= node <= INT_MAX:
                shown = str(node) if node.bit_length() < 128 else f"of {node.bit_length()} bits"
                raise StrictJsonError(
                    f"integer {shown} in {subject} is outside the signed 64-bit range"
                )
        elif kind is float:
            if not math.isfinite(node):
                raise StrictJsonError(f"{node!r} in {subject} is not valid JSON")
        elif node is not None and kind is not bool:
            raise StrictJsonError(f"{kind.__name__} in {subject} is not a JSON value")


def _check_string(text: str, subject: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise StrictJsonError(
            f"{subject} holds an unpaired UTF-16 surrogate (U+{ord(text[exc.start]):04X})"
        ) from None


def dumps(value: Any) -> str:
    """Compact JSON as the wire carries it: UTF-8 as is, never NaN or Infinity."""
    return _ENCODER.encode(value)


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
