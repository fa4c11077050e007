"""The daemon's life cycle: startup -> main loop -> shutdown, as uvicorn's server.py reads.

Every task (the connection process, the systemd watchdog and status, and the components
the daemon is built with: wake listener, REST poller, status server) is started in
`async_run`, owned by one TaskGroup, and cancelled and awaited there. Components bind
in `start()` before READY=1 (`nbwss.component`); the supervisor is built by
`daemon.build_service` and handed in. Signal handlers
only set flags: SIGTERM/SIGINT ask for a graceful stop (every connection gets a normal
close frame, then what is left is cancelled after a grace period); a second one forces
it; SIGHUP re-reads the properties and runs the connection process at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from nbwss import logs, properties
from nbwss.component import Component
from nbwss.errors import NbwssError
from nbwss.properties import Applies, Settings
from nbwss.sdnotify import Notifier, watchdog_interval_s
from nbwss.store import Store
from nbwss.supervisor import Supervisor

log = logs.get_logger("nbwss.service")

# How long shutdown waits for close frames to be exchanged before cancelling.
SHUTDOWN_GRACE_S: Final = 5.0

# The collector's first generation runs after this many net allocations (CPython: 700).
GC_YOUNG_THRESHOLD: Final = 10_000


@contextlib.contextmanager
def collector_tuned_for_a_daemon() -> Iterator[None]:
    """Start-up's objects out of the collector's way while the daemon runs; undone at stop.

    The daemon keeps what it built at start-up (modules, settings, the store, the
    supervisor, the components) for its whole life, and the cyclic collector walks all of
    it in every full collection; busy, the daemon's delivery also triggers a young
    collection every 700 net allocations. Measured (docs/benchmarks.md, "Garbage
    collection"): about 19% of the daemon's CPU in the 100-groups drain went to the
    collector; with start-up frozen and the first threshold at 10,000, about 6%, and
    13% less CPU per notification. Connections are not frozen: a frozen object is never
    collected, so a closed connection's cycles would leak; so the freeze is taken before
    the first dial. A `gc.collect()` first, so no garbage is frozen for good."""
    global _tuned_by, _thresholds_before
    if _tuned_by == 0:  # the first of the services running in this process
        _thresholds_before = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *_thresholds_before[1:])
    _tuned_by += 1
    try:
        yield
    finally:
        _tuned_by -= 1
        if _tuned_by == 0:  # the last: as it was before the first
            gc.set_threshold(*_thresholds_before)
            gc.unfreeze()


# How many services have the collector tuned (tests and benchmarks run several in one
# process, whose lives overlap): the first tunes it, the last undoes it.
_tuned_by = 0
_thresholds_before: tuple[int, ...] = gc.get_threshold()


class Service:
    """`nbwss run`: the connection process plus the components, with a clean stop."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        supervisor: Supervisor,
        *,
        components: Sequence[Component] = (),
        reload_settings: Callable[[], Settings] | None = None,
        notifier: Notifier | None = None,
        watchdog_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.supervisor = supervisor
        self.components = tuple(components)
        self._reload_settings = reload_settings
        self.notifier = notifier or Notifier.from_env()
        self._watchdog_s = watchdog_s if watchdog_s is not None else watchdog_interval_s()
        self.ready = asyncio.Event()
        self.should_exit = False
        self.force_exit = False
        self._reload_requested = False
        self._flagged = asyncio.Event()
        self._forced = asyncio.Event()

    # -- flags (safe from signal handlers) ------------------------------------------------

    def handle_exit(self, sig: int | None = None) -> None:
        """Ask for a graceful stop; asked twice, stop without waiting."""
        if self.should_exit:
            self.force_exit = True
            self._forced.set()
        self.should_exit = True
        self._flagged.set()

    def handle_reload(self) -> None:
        self._reload_requested = True
        self._flagged.set()

    # -- life cycle -----------------------------------------------------------------------

    async def async_run(self, handle_signals: bool = True) -> None:
        """Run until asked to stop; returns after every connection was closed.

        Every component's `start()` (binding its socket) returns before READY=1 is sent,
        so `nbwss status` right after `systemctl start` finds the status socket, and a
        bind error stops the start with no READY."""
        await self.startup()
        loop = asyncio.get_running_loop()
        # Every component asked to start is stopped, in reverse, even if its start fails
        # half way or another's stop raises (its socket file must not stay behind).
        async with contextlib.AsyncExitStack() as stopping:
            for component in self.components:
                stopping.push_async_callback(component.stop)
                await component.start()
            stopping.enter_context(collector_tuned_for_a_daemon())  # before the first dial
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, self.handle_exit, sig)
                loop.add_signal_handler(signal.SIGHUP, self.handle_reload)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    stopping.callback(loop.remove_signal_handler, sig)
            await self._serve()
        log.info("service.stopped")

    async def _serve(self) -> None:
        """The main loop, with every task in one TaskGroup; READY once they are created."""
        async with asyncio.TaskGroup() as tasks:
            started = [tasks.create_task(self.supervisor.run())]
            started += [tasks.create_task(component.run()) for component in self.components]
            if self.notifier.enabled:
                started.append(tasks.create_task(self._report_status()))
                if self._watchdog_s:
                    started.append(tasks.create_task(self._watchdog(self._watchdog_s)))
            self.ready.set()
            self.notifier.send("READY=1", "STATUS=connecting")
            log.info("service.started", components=len(self.components))
            await self.main_loop()
            await self.shutdown()
            for task in started:
                task.cancel()

    async def startup(self) -> None:
        # Whatever a killed daemon left in the store, nothing is connected yet.
        await asyncio.to_thread(self.store.reset_status)
        log.info("service.starting", config=str(self.settings.source or "built-in defaults"))

    async def main_loop(self) -> None:
        while True:
            await self._flagged.wait()
            self._flagged.clear()
            if self.should_exit:
                return
            if self._reload_requested:
                self._reload_requested = False
                self.reload()

    def reload(self) -> None:
        """SIGHUP: re-read the properties (when we know the file) and the store, now.

        A file that does not parse changes nothing: the old settings stay, and neither
        `service.reloaded` nor READY=1 is sent (systemd is told in STATUS=). The
        endpoints are re-read either way."""
        self.supervisor.wake()
        if self._reload_settings is None:
            self._reloading()
            self._reloaded([])
            return
        try:
            settings = self._reload_settings()
        except NbwssError as exc:
            log.error("service.reload_failed", reason=str(exc), settings="unchanged")
            self.notifier.send(f"STATUS=reload failed, settings unchanged: {exc}")
            return
        self._reloading()
        for warning in settings.warnings:
            log.warning("config.unknown_key", detail=warning)
        needs_restart = properties.changed_keys(self.settings, settings, Applies.RESTART)
        if needs_restart:
            log.warning("service.reload_needs_restart", keys=needs_restart,
                        detail="changed, but applied only after a restart")
        applied = [key for applies in (Applies.NOW, Applies.NEW_CONNECTIONS)
                   for key in properties.changed_keys(self.settings, settings, applies)]
        self.settings = settings
        self.supervisor.update_settings(settings)
        logs.reconfigure(settings.log_level, settings.log_format)
        self._reloaded(applied)

    def _reloading(self) -> None:
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
                           "STATUS=reloading")

    def _reloaded(self, applied: list[str]) -> None:
        log.info("service.reloaded", applied=applied)
        self.notifier.send("READY=1", "STATUS=reloaded")

    async def shutdown(self) -> None:
        """Close every connection with a normal close frame, unless forced or too slow."""
        log.info("service.stopping")
        self.notifier.send("STOPPING=1", "STATUS=stopping")
        closing = asyncio.ensure_future(self.supervisor.close_all("daemon stopping"))
        forced = asyncio.ensure_future(self._forced.wait())
        try:
            await asyncio.wait({closing, forced}, timeout=SHUTDOWN_GRACE_S,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (closing, forced):
                waiter.cancel()
            await asyncio.gather(closing, forced, return_exceptions=True)
        if closing.cancelled():
            log.warning("service.stop_forced", forced=self.force_exit)

    # -- systemd ---------------------------------------------------------------------------

    async def _watchdog(self, interval_s: float) -> None:
        while True:
            self.notifier.send("WATCHDOG=1")
            await asyncio.sleep(interval_s)

    async def _report_status(self) -> None:
        """STATUS= follows the connected groups, so `systemctl status` shows them."""
        shown: list[dict[str, str] | None] = [None]

        def changed() -> bool:
            return self.supervisor.connected != shown[0]

        while True:
            await self.supervisor.wait_for(changed)
            shown[0] = connected = self.supervisor.connected
            self.notifier.send(f"STATUS={len(connected)} server group(s) connected")
