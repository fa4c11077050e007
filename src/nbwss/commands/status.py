"""`nbwss status`."""

from __future__ import annotations

import argparse
from typing import Any

from nbwss.commands import Context
from nbwss.errors import NbwssError


def register(commands: Any) -> None:
    parser = commands.add_parser("status", help="(in progress)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, context: Context) -> int:
    raise NbwssError("'status' is not built yet")
