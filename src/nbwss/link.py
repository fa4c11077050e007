"""The seam between a live connection and what runs over it.

`session.py` owns the socket; delivery (NOTIFICATION) and the proxy (COMMAND) plug in
through these protocols and never touch aiohttp. A test can drive either side with a
plain object that has these methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from nbwss.messages import Message

if TYPE_CHECKING:
    from nbwss.delivery import DeliveryMachine
    from nbwss.properties import Settings


class Link(Protocol):
    """What a handler may do with the connection it runs on."""

    @property
    def group_id(self) -> str: ...

    @property
    def host_name(self) -> str: ...

    async def send(self, message: Message) -> None:
        """Send one message; raises `TimeoutError` past `notification.sendTimeout` (the
        link owns that deadline), `ConnectionError` when the connection is gone."""


class DeliveryLink(Link, Protocol):
    """The connection as the notification pump sees it."""

    @property
    def settings(self) -> Settings:
        """The settings the connection was made with: the pump uses these, so a reload
        reaches the session and the pump together, with the next connection."""

    def deliver_with(self, machine: DeliveryMachine | None) -> None:
        """The group's delivery state: the connection judges NOTIFICATION responses by it."""


class CommandLink(Link, Protocol):
    """The connection as a COMMAND handler sees it."""

    def command_reached_api(self, request: Message) -> None:
        """The REST call of COMMAND `request` starts now: if its answer is lost with the
        connection, the API may have carried it out (logged with `command.unanswered`)."""


class CommandHandler(Protocol):
    """Carries out one COMMAND request; always returns its COMMAND response."""

    async def __call__(self, request: Message, link: CommandLink) -> Message: ...


class NotificationPump(Protocol):
    """The notification pump of one server group; it outlives each connection."""

    async def run(self, link: DeliveryLink) -> None:
        """Deliver over `link` until cancelled (the connection closed) or it fails."""

    def kick(self) -> None:
        """The connection accepted an acknowledgement: go on (commit it) at once."""
