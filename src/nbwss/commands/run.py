"""`nbwss run`."""

from __future__ import annotations

import argparse
from typing import Any

from nbwss.commands import Context
from nbwss.errors import NbwssError


def register(commands: Any) -> None:
    parser = commands.add_parser("run", help="(in progress)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, context: Context) -> int:
    raise NbwssError("'run' is not built yet")
