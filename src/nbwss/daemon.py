"""Assembles the whole daemon from its parts, in one place.

`nbwss run`, `nbwss demo` and the soak all start the daemon through `build_service`, so
what is tested and demonstrated is what admins run: the connection process, a delivery
pump per server group, the wake-up listener and outbox janitor, the COMMAND proxy, the
REST poller (when credentials are configured) and the status server.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from nbwss import logs
from nbwss.delivery import Batch
from nbwss.errors import NbwssError
from nbwss.properties import Settings
from nbwss.proxy import CommandProxy
from nbwss.pump import DeliveryWiring, GroupPump
from nbwss.service import Component, Service
from nbwss.sources.poller import Poller
from nbwss.status import StatusServer
from nbwss.store import Store
from nbwss.supervisor import Supervisor
from nbwss.values import GroupStatus
from nbwss.vault import make_private_dirs

log = logs.get_logger("nbwss.daemon")


class LiveStatus:
    """The daemon's live view for /status: connections from the supervisor, batches from
    the pumps. Implements `nbwss.status.StatusSource`."""

    def __init__(self, store: Store, settings: Settings, wiring: DeliveryWiring) -> None:
        self._store = store
        self._settings = settings
        self._wiring = wiring
        self._pumps: dict[str, GroupPump] = {}
        self._last_ack: dict[str, float] = {}
        self.supervisor: Supervisor | None = None

    def pump(self, group_id: str) -> GroupPump:
        """The `delivery_for_group` factory: a pump whose acks are remembered for status."""

        def acked(_: Batch) -> None:
            self._last_ack[group_id] = time.time()

        pump = GroupPump(self._store, self._settings, group_id, self._wiring.waker,
                         on_acked=acked)
        self._pumps[group_id] = pump
        return pump

    def snapshot(self) -> dict[str, GroupStatus]:
        connected = self.supervisor.connected if self.supervisor else {}
        groups = set(self._pumps) | set(connected)
        return {group: self._group(group, connected.get(group)) for group in groups}

    def _group(self, group_id: str, host: str | None) -> GroupStatus:
        pump = self._pumps.get(group_id)
        delivery = pump.delivery if pump else None
        return GroupStatus(
            group_id=group_id,
            connected=host is not None,
            endpoint=host,
            outstanding=delivery.outstanding_status() if delivery else None,
            last_ack=self._last_ack.get(group_id),
        )


class _ProxyComponent:
    """Holds the proxy's connection pool open for the daemon's lifetime."""

    def __init__(self, proxy: CommandProxy) -> None:
        self._proxy = proxy

    async def run(self) -> None:
        await self._proxy.start()
        try:
            await asyncio.Event().wait()  # until cancelled at shutdown
        finally:
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
) -> Service:
    """The daemon as `nbwss run` starts it. Raises `ConfigError` for a bad set-up (e.g. a
    poller credential file missing) before anything connects."""
    wiring = DeliveryWiring(store, settings)
    live = LiveStatus(store, settings, wiring)
    proxy = CommandProxy(settings)
    components: list[Component] = [*wiring.components, _ProxyComponent(proxy)]
    poller = Poller(settings, store, waker=wiring.waker) if settings.poller_active else None
    if poller is not None:
        components.append(poller)
    if status:
        components.append(StatusServer(settings.status_address, store, source=live,
                                       max_backlog_age_s=settings.status_max_backlog_age_s,
                                       poller=poller))
    service = Service(
        settings,
        store,
        delivery_for_group=live.pump,
        command_handler=proxy,
        components=components,
        reload_settings=reload_settings,
    )
    live.supervisor = service.supervisor
    wiring.waker.on_endpoints_changed(service.supervisor.endpoints_changed)
    return service
