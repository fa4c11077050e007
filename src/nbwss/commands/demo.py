"""`nbwss demo`: the whole flow on loopback, narrated (see `nbwss.demo`)."""

from __future__ import annotations

import argparse
from typing import Any

from nbwss.commands import Context, examples
from nbwss.extras import require_demo_extra


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "demo",
        help="see the whole flow work on loopback, narrated",
        description="Start two reference cloud endpoints and a stand-in NetBackup REST API "
        "on loopback, add the endpoints, run the daemon, play the guide's VMware backup, a "
        "COMMAND round trip and a failover, then print a summary. Needs no network and no "
        "root; state lives in a temporary directory.",
        epilog=examples("nbwss demo", "nbwss demo --keep"),
    )
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (certificates, database, config)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, context: Context) -> int:
    # Imported here, not above: registering the command (`nbwss --help`, the man page)
    # must not load the demo, and a base install has no trustme for it.
    require_demo_extra("nbwss demo")
    from nbwss import demo

    return demo.main(keep=args.keep)
