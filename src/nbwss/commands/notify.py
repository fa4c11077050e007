"""`nbwss notify`: queue job and image notifications for delivery.

Works whether the daemon runs or not: the notifications are committed to the outbox,
then the daemon (if any) is poked through the wake socket.

`--object JOB|IMAGE --data JSON` queues one object or an array, in one transaction.
`-` reads JSON lines (`{"object": ..., "data": {...}}`) from stdin to the end, checking
each line as it is read and holding it in a temporary database (SQLite's, spilled to a
file: memory stays flat however long the input); only once every line is in does it
commit them to the outbox, in transactions of 5,000 (waking the daemon after each). So
a refused input (a bad line anywhere, named by its number) queues nothing, and a
stream of 100,000 events costs one process and twenty commits. Blank lines are skipped.

Input is parsed by `strictjson`, the rules the wire's decoder keeps, so nothing is
queued that an endpoint could not decode (NaN, 1e400, an integer outside a Java long, an
unpaired surrogate, a duplicate key, data nested deeper than `DATA_MAX_DEPTH`). Stdin is read
as bytes: a line that is not UTF-8 is named with the byte and its offset.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

from nbwss import intake, strictjson
from nbwss.commands import Context, examples
from nbwss.errors import NbwssError, NotificationError
from nbwss.intake import Queued
from nbwss.notifications import (
    DATA_MAX_DEPTH,
    FAST_CHECKS,
    OBJECTS,
    all_fit_fast,
    check_depth,
    encode_data,
    validate,
)
from nbwss.store import Store
from nbwss.wake import send_wake


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "notify",
        help="queue job/image notifications for delivery",
        epilog=examples(
            "nbwss notify --object JOB --data '{\"jobId\": 146, ...}'",
            "nbwss notify - < notifications.jsonl"),
        description="Queue notifications. Either --object and --data, or '-' to read JSON "
        'lines {"object": "JOB"|"IMAGE", "data": {...}} from stdin.',
    )
    parser.add_argument("source", nargs="?", choices=["-"], help="read JSON lines from stdin")
    parser.add_argument("--object", choices=OBJECTS, help="JOB or IMAGE")
    parser.add_argument("--data", metavar="JSON", help="one notification object, or an array")
    parser.set_defaults(handler=handle, notify_parser=parser)


def handle(args: argparse.Namespace, context: Context) -> int:
    parser: argparse.ArgumentParser = args.notify_parser
    if args.source == "-":
        if args.object or args.data is not None:
            parser.error("'-' reads stdin: it takes no --object or --data")
        lines: Iterable[str | bytes] | None = _stdin_lines()
    elif args.object and args.data is not None:
        rows, lines = rows_from_option(args.object, args.data), None
    else:
        parser.error("give --object and --data, or '-' to read JSON lines from stdin")
    settings = context.intake

    def wake() -> None:  # after each committed chunk, so the daemon starts sending at once
        send_wake(settings.wake_socket)

    if lines is not None:
        queued = queue_lines(context.store, lines, settings.message_max_bytes, wake)
    else:
        queued = queue(context.store, rows, settings.message_max_bytes, wake)
    try:
        report(queued, context.store)
    except NbwssError as exc:
        # Committed: a failure now must not make a calling script retry (and queue twice).
        sys.stderr.write(f"nbwss: warning: queued, but the report failed: {exc}\n")
    return 0


def _stdin_lines() -> Iterable[str | bytes]:
    """Stdin's lines as bytes (decoded by the parser, which names a bad byte), or as text
    where stdin has no byte buffer (a test's StringIO)."""
    buffer = getattr(sys.stdin, "buffer", None)
    return buffer if buffer is not None else sys.stdin


def _parse(text: str | bytes, where: str) -> Any:
    # The decoder's depth limit here; `_row` holds each notification's data to DATA_MAX_DEPTH.
    try:
        return strictjson.loads(text, where)
    except strictjson.StrictJsonError as exc:
        raise NotificationError(str(exc)) from None


def rows_from_option(obj: str, text: str) -> list[tuple[str, str]]:
    """`--data`: one object, or an array of objects (each named `item N`, from 1)."""
    value = _parse(text, "--data")
    deep = _may_nest(text)
    if isinstance(value, list):
        if not value:
            raise NotificationError("--data: the array is empty")
        return [_row(obj, data, f"--data item {n}", deep)
                for n, data in enumerate(value, start=1)]
    return [_row(obj, value, "--data", deep)]


def rows_from_lines(
    lines: Iterable[str | bytes], max_bytes: int | None = None
) -> Iterator[tuple[str, str]]:
    """Every JSON line validated, in order, as it is read; the first bad one (or, with
    `max_bytes`, one too large for any frame) raises, and its caller queues nothing."""
    # A notification line that fits (nearly every one) takes the quick way: proved in C
    # calls (`strictjson.quick_record`) and checked inline, one loop per rule, with no
    # other Python call (per-line calls were a tenth of intake's time at 100,000 lines,
    # issue 14 item 4). Any other line (blank, bad, another shape) goes `_line_row`'s
    # full way, which names what is wrong.
    count = 0
    quick, fast_checks, all_fit = strictjson.quick_record, FAST_CHECKS, all_fit_fast
    encode, fits_any_frame = encode_data, (max_bytes or 0) - 300
    for number, line in enumerate(lines, start=1):
        record = quick(line, "data") if type(line) is bytes else None
        obj: Any = record.get("object") if record is not None else None
        check = fast_checks.get(obj) if type(obj) is str else None
        if record is not None and check is not None and all_fit(check, record["data"]):
            row: tuple[str, str] | None = obj, encode(record["data"])
        else:
            row = _line_row(line, f"line {number}")
        if row is None:
            continue
        count += 1
        if max_bytes is not None and 4 * len(row[1]) > fits_any_frame:
            _check_size(count, row, max_bytes)
        yield row
    if not count:
        raise NotificationError("stdin: no notifications")


def _line_row(line: str | bytes, where: str) -> tuple[str, str] | None:
    """One line the full way: its row, None when blank, or the error naming what is wrong."""
    if not line.strip():
        return None
    brackets = _brackets(line)
    try:
        record = strictjson.loads(line, where, brackets=brackets)
    except strictjson.StrictJsonError as exc:
        raise NotificationError(str(exc)) from None
    if type(record) is not dict or "object" not in record or "data" not in record:
        raise NotificationError(f'{where}: expected {{"object": ..., "data": {{...}}}}')
    obj, data = validate(record["object"], record["data"], where)
    if brackets > DATA_MAX_DEPTH:  # `_may_nest`, counted once for both checks
        check_depth(obj, data, where)
    return obj, encode_data(data)


def _may_nest(text: str | bytes) -> bool:
    """Whether `text` has brackets enough to nest data past DATA_MAX_DEPTH: a count in C,
    so only such rare lines pay for walking their data."""
    return _brackets(text) > DATA_MAX_DEPTH


def _brackets(text: str | bytes) -> int:
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{")
    return text.count("[") + text.count("{")


def _row(obj: Any, data: Any, where: str, deep: bool) -> tuple[str, str]:
    checked_obj, checked_data = validate(obj, data, where)
    if deep:
        check_depth(checked_obj, checked_data, where)
    return checked_obj, encode_data(checked_data)


def queue(
    store: Store,
    rows: list[tuple[str, str]],
    max_bytes: int,
    after_commit: Callable[[], object] | None = None,
) -> Queued:
    """Commit validated rows; one too large for any frame is refused before any commit."""
    for number, row in enumerate(rows, start=1):
        _check_size(number, row, max_bytes)
    return intake.queue_chunked(store, rows, time.time, after_commit=after_commit)


def queue_lines(
    store: Store,
    lines: Iterable[str | bytes],
    max_bytes: int,
    after_commit: Callable[[], object] | None = None,
) -> Queued:
    """`nbwss notify -`: check and queue JSON lines, all or none, in flat memory."""
    rows = rows_from_lines(lines, max_bytes)
    return intake.queue_stream(store, rows, time.time, after_commit=after_commit)


def _check_size(number: int, row: tuple[str, str], max_bytes: int) -> None:
    """Refuse a notification whose data cannot fit in a frame (the envelope and element
    take under 300 bytes)."""
    obj, text = row
    if 4 * len(text) + 300 <= max_bytes:  # fits whatever the encoding: no need to count
        return
    size = len(text.encode("utf-8"))
    if size + 300 > max_bytes:
        raise NotificationError(
            f"notification {number}: {obj} data of {size} bytes does not fit in "
            f"message.maxBytes ({max_bytes})"
        )


def report(queued: Queued, store: Store, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    noun = "notification" if queued.count == 1 else "notifications"
    span = (
        f"seq {queued.first_seq}"
        if queued.first_seq == queued.last_seq
        else f"seq {queued.first_seq}-{queued.last_seq}"
    )
    out.write(f"queued {queued.count} {noun} ({span})\n")
    if not store.has_endpoints():
        sys.stderr.write("nbwss: warning: no endpoint is configured; nothing will deliver these\n")
