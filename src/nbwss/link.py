"""The seam between a live connection and what runs over it.

`session.py` owns the socket and delivers the group's outbox itself; the proxy
(COMMAND) plugs in through these protocols and never touches aiohttp. A test can drive
either side with a plain object that has these methods.
"""

from __future__ import annotations

from typing import Protocol

from nbwss.messages import Message


class Link(Protocol):
    """What a handler may do with the connection it runs on."""

    @property
    def group_id(self) -> str: ...

    @property
    def host_name(self) -> str: ...

    async def send(self, message: Message) -> None:
        """Send one message; raises `TimeoutError` past `notification.sendTimeout` (the
        link owns that deadline), `ConnectionError` when the connection is gone."""


class CommandLink(Link, Protocol):
    """The connection as a COMMAND handler sees it."""

    def command_reached_api(self, request: Message) -> None:
        """The REST call of COMMAND `request` starts now: if its answer is lost with the
        connection, the API may have carried it out (logged with `command.unanswered`)."""


class CommandHandler(Protocol):
    """Carries out one COMMAND request; always returns its COMMAND response."""

    async def __call__(self, request: Message, link: CommandLink) -> Message: ...
