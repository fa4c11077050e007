"""Structured logs: one event per line, JSON for the journal, console for a terminal.

Redaction happens here, in one processor, so no call site can forget it: fields whose
name says secret are masked, and every registered secret (each token the daemon
decrypts) is scrubbed from every string value, wherever it turns up. Then every string
value longer than `MAX_FIELD_LENGTH` characters is cut, saying how much was cut: much of
what is logged comes from the peer (ids, reasons, URLs), and a 4 MB id must not become
a 4 MB line (a traceback may run to `MAX_TRACEBACK_LENGTH`).

Under systemd (stderr is the journal's stream, `$JOURNAL_STREAM`), each line starts
with its syslog priority (`<3>` error ... `<7>` debug), which journald strips and
stores, so `journalctl -p warning -u nbwss` works. An admin command on a terminal
writes only warnings and errors: its info events are what its sentence already says.

structlog (which pulls in asyncio) is imported on the first event logged, not with this
module: `nbwss notify`, started once per event by NetBackup's scripts, usually logs
nothing, and must not pay ~100 ms for it. `configure` before that only records the set-up.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

REDACTED = "[redacted]"
# Field names whose values are never logged, compared case-insensitively.
SECRET_FIELDS = frozenset(
    {"token", "authorization", "password", "body", "parameters", "api_key", "apikey", "cookie"}
)
_MIN_SECRET_LENGTH = 4
MAX_FIELD_LENGTH = 1024
MAX_TRACEBACK_LENGTH = 16384

_secrets: set[str] = set()
# Longest first, so a secret that contains another is masked whole; replaced (never
# mutated) under the lock, so a reader in another thread always sees a complete tuple.
_ordered_secrets: tuple[str, ...] = ()
_secrets_lock = threading.Lock()
_PLAIN = (int, float, bool, type(None))


def register_secret(secret: str) -> None:
    """Scrub `secret` from every later log event (tokens, API keys, passwords, JWTs)."""
    global _ordered_secrets
    if len(secret) >= _MIN_SECRET_LENGTH and secret not in _secrets:
        # Known already: no re-sort (the supervisor registers every live host's token
        # at each re-read of the endpoints: 1,000 sorts of 1,000 a minute at 1,000 groups).
        with _secrets_lock:
            _secrets.add(secret)
            _ordered_secrets = tuple(sorted(_secrets, key=len, reverse=True))


def _scrub_text(value: str) -> str:
    for secret in _ordered_secrets:
        if secret in value:
            value = value.replace(secret, REDACTED)
    return value


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, dict):
        return {
            _scrub_key(k): REDACTED if _is_secret_name(k) else _scrub(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if isinstance(value, _PLAIN) or not _ordered_secrets:
        return value
    # Any other object (an exception, a URL) is rendered with repr(): scrub that text.
    text = repr(value)
    scrubbed = _scrub_text(text)
    return value if scrubbed == text else scrubbed


def _scrub_key(key: Any) -> Any:
    """A mapping's key may hold a secret too (a header dict keyed by token, say)."""
    return _scrub_text(key) if isinstance(key, str) else key


def _is_secret_name(name: Any) -> bool:
    return isinstance(name, str) and name.lower() in SECRET_FIELDS


# Values passed through as they are by `redact` and `truncate` (exact types: a subclass
# may render differently and takes the long way).
_PLAIN_TYPES = frozenset({int, float, bool, type(None)})


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secret fields, scrub registered secrets everywhere.

    Runs for every event (each COMMAND, each batch), so plain values take a short path."""
    secrets = _ordered_secrets
    for key, value in event_dict.items():  # values replaced in place: the keys stay
        # Keys are the call's keyword names, so strings (`_is_secret_name`, inline).
        if key.lower() in SECRET_FIELDS:
            event_dict[key] = REDACTED
        elif type(value) is str:
            if secrets:
                event_dict[key] = _scrub_text(value)
        elif type(value) not in _PLAIN_TYPES:
            event_dict[key] = _scrub(value)
    return event_dict


def _cut_text(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}[... {len(text) - limit} characters cut]"


def _cut(value: Any) -> Any:
    if isinstance(value, str):
        return _cut_text(value, MAX_FIELD_LENGTH)
    if isinstance(value, bytes | bytearray):
        return _cut_text(repr(bytes(value)), MAX_FIELD_LENGTH) if len(value) > 256 else value
    if isinstance(value, dict):
        return {_cut(k): _cut(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_cut(v) for v in value]
    return value


def truncate(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor, after `redact`: cut every long string value (see the module
    docstring); a secret is masked before it can be cut in half."""
    for key, value in event_dict.items():  # values replaced in place: the keys stay
        if type(value) not in _PLAIN_TYPES:
            event_dict[key] = _cut_field(key, value)
    return event_dict


