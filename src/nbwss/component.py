"""The life cycle of a long-running part of the daemon, as aiohttp's runner has it.

`start()` binds what the component serves (a socket, a connection pool) and returns;
the service sends READY only once every `start()` has returned, so a bind error stops
`nbwss run` before systemd is told it is up. `run()` then works until cancelled, and
`stop()` releases what `start()` took; the service calls it for every component it
asked to start, also when that start failed half way, so it must be safe then.
"""

from __future__ import annotations


class Component:
    """A part of the daemon owned by the service's TaskGroup; override what applies."""

    async def start(self) -> None:
        """Bind, then return (nothing to bind by default)."""

    async def run(self) -> None:
        """Work until cancelled."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Release what `start()` took (nothing by default)."""
