"""Assembles the whole daemon from its parts, in one place.

`nbwss run`, `nbwss demo` and the soak all start the daemon through `build_service`, so
what is tested and demonstrated is what admins run: the connection process (each
connection delivers its group's outbox), the wake-up listener and outbox janitor, the
COMMAND proxy, the REST poller (when credentials are configured) and the status server.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from nbwss import logs
from nbwss.backoff import Backoff
from nbwss.component import Component
from nbwss.errors import NbwssError
from nbwss.outboxes import DeliveryWiring
from nbwss.properties import Settings
from nbwss.protocol import DeliveryLedger
from nbwss.proxy import CommandProxy
from nbwss.sdnotify import Notifier
from nbwss.service import Service
from nbwss.sources.poller import Poller
from nbwss.status import StatusServer
from nbwss.store import Store
from nbwss.supervisor import Supervisor
from nbwss.values import GroupStatus
from nbwss.vault import make_private_dirs

log = logs.get_logger("nbwss.daemon")


class LiveStatus:
    """The daemon's live view for /status: connections from the supervisor, batches and
    acks from the groups' delivery ledgers. Implements `nbwss.status.StatusSource`."""

    def __init__(self, supervisor: Supervisor, wiring: DeliveryWiring) -> None:
        self._supervisor = supervisor
        self._wiring = wiring

    def snapshot(self) -> dict[str, GroupStatus]:
        connected = self._supervisor.connected
        ledgers = self._wiring.ledgers
        return {
            group: self._group(group, connected.get(group), ledgers.get(group))
            for group in set(ledgers) | set(connected)
        }

    @staticmethod
    def _group(group_id: str, host: str | None, ledger: DeliveryLedger | None) -> GroupStatus:
        delivery = ledger.machine if ledger else None
        return GroupStatus(
            group_id=group_id,
            connected=host is not None,
            endpoint=host,
            outstanding=delivery.outstanding_status() if delivery else None,
            last_ack=ledger.last_ack_at if ledger else None,
        )


class _ProxyComponent(Component):
    """Holds the proxy's connection pool open for the daemon's lifetime."""

    def __init__(self, proxy: CommandProxy) -> None:
        self._proxy = proxy

    async def start(self) -> None:
        await self._proxy.start()

    async def run(self) -> None:
        await asyncio.Event().wait()  # until cancelled at shutdown

    async def stop(self) -> None:
        await self._proxy.close()


@contextmanager
def instance_lock(database: Path) -> Iterator[None]:
    """One daemon per database: a second `nbwss run` must stop before it touches anything
    (it would reset connection status and fight the first over the sockets)."""
    path = database.with_name("nbwss.lock")
    make_private_dirs(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise NbwssError(
                f"another nbwss run (pid {holder}) is already using {database}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def build_service(
    settings: Settings,
    store: Store,
    *,
    reload_settings: Callable[[], Settings] | None = None,
    status: bool = True,
    notifier: Notifier | None = None,
    watchdog_s: float | None = None,
    components: Sequence[Component] = (),
    backoff: Callable[[float], Backoff] | None = None,
) -> Service:
    """The daemon as `nbwss run` starts it; tests and benchmarks start it here too.

    `status=False` leaves out the status server (benchmarks, tests that run several
    daemons); `notifier`, `watchdog_s` and `backoff` replace systemd's and the retry
    schedule's defaults; `components` are added after the daemon's own. Raises
    `ConfigError` for a bad set-up (e.g. a poller credential file missing) before
    anything connects."""
    wiring = DeliveryWiring(store, settings)
    proxy = CommandProxy(settings)
    supervisor = Supervisor(
        settings, store, delivery_for_group=wiring.outbox, command_handler=proxy, backoff=backoff
    )
    wiring.waker.on_endpoints_changed(supervisor.endpoints_changed)
    own: list[Component] = [*wiring.components, _ProxyComponent(proxy)]
    poller = Poller(settings, store, waker=wiring.waker) if settings.poller_active else None
    if poller is not None:
        own.append(poller)
    if status:
        own.append(StatusServer(settings.status_address, store,
                                source=LiveStatus(supervisor, wiring),
                                max_backlog_age_s=settings.status_max_backlog_age_s,
                                poller=poller))
    service = Service(
        settings,
        store,
        supervisor,
        components=[*own, *components],
        reload_settings=_following(reload_settings, wiring),
        notifier=notifier,
        watchdog_s=watchdog_s,
    )
    return service


def _following(
    reload_settings: Callable[[], Settings] | None, wiring: DeliveryWiring
) -> Callable[[], Settings] | None:
    """`reload_settings`, whose new settings also reach delivery's daemon-wide parts
    (the service applies whatever it returns, as it does to the supervisor)."""
    if reload_settings is None:
        return None

    def reload() -> Settings:
        settings = reload_settings()
        wiring.update_settings(settings)
        return settings

    return reload
