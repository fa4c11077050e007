"""`nbwss run`: the daemon in the foreground until SIGTERM/SIGINT (SIGHUP reloads)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from nbwss import eventloop, properties
from nbwss.commands import Context, examples
from nbwss.daemon import build_service, instance_lock
from nbwss.doctor import check_key
from nbwss.errors import NbwssError
from nbwss.logs import get_logger
from nbwss.outbound import load_policy
from nbwss.properties import Settings


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "run",
        help="run the daemon in the foreground",
        description="Keep every server group connected to its endpoints until SIGTERM or "
        "SIGINT; SIGHUP re-reads the properties file and the endpoints.",
        epilog=examples("nbwss -c /etc/nbwss/nbwss.properties run",
                        "sudo systemctl start nbwss    # how the service runs it"),
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, context: Context) -> int:
    settings = context.settings

    def reload_settings() -> Settings:
        settings = properties.load(context.config)
        load_policy(settings, os.environ)  # a proxy that cannot be used fails the reload
        return settings

    with instance_lock(settings.database):
        check_key(context.store, settings)  # a wrong key stops here, naming both paths
        service = build_service(settings, context.store, reload_settings=reload_settings)
        try:
            eventloop.run(service.async_run(), settings.event_loop)
        except Exception as exc:
            user_error = _only_user_errors(exc)
            if user_error is not None:
                raise user_error from None  # one `nbwss: error:` line, exit 1
            get_logger("nbwss.service").exception("service.crashed")  # a bug: the traceback
            return 1
    return 0


def _only_user_errors(exc: BaseException) -> NbwssError | None:
    """The first `NbwssError` when everything that failed is one (e.g. a component that
    cannot bind its socket); None when anything else, a bug, is among them."""
    if isinstance(exc, NbwssError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found = [_only_user_errors(inner) for inner in exc.exceptions]
        if found and all(error is not None for error in found):
            return found[0]
    return None
