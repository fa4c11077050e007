"""`/status` and `/metrics`, served on a local-only address.

The status server answers admins and Prometheus on the machine itself: a Unix socket
(default `nbwss.sock` beside the database, mode 0600, so only the service's user can
read it) or a loopback TCP port (`status.listen=127.0.0.1:9464`). Any other address is
refused at start: the service holds no secrets here, but it is not a public API.

Figures that live in the database (backlog, oldest unacknowledged age, queued total)
are read from it at request time, because `nbwss notify` queues from other processes.
What only the running daemon knows (the live connection, the batch in flight, the last
error) comes from a `StatusSource` (`daemon.LiveStatus`). `/metrics` renders its
per-group series from the same document as `/status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nbwss import __version__, health, logs, outbox
from nbwss.component import Component
from nbwss.errors import ConfigError, NbwssError
from nbwss.metrics import REGISTRY
from nbwss.statusview import group_views
from nbwss.store import Store
from nbwss.values import GroupStatus
from nbwss.vault import make_private_dirs

log = logs.get_logger("nbwss.status")

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# -- the address -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnixAddress:
    path: Path

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True, slots=True)
class TcpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


StatusAddress = UnixAddress | TcpAddress


def parse_status_address(text: str) -> StatusAddress:
    """`status.listen`: a socket path, `127.0.0.1:PORT` or `[::1]:PORT`; loopback only."""
    value = text.strip()
    host, sep, port = value.rpartition(":")
    if value.startswith("/") or not sep or not port.isdigit():
        if not value:
            raise ConfigError("status.listen is empty")
        return UnixAddress(Path(value))
    host = host.removeprefix("[").removesuffix("]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"status.listen={value!r}: the host must be a loopback address "
            "(127.0.0.1 or [::1]), not a name"
        ) from None
    if not address.is_loopback:
        raise ConfigError(
            f"status.listen={value!r} is not a loopback address: /status and /metrics "
            "are served on this machine only (use 127.0.0.1:PORT, [::1]:PORT or a socket path)"
        )
    if int(port) > 65535:
        raise ConfigError(f"status.listen={value!r}: port {port} is out of range")
    return TcpAddress(str(address), int(port))


# -- the /status document ----------------------------------------------------------------


class StatusSource(Protocol):
    """The running daemon's live view, per server group (`daemon.LiveStatus`).

    `snapshot()` is called on the event loop for each /status request and must be cheap.
    Each `GroupStatus` replaces what the store alone suggests for its group: whether it
    is connected and to which endpoint, the NOTIFICATION awaiting its ack (and whether
    it is stalled: `delivery` is `STALLED` while it has been sent
    `notification.stallAfterSends` times without an ack), and (once one was committed
    since start) the time of the last ack.
    """

    def snapshot(self) -> Mapping[str, GroupStatus]: ...


class PollerView(Protocol):
    """The REST poller's part of /status (`nbwss.sources.poller.Poller` implements it):
    `api_version` in use, `records_set_aside`, ..."""

    def status_view(self) -> dict[str, Any]: ...


def _age(now: float, then: float | None) -> float | None:
    return None if then is None else _rounded(now - then)


def _rounded(age_s: float | None) -> float | None:
    return None if age_s is None else round(max(0.0, age_s), 3)


def store_snapshot(store: Store, now: float) -> dict[str, dict[str, Any]]:
    """Per server group, what the database alone says (endpoints, cursor, batch, backlog)."""
    groups: dict[str, dict[str, Any]] = {}
    for record in store.endpoints():
        group = groups.setdefault(record.group_id, _empty_group())
        group["endpoints"].append({
            "host_name": record.host_name, "url": record.url, "priority": record.priority,
            "enabled": record.enabled, "connected": record.connected,
            "since": record.status_since, "last_error": record.last_error,
        })
        if record.connected and group["endpoint"] is None:
            group.update(connected=True, endpoint=record.host_name, url=record.url,
                         since=record.status_since)
        if record.last_error and group["last_error"] is None:
            group["last_error"] = f"{record.host_name}: {record.last_error}"
    for figures in outbox.backlog(store, now):
        groups.setdefault(figures.group_id, _empty_group()).update(
            acked_seq=figures.acked_seq, last_ack=figures.cursor_moved_at,
            backlog=figures.backlog, oldest_unacked_age_s=_rounded(figures.oldest_unacked_age_s),
        )
    for group_id, (batch, count) in outbox.batches_in_flight(store).items():
        groups.setdefault(group_id, _empty_group())["outstanding"] = {
            "message_id": batch.message_id, "first_seq": batch.first_seq,
            "last_seq": batch.last_seq, "count": count, "sent_at": batch.sent_at,
            "sends": None, "stalled": None,
        }
    return groups


def _empty_group() -> dict[str, Any]:
    return {
        "connected": False, "endpoint": None, "url": None, "since": None,
        "outstanding": None, "delivery": "OK", "backlog": 0, "oldest_unacked_age_s": None,
        "acked_seq": None, "last_ack": None, "last_error": None, "endpoints": [],
    }


def status_document(store: Store, now: float, started_at: float) -> dict[str, Any]:
    """The JSON of GET /status as the database alone sees it (see `overlay_live`)."""
    groups = store_snapshot(store, now)
    document = {
        "version": __version__,
        "pid": os.getpid(),
        "started_at": started_at,
        "uptime_s": _age(now, started_at),
        "live": False,
        "groups": dict(sorted(groups.items())),
    }
    _fill_ages(document, now)
    return document


def overlay_live(document: dict[str, Any], live: Mapping[str, GroupStatus], now: float) -> None:
    """Replace the store's guesses with what the running daemon knows."""
    groups: dict[str, dict[str, Any]] = document["groups"]
    for group_id, status in live.items():
        groups.setdefault(group_id, _empty_group()).update(status.fields())
    document["groups"] = dict(sorted(groups.items()))
    document["live"] = True
    _fill_ages(document, now)


