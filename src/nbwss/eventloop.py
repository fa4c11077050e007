"""The event loop `nbwss run` runs on: asyncio's, or uvloop's by choice (`nbwss[speed]`).

uvloop (libuv, in C) was expected to save CPU and memory; measured here it does not
(docs/benchmarks.md: about the same CPU per notification and idle, more RSS per
connection than asyncio with the shared TLS read buffer), so it is not the default.
The `eventLoop` property picks: `asyncio` (the default), `uvloop` (refused at start when
it is not installed) or `auto` (uvloop when importable). Only the daemon uses it: the
CLI's short calls gain nothing from it.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from nbwss import logs
from nbwss.errors import ConfigError

log = logs.get_logger("nbwss.eventloop")

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def choose(setting: str) -> tuple[str, LoopFactory | None]:
    """The loop's name and factory (None: asyncio's own) for the `eventLoop` value."""
    if setting == "asyncio":
        return "asyncio", None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if setting == "uvloop":
            raise ConfigError(
                "eventLoop=uvloop, but uvloop is not installed: install nbwss[speed] "
                "(pip install 'nbwss[speed]'), or set eventLoop=asyncio"
            ) from None
        return "asyncio", None
    factory: LoopFactory = uvloop.new_event_loop
    return "uvloop", factory


def run(main: Coroutine[Any, Any, T], setting: str) -> T:
    """Run `main` to completion on the loop `setting` picks; log which one it is."""
    try:
        name, factory = choose(setting)
    except ConfigError:
        main.close()  # never awaited: say nothing of it
        raise
    log.info("service.event_loop", loop=name)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
