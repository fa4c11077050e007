"""The `nbwss` command: global options, dispatch, and the error contract.

Exit 0 on success, 1 on an operational error (`NbwssError`), 2 on a usage error. Every
error is one line on stderr beginning `nbwss: error: `. Each command group lives in its
own module under `nbwss.commands` and registers itself here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from nbwss import __version__
from nbwss.commands import Context, demo, endpoint, notify, run, status
from nbwss.errors import NbwssError

DEFAULT_CONFIG = Path("/etc/nbwss/nbwss.properties")
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, like every other error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"nbwss: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nbwss", description="NetBackup WebSocket Service")
    parser.add_argument("--version", action="version", version=f"nbwss {__version__}")
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        help="properties file (default: $NBWSS_CONFIG, else /etc/nbwss/nbwss.properties "
        "if it exists, else built-in defaults)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    for module in (run, endpoint, notify, status, demo):
        module.register(commands)
    return parser


def config_path(option: Path | None, env: dict[str, str] | os._Environ[str]) -> Path | None:
    if option is not None:
        return option
    if env.get("NBWSS_CONFIG"):
        return Path(env["NBWSS_CONFIG"])
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    context = Context(config_path(args.config, os.environ))
    try:
        code: int = args.handler(args, context)
    except NbwssError as exc:
        sys.stderr.write(f"nbwss: error: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("nbwss: error: interrupted\n")
        return 130
    finally:
        context.close()
    return code
