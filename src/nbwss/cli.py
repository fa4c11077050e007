"""The `nbwss` command: global options, dispatch, and the error contract.

Exit 0 on success, 1 on an operational error (`NbwssError`), 2 on a usage error. Every
error is one line on stderr beginning `nbwss: error: `. Each command group lives in its
own module under `nbwss.commands` and registers itself here.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from nbwss import __version__
from nbwss.commands import Context, HelpFormatter, examples
from nbwss.errors import NbwssError
from nbwss.strictjson import utf8_problem

DEFAULT_CONFIG = Path("/etc/nbwss/nbwss.properties")
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, like every other error, and `--help`
    ends with examples."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"nbwss: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(EXIT_USAGE)


# Each command's module is imported only when that command runs: NetBackup's notify
# scripts start `nbwss notify` once per event, and it must not pay for aiohttp or the demo.
COMMANDS: dict[str, str] = {
    "run": "run the daemon in the foreground",
    "endpoint": "validate, add, test, list, show, enable, disable, delete endpoints",
    "notify": "queue job/image notifications for delivery",
    "status": "show the running daemon's view of each server group",
    "doctor": "check key, store, unit, files, REST API, endpoint certificates and clock",
    "service": "install or uninstall the systemd service (as root)",
    "demo": "see the whole flow work on loopback, narrated",
}


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The command named on the line, skipping the global options and their values;
    None when `nbwss --help` comes first (its list of commands needs them all)."""
    words = iter(argv)
    for word in words:
        if word in ("-c", "--config"):
            next(words, None)
        elif word in ("-h", "--help"):
            return None
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with `argv` naming a command, only that command's parser is made (each
    costs `nbwss notify`, once per event, argparse's set-up); all of them otherwise, so a
    misspelt command is told the list."""
    parser = _Parser(
        prog="nbwss",
        description="NetBackup WebSocket Service: keeps the master server connected to "
        "cloud endpoints over wss://, delivers JOB and IMAGE notifications, and answers "
        "their COMMANDs from the local REST API.",
        epilog=examples("sudo nbwss service install", "nbwss endpoint add --file details.json",
                        "nbwss status", "nbwss COMMAND --help"),
    )
    parser.add_argument("--version", action="version", version=f"nbwss {__version__}")
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="PATH",
        help="properties file (default: $NBWSS_CONFIG, else /etc/nbwss/nbwss.properties "
        "if it exists, else built-in defaults)",
    )
    # `prog` given, argparse needs no help formatter (and no `shutil`) to work it out.
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser, prog=parser.prog
    )
    commands.required = True
    chosen = None if argv is None else _chosen_command(argv)
    for name, summary in COMMANDS.items():
        if chosen in (None, name):
            importlib.import_module(f"nbwss.commands.{name}").register(commands)
        elif chosen not in COMMANDS:
            commands.add_parser(name, help=summary)
    return parser


def config_path(option: Path | None, env: dict[str, str] | os._Environ[str]) -> Path | None:
    if option is not None:
        return option
    if env.get("NBWSS_CONFIG"):
        return Path(env["NBWSS_CONFIG"])
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def argv_problem(argv: Sequence[str]) -> str | None:
    """Why a word of the command line is not UTF-8 text, or None.

    Python hands a byte that is not UTF-8 over as a lone surrogate (PEP 383); passed on, it
    would fail later, somewhere far less clear (a store write, a log line). A Latin-1
    client name from a master server's script is the likely case.
    """
    for number, word in enumerate(argv, start=1):
        if "\0" in word:  # no real command line holds one; a caller's list might
            return f"argument {number} holds a NUL character"
        try:
            word.encode("utf-8")
        except UnicodeEncodeError:
            raw = word.encode("utf-8", "surrogateescape") if _escaped_only(word) else None
            if raw is not None:
                return utf8_problem(raw, f"argument {number}")
            return f"argument {number} holds an unpaired UTF-16 surrogate"
    return None


def _escaped_only(word: str) -> bool:
    """Whether every surrogate in `word` is one of PEP 383's escapes of a byte."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in word)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    problem = argv_problem(argv)
    if problem:
        sys.stderr.write(f"nbwss: error: {problem}\n")
        return EXIT_USAGE
    args = build_parser(argv).parse_args(argv)
    context = Context(config_path(args.config, os.environ), admin=args.command != "run")
    try:
        code: int = args.handler(args, context)
    except NbwssError as exc:
        sys.stderr.write(f"nbwss: error: {exc}\n")
        return EXIT_ERROR
    except sqlite3.Error as exc:  # the store names its own; this is the last line of defence
        sys.stderr.write(f"nbwss: error: database: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("nbwss: error: interrupted\n")
        return 130
    finally:
        context.close()
    return code
