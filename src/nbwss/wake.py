"""Push, not poll: how the daemon learns of new outbox rows within milliseconds.

`nbwss notify` commits, then sends a one-byte datagram to a Unix datagram socket beside
the database (`Settings.wake_socket`); the daemon's `WakeListener` wakes delivery on every
live connection at once through the in-process `Waker` (which the REST poller calls directly). A
lost datagram costs latency, never a notification: the daemon's one `OutboxWatch` reads the
outbox's head every `notification.scheduledRate` seconds and wakes every connection when it
moved (one read for all groups, not one per connection). `nbwss endpoint add|enable|disable|delete`
send another byte (`ENDPOINTS_DATAGRAM`), which runs the connection process at once
instead of at its next `connectionInfo.period`.

asyncio is imported by the listener, not with this module: `nbwss notify` only sends.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from nbwss import logs
from nbwss.component import Component
from nbwss.errors import NbwssError, StoreError

if TYPE_CHECKING:
    import asyncio

    from nbwss.store import Store

log = logs.get_logger("nbwss.wake")

# New notifications are committed: wake delivery on every connection.
WAKE_DATAGRAM = b"w"
# An admin changed the endpoints: run the connection process now.
ENDPOINTS_DATAGRAM = b"e"


class Wakeable(Protocol):
    def set(self) -> None: ...


class Waker:
    """Wakes every registered connection at once; each has its own flag (an
    `asyncio.Event` or anything with `set()`).

    A connection's core keeps a wake-up that lands while a read or write is under way
    and ends the next wait with it, so the read that follows sees the rows it announced:
    none is missed. At a wait with nothing to read now (a batch in flight and the next
    one read ahead) it is dropped without a read: the rows after them are read once
    the ack moved the cursor.
    """

    def __init__(self) -> None:
        self._events: set[Wakeable] = set()
        self._endpoint_listeners: list[Callable[[], None]] = []

    def register(self, event: Wakeable) -> None:
        self._events.add(event)

    def unregister(self, event: Wakeable) -> None:
        self._events.discard(event)

    def wake(self) -> None:
        """New rows are committed: every connection looks now (from the loop's thread)."""
        for event in self._events:
            event.set()

    def on_endpoints_changed(self, listener: Callable[[], None]) -> None:
        """Call `listener` (e.g. `Supervisor.wake`) when an admin changed the endpoints."""
        self._endpoint_listeners.append(listener)

    def endpoints_changed(self) -> None:
        for listener in self._endpoint_listeners:
            listener()


def send_wake(path: Path, datagram: bytes = WAKE_DATAGRAM) -> bool:
    """Poke the daemon after a commit; False (and no error) when no daemon listens.

    The change is already durable, so nothing here may fail the caller.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(datagram, str(path))
    except OSError:
        # No socket, no listener, or its queue is full (then it is awake already).
        return False
    return True


def _is_live(path: Path) -> bool:
    """Whether something listens on the socket at `path` (else it is a stale leftover)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            probe.connect(str(path))
    except OSError:
        return False
    return True


def bind_wake_socket(path: Path) -> socket.socket:
    """Bind the datagram socket, mode 0600, replacing a stale one; refuse a live one."""
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise NbwssError(f"cannot listen on wake socket {path}: not a socket")
        if _is_live(path):
            raise NbwssError(f"another nbwss daemon is listening on {path}")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise NbwssError(f"cannot listen on wake socket {path}: {exc.strerror}") from None
    return sock


class WakeListener(Component):
    """Daemon component: listens on the wake socket until stopped, then removes it."""

    def __init__(self, path: Path, waker: Waker) -> None:
        import asyncio

        self.path = path
        self.waker = waker
        self.ready = asyncio.Event()
        self._socket: socket.socket | None = None
        self._started = False

    async def start(self) -> None:
        """Bind the socket; when it cannot be had, log it and go on without it.

        Not fatal: the outbox watch still finds new rows, only later.
        """
        import asyncio

        self._started = True
        try:
            sock = bind_wake_socket(self.path)
        except NbwssError as exc:
            log.error(
                "wake.unavailable",
                path=str(self.path),
                reason=str(exc),
                fallback="outbox watch every notification.scheduledRate",
            )
            return
        try:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._receive, sock)
        except BaseException:
            sock.close()
            raise
        self._socket = sock
        log.info("wake.listening", path=str(self.path))
        self.ready.set()

    async def run(self) -> None:
        """Listen until cancelled (started here when the service did not); return at
        once when the socket could not be had."""
        import asyncio

        owned = not self._started
        if owned:
            await self.start()
        if self._socket is None:
            return
        try:
            await asyncio.Future()  # until cancelled
        finally:
            if owned:
                await self.stop()

    async def stop(self) -> None:
        import asyncio

        sock, self._socket = self._socket, None
        self._started = False
        if sock is None:
            return
        self.ready.clear()
        asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _receive(self, sock: socket.socket) -> None:
        """Read every datagram queued; wake delivery and the connection process once each."""
        wake = endpoints = False
        while True:
            try:
                datagram = sock.recv(16)
            except BlockingIOError:
                break
            except OSError as exc:
                log.warning("wake.socket_error", error=str(exc))
                break
            if datagram == ENDPOINTS_DATAGRAM:
                endpoints = True
            else:
                wake = True
        if endpoints:
            self.waker.endpoints_changed()
        if wake:
            self.waker.wake()


class OutboxWatch(Component):
    """Daemon component: the one fallback read of the outbox for every connection.

    A wake-up datagram can be lost (no daemon listening at that instant, its socket
    unavailable). Rather than every connection reading the outbox on its own timer
    (1,000 idle groups at `notification.scheduledRate=5`: 200 reads a second, about
    3.5% of a core), this reads the outbox's head (its highest seq ever, one row of
    `sqlite_sequence`) once a period and wakes every connection when it moved.

    The head is first read in `start()`, before any connection makes its first read:
    a row committed after that read moves the head past what the watch saw, so no
    commit can fall between the two. `period_s` may be changed while it runs (a
    reload of `notification.scheduledRate`): it applies from the next period.
    """

    def __init__(self, store: Store, waker: Waker, period_s: float) -> None:
        self._store = store
        self._waker = waker
        self.period_s = period_s
        self._seen: int | None = None
        self.reads = 0  # how many times it read the head after the first (for tests)
        self.read_done: asyncio.Event | None = None  # set after each read (for tests)

    async def start(self) -> None:
        import asyncio

        head = await asyncio.to_thread(self._head)
        # Failed: no head is -1, so the first read that works wakes every connection
        # (once, perhaps for nothing) rather than taking as seen a head that rows
        # committed meanwhile, their datagram lost, have already moved.
        self._seen = -1 if head is None else head

    async def run(self) -> None:
        import asyncio

        self.read_done = self.read_done or asyncio.Event()
        if self._seen is None:  # run without start (a test): read the head first
            await self.start()
        while True:
            await asyncio.sleep(self.period_s)
            head = await asyncio.to_thread(self._head)
            self.reads += 1
            if head is not None and head != self._seen:
                self._seen = head
                self._waker.wake()
            self.read_done.set()

    def _head(self) -> int | None:
        """The outbox's head; None (logged) when the store failed: the next read that
        works compares with the last head seen, so nothing committed meanwhile is missed."""
        from nbwss import outbox

        try:
            return outbox.queued_total(self._store)
        except StoreError as exc:
            log.warning("wake.watch_failed", reason=str(exc), retry_s=self.period_s)
            return None