def _cut_field(key: str, value: Any) -> Any:
    """One field's value cut as `truncate` cuts it (a traceback has a longer limit)."""
    if type(value) is str:
        return _cut_text(value, MAX_TRACEBACK_LENGTH if key == "exception" else MAX_FIELD_LENGTH)
    if key == "exception" and isinstance(value, str):
        return _cut_text(value, MAX_TRACEBACK_LENGTH)
    return _cut(value)


def redact_and_truncate(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: `redact`, then `truncate`, in one pass over the fields (the
    chain runs this: every COMMAND logs an event). The same result as the two in turn
    (a test compares them); a field's secret is masked before its value is cut."""
    secrets = _ordered_secrets
    for key, value in event_dict.items():  # values replaced in place: the keys stay
        if key.lower() in SECRET_FIELDS:
            event_dict[key] = REDACTED
        elif type(value) is str:
            cleaned = _scrub_text(value) if secrets else value
            limit = MAX_TRACEBACK_LENGTH if key == "exception" else MAX_FIELD_LENGTH
            if len(cleaned) > limit:
                cleaned = _cut_text(cleaned, limit)
            if cleaned is not value:
                event_dict[key] = cleaned
        elif type(value) not in _PLAIN_TYPES:
            event_dict[key] = _cut_field(key, _scrub(value))
    return event_dict


_stream: TextIO | None = None  # where `configure` last pointed the logs

# syslog(3) priorities, as journald reads them from a `<N>` line prefix (sd-daemon(3)).
SYSLOG_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


def reconfigure(level: str, fmt: str) -> None:
    """New level and format (a reload), on the stream the logs already go to."""
    configure(level, fmt, _stream)


def is_journal(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` is the journal's: `$JOURNAL_STREAM` names its device and inode."""
    expected = (os.environ if env is None else env).get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    return expected == f"{status.st_dev}:{status.st_ino}"


def _render_json(_: Any, __: str, event_dict: Mapping[str, Any]) -> str:
    """structlog processor, the last: one event as a JSON line, as
    `json.JSONEncoder(default=repr).encode` writes it (what JSON cannot hold is written
    as its repr()), by json's C encoder made once: `encode` makes one per call, and
    structlog's `JSONRenderer` adds a layer (every COMMAND logs an event, issue 14)."""
    global _json_encoder
    if _json_encoder is None:
        _json_encoder = _make_json_encoder()
    return "".join(_json_encoder(event_dict, 0))


def _make_json_encoder() -> Any:
    """CPython's C encoder (what `json.dumps` runs), made once; where it is missing or its
    private signature has changed, json's own encoder, which gives the same text."""
    try:
        from _json import make_encoder
        from json.encoder import encode_basestring_ascii

        # No circular-reference markers: `redact` and `truncate` walk every value first,
        # and a value that holds itself stops there (RecursionError) before it gets here.
        return make_encoder(
            None, repr, encode_basestring_ascii, None, ": ", ", ", False, False, True
        )
    except (ImportError, TypeError):
        import json

        return json.JSONEncoder(default=repr).iterencode


_json_encoder: Any = None

# What structlog's `add_log_level` writes for a method name (`map_method_name`).
_LEVEL_OF_METHOD = {"warn": "warning", "exception": "error"}
# The second the cached time stamp text is for, and that text (`_stamp`): one tuple,
# replaced whole, so a thread logging meanwhile never pairs one second with another's text.
_stamped: tuple[int, str] = (-1, "")


def _stamp(_: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: `level`, then `timestamp` (as `TimeStamper(fmt="iso", utc=True)`
    writes it: `2026-12-02T17:31:37.123456Z`, no fraction on a whole second), then a
    traceback for `exc_info` (`format_exc_info`), in one step. The date and time of day
    are formatted once a second: every COMMAND logs an event (issue 14)."""
    global _stamped
    event_dict["level"] = _LEVEL_OF_METHOD.get(method, method)
    # Nanoseconds, floored to microseconds as `datetime.now` does: a float's last
    # microsecond is rounded (one line in ten would differ from structlog's).
    second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    stamped_second, prefix = _stamped
    if second != stamped_second:
        import datetime

        prefix = datetime.datetime.fromtimestamp(second, datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%S"
        )
        _stamped = (second, prefix)
    micro = nanoseconds // 1000
    event_dict["timestamp"] = f"{prefix}.{micro:06d}Z" if micro else f"{prefix}Z"
    if "exc_info" in event_dict:
        from structlog.processors import format_exc_info

        return format_exc_info(_, method, event_dict)
    return event_dict


def _with_priority(renderer: Any) -> Any:
    """Render, then prefix the line with its syslog priority for journald."""

    def render(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        priority = SYSLOG_PRIORITY.get(str(event_dict.get("level", method)), 6)
        return f"<{priority}>{renderer(logger, method, event_dict)}"

    return render


def _is_terminal(stream: TextIO) -> bool:
    """`stream.isatty()`, False for a stream that is closed: a reload must not fail on
    where the logs went (stderr closed under the daemon, a test's capture ended)."""
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False


def configure(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    *,
    admin: bool = False,
) -> None:
    """Set up structlog once per process; `fmt` is json, console, or auto (by terminal).

    `admin`: a command whose result is a sentence; on a terminal, at the default level,
    only its warnings and errors are logged. Applied at once when structlog is loaded
    already, else with the first event logged."""
    global _stream, _pending
    stream = _stream = stream or sys.stderr
    terminal = _is_terminal(stream)
    if admin and level == "info" and terminal:
        level = "warning"
    if fmt == "auto":
        fmt = "console" if terminal else "json"
    _pending = (level, fmt, stream)
    if "structlog" in sys.modules:
        _apply_pending()


# The set-up `configure` recorded and structlog has not been given yet.
_pending: tuple[str, str, TextIO] | None = None


def _apply_pending() -> None:
    global _pending
    if _pending is None:
        return
    level, fmt, stream = _pending
    _pending = None
    import logging

    import structlog

    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else _render_json
    )
    if is_journal(stream):
        renderer = _with_priority(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _stamp,  # level, time stamp and traceback
            redact_and_truncate,
            renderer,
        ],
        wrapper_class=_lean_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        # write() and flush() a line: print() costs more for the same text.
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


# structlog's level methods and their numbers (`structlog.make_filtering_bound_logger`).
_LEVEL_METHODS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def _lean_bound_logger(min_level: int) -> Any:
    """structlog's filtering bound logger for `min_level`, each enabled level method
    doing in one call what structlog's does in three (the method, `_proxy_to_logger`,
    `_process_event`, each passing the fields on as a new dict): every COMMAND logs an
    event (issue 14). Same events, same processors, same logger method called."""
    import structlog

    base = structlog.make_filtering_bound_logger(min_level)
    methods = {
        name: _lean_method(base, name)
        for name, level in _LEVEL_METHODS.items()
        if level >= min_level
    }
    return type("LeanBoundLogger", (base,), methods)


def _lean_method(base: Any, name: str) -> Any:
    from structlog import DropEvent

    structlogs_own = getattr(base, name)

    def method(self: Any, event: str, *args: Any, **fields: Any) -> Any:
        if args:  # %-interpolation (nbwss logs fields, not formats): structlog's way
            return structlogs_own(self, event, *args, **fields)
        # `fields` is this call's own dict: the context's fields first, the call's win.
        event_dict: Any = {**self._context, **fields} if self._context else fields
        if event is not None:
            event_dict["event"] = event
        try:
            for processor in self._processors:
                event_dict = processor(self._logger, name, event_dict)
        except DropEvent:
            return None
        write = getattr(self._logger, name)
        if isinstance(event_dict, str | bytes | bytearray):
            return write(event_dict)
        if isinstance(event_dict, tuple):
            return write(*event_dict[0], **event_dict[1])
        return write(**event_dict)

    method.__name__ = name
    return method


class _Logger:
    """A module's logger, made before logging is: structlog is loaded (and the recorded
    set-up applied) when a method is first used, e.g. `log.info(...)`.

    The bound logger is assembled once per structlog configuration, not once per event
    as structlog's own lazy proxy does (a tenth of a COMMAND's cost in the proxy): it is
    made again whenever `configure`, a reload or a test's `capture_logs` changes it.
    `bind` answers one of these too, so a live connection's logger follows a reload."""

    __slots__ = ("_bound", "_context", "_made_with", "_name")

    def __init__(self, name: str, context: Mapping[str, Any] | None = None) -> None:
        self._name = name
        self._context: Mapping[str, Any] = context or {}
        self._bound: Any = None
        self._made_with: tuple[object, ...] = ()

    def bind(self, **values: Any) -> _Logger:
        """This logger with `values` added to every event, made lazily like this one."""
        return _Logger(self._name, {**self._context, **values})

    def __getattr__(self, method: str) -> Any:
        import structlog

        if _pending is not None:
            _apply_pending()
        config = structlog.get_config()
        made_with = self._made_with
        # Compared by identity, term by term (the cost of every event): a new
        # configuration always brings new objects, and the references held here keep an
        # old one's ids from being reused.
        if not (
            made_with
            and made_with[0] is config["processors"]
            and made_with[1] is config["wrapper_class"]
            and made_with[2] is config["logger_factory"]
            and made_with[3] is config["context_class"]
        ):
            self._bound = structlog.get_logger(self._name).bind(**self._context)
            self._made_with = (config["processors"], config["wrapper_class"],
                               config["logger_factory"], config["context_class"])
        return getattr(self._bound, method)


def get_logger(name: str) -> Any:
    return _Logger(name)