# -- /metrics ----------------------------------------------------------------------------


class StoreCollector(Collector):
    """The notifications ever queued, read from the database at scrape time (other
    processes queue too)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        queued = CounterMetricFamily(
            "nbwss_notifications_queued", "Notifications ever queued (the outbox's highest seq)."
        )
        queued.add_metric([], outbox.queued_total(self._store))
        yield queued


def group_families(document: Mapping[str, Any]) -> list[Metric]:
    """The per-group series, read from the `/status` document of the same scrape (through
    `statusview`, as `nbwss status` and `/ready` read it), so they agree with it."""
    connected = GaugeMetricFamily(
        "nbwss_connected", "1 while the group is connected to that endpoint, else 0.",
        labels=["group", "host"],
    )
    backlog = GaugeMetricFamily(
        "nbwss_backlog", "Notifications not yet acknowledged by the group.", labels=["group"]
    )
    oldest = GaugeMetricFamily(
        "nbwss_oldest_unacked_age_seconds",
        "Age of the group's oldest unacknowledged notification (0 when none).",
        labels=["group"],
    )
    last_ack = GaugeMetricFamily(
        "nbwss_last_ack_timestamp_seconds",
        "When the group last acknowledged a notification (or was added), epoch seconds.",
        labels=["group"],
    )
    for group in group_views(document):
        # Every enabled endpoint has a series (0 until connected), so a group that never
        # connected is seen as down; a group with all endpoints disabled is not judged.
        hosts = [endpoint.host_name for endpoint in group.endpoints if endpoint.enabled]
        if group.connected and group.endpoint is not None and group.endpoint not in hosts:
            hosts.append(group.endpoint)  # disabled or deleted, until the next run closes it
        for host in hosts:
            up = group.connected and host == group.endpoint
            connected.add_metric([group.group_id, host], 1.0 if up else 0.0)
        backlog.add_metric([group.group_id], group.backlog)
        oldest.add_metric([group.group_id], group.oldest_unacked_age_s or 0.0)
        if group.last_ack is not None:
            last_ack.add_metric([group.group_id], group.last_ack)
    return [connected, backlog, oldest, last_ack]


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def render_metrics(store_registry: CollectorRegistry, document: Mapping[str, Any]) -> bytes:
    """The daemon's counters, the store's figures and the per-group series of `document`,
    in the Prometheus text format."""
    groups = CollectorRegistry(auto_describe=False)
    groups.register(_Families(group_families(document)))
    return generate_latest(REGISTRY) + generate_latest(store_registry) + generate_latest(groups)


# -- the server --------------------------------------------------------------------------


class StatusServer(Component):
    """A component of the daemon: `run()` serves until cancelled, then removes its socket."""

    def __init__(
        self,
        address: str,
        store: Store,
        source: StatusSource | None = None,
        *,
        max_backlog_age_s: float = 600.0,
        poller: PollerView | None = None,
    ) -> None:
        self.address = parse_status_address(address)  # refuses a non-loopback one at once
        self._store = store
        self._source = source
        self._max_backlog_age_s = max_backlog_age_s
        self._poller = poller
        self._store_registry = CollectorRegistry(auto_describe=False)
        self._store_registry.register(StoreCollector(store))
        self._started_at = time.time()
        self.ready = asyncio.Event()  # set once the address accepts connections
        self._runner: web.AppRunner | None = None
        self._unix_inode: int | None = None

    async def start(self) -> None:
        """Bind the address and serve; a `ConfigError` names it when it cannot be had."""
        app = web.Application()
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/healthz", self._healthz)
        self._runner = runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        if isinstance(self.address, UnixAddress):
            listener, self._unix_inode = bind_private_unix_socket(self.address.path)
            site: web.BaseSite = web.SockSite(runner, listener)
        else:
            site = web.TCPSite(runner, self.address.host, self.address.port)
        try:
            await site.start()
        except OSError as exc:
            # aiohttp rewraps the bind error; its errno says it in the system's words.
            reason = os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc)
            raise ConfigError(f"cannot serve status at {self.address}: {reason}") from None
        if isinstance(self.address, TcpAddress) and self.address.port == 0:
            self.address = TcpAddress(self.address.host, runner.addresses[0][1])
        log.info("status.listening", address=str(self.address))
        self.ready.set()

    async def run(self) -> None:
        """Serve until cancelled (started here, and stopped, when the service did not)."""
        owned = self._runner is None
        try:
            if owned:
                await self.start()
            await asyncio.Event().wait()  # until cancelled
        finally:
            if owned:
                await self.stop()

    async def stop(self) -> None:
        """Close the server and remove its socket (unless another process put its own)."""
        runner, self._runner = self._runner, None
        self.ready.clear()
        if runner is not None:
            await runner.cleanup()
        inode, self._unix_inode = self._unix_inode, None
        if isinstance(self.address, UnixAddress) and inode is not None:
            _remove_if_ours(self.address.path, inode)

    async def _document(self) -> dict[str, Any]:
        document = await asyncio.to_thread(
            status_document, self._store, time.time(), self._started_at
        )
        if self._source is not None:  # the live view is read on the loop, where it lives
            overlay_live(document, self._source.snapshot(), time.time())
        document["poller"] = None if self._poller is None else self._poller.status_view()
        return document

    async def _status(self, _: web.Request) -> web.Response:
        document = await self._document()
        return web.json_response(document, dumps=lambda v: json.dumps(v, indent=2, allow_nan=False))

    async def _ready(self, _: web.Request) -> web.Response:
        """200 when every enabled group is CONNECTED with a young backlog, else 503."""
        document = await self._document()
        failing = health.failing_groups(document, self._max_backlog_age_s)
        if failing:
            return web.Response(status=503, text="".join(f"{line}\n" for line in failing))
        return web.Response(text=f"ready: {health.enabled_group_count(document)} enabled "
                                 "server group(s) CONNECTED\n")

    async def _healthz(self, _: web.Request) -> web.Response:
        """Answered from the event loop: a hung loop answers nothing (the watchdog's case)."""
        return web.Response(text="ok\n")

    async def _metrics(self, _: web.Request) -> web.Response:
        document = await self._document()  # the figures of /status, live view included
        body = await asyncio.to_thread(render_metrics, self._store_registry, document)
        return web.Response(body=body, headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})


