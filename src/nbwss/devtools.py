"""What the development tools' command lines share (`python -m nbwss.reference`,
`python -m nbwss.standin`): one error line instead of a traceback, and a clean stop on
Ctrl-C or SIGTERM. Not used by the daemon.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable

from nbwss.errors import NbwssError


def run_tool(program: str, serve: Callable[[], Awaitable[None]]) -> int:
    """Run `serve()` until it returns; an `NbwssError` is one `<program>: error:` line."""
    try:
        asyncio.run(_call(serve))
    except NbwssError as exc:
        sys.stderr.write(f"{program}: error: {exc}\n")
        return 1
    return 0


async def _call(serve: Callable[[], Awaitable[None]]) -> None:
    await serve()


def stop_on_signals() -> asyncio.Event:
    """An event set on SIGINT or SIGTERM. Call it first, before the tool announces
    anything: whoever reads the announcement may signal at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop
