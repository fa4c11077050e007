"""One module per command group; each exposes `register(subparsers)`.

A handler is `handler(args, context) -> exit code`. `Context` loads settings and opens
the store on first use, so `--help` and usage errors touch neither.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbwss import logs, propertyfile
from nbwss.store import Store

if TYPE_CHECKING:
    from nbwss.outbound import ProxyPolicy
    from nbwss.properties import Settings  # dataclasses: loaded by the commands that use it

EXAMPLES = "examples:\n"
# The longest wait an option of seconds takes: an hour is already far past any network's.
MAX_WAIT_S = 3600.0


def seconds(text: str) -> float:
    """An option's number of seconds: finite, above 0, at most MAX_WAIT_S (argparse turns
    the refusal into a usage error; `inf` or `nan` would otherwise reach asyncio)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and 0 < value <= MAX_WAIT_S):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds above 0 and at most {MAX_WAIT_S:g}"
        )
    return value


def examples(*lines: str) -> str:
    """A `--help` epilog: command lines an admin can copy, one per line."""
    return EXAMPLES + "".join(f"  {line}\n" for line in lines)


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped as usual; an epilog of examples kept line by line.

    argparse makes a formatter for every argument it registers, and its own looks the
    width up with `shutil` (whose imports `nbwss notify` would pay on every event): the
    same rule is kept here, with `os` only."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:  # fmt: skip
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(EXAMPLES):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _terminal_columns() -> int:
    """`shutil.get_terminal_size().columns`: $COLUMNS, else the terminal's, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class Context:
    """What every command needs, made lazily: settings, logging, the store."""

    def __init__(self, config: Path | None, *, admin: bool = True) -> None:
        """`admin`: a command that answers with sentences (all but `run`), see `logs`."""
        self.config = config
        self.admin = admin
        self._settings: Settings | None = None
        self._intake: propertyfile.IntakeSettings | None = None
        self._store: Store | None = None
        self._outbound: ProxyPolicy | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from nbwss import properties

            self._settings = properties.load(self.config)
            if self._intake is None:  # else logging is set up and the file's warnings said
                self._configure_logs(self._settings.log_level, self._settings.log_format,
                                     self._settings.warnings)  # fmt: skip
        return self._settings

    @property
    def intake(self) -> propertyfile.IntakeSettings:
        """The settings `nbwss notify` needs, from the same file with the same checks, but
        without building `Settings` (whose dataclass machinery each event would pay for)."""
        if self._intake is None:
            self._intake = propertyfile.intake_settings(self.config)
            if self._settings is None:
                self._configure_logs(self._intake.log_level, self._intake.log_format,
                                     self._intake.warnings)  # fmt: skip
        return self._intake

    def _configure_logs(self, level: str, fmt: str, warnings: tuple[str, ...]) -> None:
        logs.configure(level, fmt, admin=self.admin)
        log = logs.get_logger("nbwss.config")
        for warning in warnings:
            log.warning("config.unknown_key", detail=warning)

    @property
    def outbound(self) -> ProxyPolicy:
        """Which outbound proxy each connection goes through (the daemon's rules, from
        the same settings; `proxy.credentialsFile` is read on first use)."""
        if self._outbound is None:
            from nbwss.outbound import load_policy  # only the commands that dial out

            self._outbound = load_policy(self.settings, os.environ)
        return self._outbound

    @property
    def store(self) -> Store:
        if self._store is None:
            paths = self._settings or self.intake  # the same paths, whichever was read
            self._store = Store(paths.database, paths.key_file)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False, allow_nan=False)
    sys.stdout.write("\n")


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A plain aligned table for people (scripts use --json)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for line in [headers, *rows]:
        sys.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
        sys.stdout.write("\n")