def _fill_ages(document: dict[str, Any], now: float) -> None:
    for group in document["groups"].values():
        outstanding = group["outstanding"]
        if outstanding is not None:
            outstanding["age_s"] = _age(now, outstanding.get("sent_at"))


def bind_private_unix_socket(path: Path) -> tuple[socket.socket, int]:
    """A listening Unix socket at `path` (and its inode), 0600 from the moment it has that name.

    The socket is bound under a temporary name in a private directory, made 0600, then
    renamed into place, so there is no window in which another user could connect. A
    socket left behind by a dead daemon is replaced; one that answers is not.
    """
    if path.exists() and not path.is_socket():
        raise ConfigError(f"status.listen: {path} exists and is not a socket; not replacing it")
    if _answers(path):
        raise ConfigError(f"another nbwss is already serving status at {path}")
    make_private_dirs(path.parent)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".sock-") as private:
            staging = Path(private) / "s"
            listener.bind(str(staging))
            os.chmod(staging, 0o600)
            os.replace(staging, path)
        inode = path.stat().st_ino
        listener.listen(64)
        listener.setblocking(False)
    except OSError as exc:
        listener.close()
        raise ConfigError(f"cannot serve status at {path}: {exc.strerror}") from None
    return listener, inode


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _remove_if_ours(path: Path, inode: int) -> None:
    """Unlink the socket unless another process has since put its own there."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_ino == inode:
            path.unlink()


# -- the client (`nbwss status`, `nbwss endpoint list`) --------------------------------------


async def fetch_status(address_text: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """GET /status from the running daemon; an `NbwssError` says plainly when it is not."""
    address = parse_status_address(address_text)
    connector: aiohttp.BaseConnector
    if isinstance(address, UnixAddress):
        if not address.path.exists():
            raise NbwssError(f"the daemon is not running (no status socket at {address.path})")
        connector = aiohttp.UnixConnector(path=str(address.path))
        url = "http://localhost/status"
    else:
        connector = aiohttp.TCPConnector()
        url = f"http://{address}/status"
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        try:
            async with session.get(url) as response:
                response.raise_for_status()
                document: dict[str, Any] = await response.json()
                return document
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, PermissionError):
                raise NbwssError(
                    f"permission denied on the status socket at {address} "
                    "(run as the service's user, e.g. with sudo)"
                ) from None
            raise NbwssError(f"the daemon is not running (nothing answers at {address})") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NbwssError(f"the daemon at {address} did not answer /status: {exc}") from None
