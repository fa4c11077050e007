"""`nbwss run`: the daemon in the foreground until SIGTERM/SIGINT (SIGHUP reloads)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from nbwss import properties
from nbwss.commands import Context
from nbwss.daemon import build_service
from nbwss.logs import get_logger
from nbwss.properties import Settings


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "run",
        help="run the daemon in the foreground",
        description="Keep every server group connected to its endpoints until SIGTERM or "
        "SIGINT; SIGHUP re-reads the properties file and the endpoints.",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, context: Context) -> int:
    settings = context.settings

    def reload_settings() -> Settings:
        return properties.load(context.config)

    service = build_service(settings, context.store, reload_settings=reload_settings)
    try:
        asyncio.run(service.async_run())
    except Exception:  # a crashed component: logged with its traceback, exit 1
        get_logger("nbwss.service").exception("service.crashed")
        return 1
    return 0
