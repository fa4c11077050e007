"""Admin operations on endpoints, as library functions: the CLI and the demo call these.

Each change is one store transaction and one log event, then a wake-up datagram to the
running daemon's connection process (`wake.ENDPOINTS_DATAGRAM`), so the change applies
within a moment instead of at the next `connectionInfo.period`. What to print, and
whether to ask, is the caller's business: nothing here reads a terminal.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from nbwss import logs, outbox
from nbwss.dial import Target
from nbwss.endpoints import EndpointDetails
from nbwss.errors import (
    MSG_NO_SSL,
    ConnectError,
    NbwssError,
    NotFoundError,
    StoreError,
    TrustError,
    unable_to_delete_certificate,
)
from nbwss.outbound import Proxy
from nbwss.properties import Settings
from nbwss.session import connect
from nbwss.store import Store
from nbwss.trust import CertificateInfo, fetch_certificate, pinned_context
from nbwss.values import EndpointRecord
from nbwss.wake import ENDPOINTS_DATAGRAM, send_wake

log = logs.get_logger("nbwss.endpoint")


@dataclass(frozen=True, slots=True)
class Inspection:
    """Details from the source, and the certificate their server presents right now."""

    details: EndpointDetails
    certificate: CertificateInfo

    @property
    def server(self) -> str:
        return f"{self.details.server_host}:{self.details.port}"


async def inspect(
    details: EndpointDetails, timeout_s: float, proxy: Proxy | None = None
) -> Inspection:
    """Connect to the details' server (through `proxy` when given) and take the
    certificate it presents."""
    certificate = await fetch_certificate(details.server_host, details.port, timeout_s, proxy)
    return Inspection(details, certificate)


def certificate_problems(inspection: Inspection, now: datetime) -> list[str]:
    """Why the daemon could not use this certificate: it checks host name and validity."""
    cert, host = inspection.certificate, inspection.details.server_host
    problems = []
    if not cert.names_host(host):
        names = ", ".join(cert.sans) or "none"
        problems.append(f"the certificate does not name {host} (its names: {names})")
    if now > cert.not_after:
        problems.append(f"the certificate expired on {cert.not_after:%Y-%m-%d %H:%M} UTC")
    elif now < cert.not_before:
        problems.append(f"the certificate is not valid before {cert.not_before:%Y-%m-%d %H:%M} UTC")
    return problems


def add_endpoint(store: Store, inspection: Inspection, *, replace: bool = False) -> None:
    """Store the details and pin the certificate seen (`replace` renews one in place).

    Refuses a certificate the daemon could not use (expired, host not named)."""
    problems = certificate_problems(inspection, datetime.now(UTC))
    if problems:
        raise TrustError(f"{MSG_NO_SSL}: {problems[0]}")
    details, cert = inspection.details, inspection.certificate
    store.add_endpoint(details, cert.der, cert.fingerprint, replace=replace)
    log.info(
        "endpoint.replaced" if replace else "endpoint.added",
        host=details.host_name,
        group=details.group_id,
        priority=details.priority,
        fingerprint=cert.fingerprint,
    )


def set_enabled(store: Store, host_name: str, enabled: bool) -> bool:
    """Enable or disable an endpoint; False when it already was."""
    record = store.endpoint(host_name)
    if record.enabled == enabled:
        return False
    store.set_enabled(record.host_name, enabled)
    log.info("endpoint.enabled" if enabled else "endpoint.disabled",
             host=record.host_name, group=record.group_id)
    return True


def delete_endpoint(store: Store, host_name: str, *, keep_position: bool = False) -> EndpointRecord:
    """Remove an endpoint and its pinned certificate; `keep_position` keeps the backlog of
    a group left empty for the group's next endpoint. Returns what was deleted."""
    record = store.endpoint(host_name)
    try:
        store.delete_endpoint(record.host_name, keep_position=keep_position)
    except NotFoundError:
        raise  # deleted meanwhile: the guide's "no entity was found"
    except (sqlite3.Error, StoreError) as exc:
        raise StoreError(f"{unable_to_delete_certificate(host_name)} ({exc})") from None
    log.info("endpoint.deleted", host=record.host_name, group=record.group_id,
             kept_position=keep_position)
    return record


@dataclass(frozen=True, slots=True)
class AtRisk:
    """Unacknowledged notifications a change would stop delivering (or discard)."""

    group_id: str
    count: int
    since: float  # epoch seconds: when the oldest of them was queued


def backlog_at_risk(store: Store, host_name: str, *, deleting: bool) -> AtRisk | None:
    """What removing `host_name` from its group's service would leave undelivered.

    Deleting the group's last endpoint discards its backlog (the group forgets its
    position); disabling its last enabled one stops delivery until one is enabled again.
    None when the group keeps an endpoint for them, or has nothing waiting.
    """
    record = store.endpoint(host_name)
    if not deleting and not record.enabled:
        return None
    others = [r for r in store.endpoints()
              if r.group_id == record.group_id and r.host_name != record.host_name]
    if any(deleting or r.enabled for r in others):
        return None
    now = time.time()
    for figures in outbox.backlog(store, now):
        if figures.group_id == record.group_id and figures.backlog:
            age = figures.oldest_unacked_age_s or 0.0
            return AtRisk(record.group_id, figures.backlog, now - age)
    return None


def wake_daemon(settings: Settings) -> bool:
    """Tell a running daemon that the endpoints changed; False when none listens."""
    return send_wake(settings.wake_socket, ENDPOINTS_DATAGRAM)


# -- the handshake test (`endpoint test`, `endpoint validate --connect`) -----------------------

# The close frame's reason on the test connection: the app sees it.
TEST_CLOSE_REASON = "nbwss endpoint test done"
# How long the test waits for its TLS connection to finish closing after the close frames.
TRANSPORT_CLOSE_S = 2.0


@dataclass(frozen=True, slots=True)
class Probe:
    """What a handshake test saw: whether the endpoint accepted the token, and how fast."""

    host_name: str
    url: str
    valid: bool
    round_trip_ms: float  # from starting to dial until the CONNECT answer (or the failure)
    http_status: int | None = None  # the endpoint's answer when it refused the upgrade
    reason: str | None = None  # why it is not valid
    proxy: str | None = None  # the outbound proxy the test went through

    def to_json(self) -> dict[str, Any]:
        return {
            "hostName": self.host_name,
            "url": self.url,
            "valid": self.valid,
            "httpStatus": self.http_status,
            "roundTripMs": self.round_trip_ms,
            "reason": self.reason,
            "proxy": self.proxy,
        }


async def probe(target: Target, settings: Settings, proxy: Proxy | None = None) -> Probe:
    """Dial `target` over its pinned certificate, send CONNECT with its token, and close.

    The daemon's own connection code (`session.connect`) on a connection of its own: the
    app sees a second connection that sends CONNECT and, once answered, closes with a
    normal close frame (1000, `TEST_CLOSE_REASON`). Nothing is stored; a running daemon's
    connection is not touched."""
    started = time.monotonic()
    shown = proxy.url if proxy is not None else None
    watch, closing = _closing_watch()
    async with aiohttp.ClientSession(trace_configs=[watch]) as http:
        try:
            session = await connect(http, target, settings,
                                    pinned_context(target.certificate_der), proxy=proxy)
        except (NbwssError, ConnectionError) as exc:
            status = exc.http_status if isinstance(exc, ConnectError) else None
            result = Probe(target.host_name, target.url, False, _ms_since(started), status,
                           str(exc), shown)
        else:
            result = Probe(target.host_name, target.url, True, _ms_since(started), proxy=shown)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(session.run())
                await session.close(TEST_CLOSE_REASON)
    if closing:  # the command's event loop ends next: let TLS close first
        await asyncio.wait(closing, timeout=TRANSPORT_CLOSE_S)
    log.info("endpoint.tested", host=target.host_name, group=target.group_id,
             valid=result.valid, took_ms=result.round_trip_ms, reason=result.reason)
    return result


def _closing_watch() -> tuple[aiohttp.TraceConfig, list[asyncio.Future[None]]]:
    """A trace that collects, for each request (the WebSocket upgrade), the future its
    connection sets once the transport is gone. A closed WebSocket leaves the TLS
    shutdown (close_notify both ways) to run on; a command that ended its event loop
    right away would cut it off and leak the socket."""
    closing: list[asyncio.Future[None]] = []

    async def on_request_end(
        _session: aiohttp.ClientSession, _context: Any, params: aiohttp.TraceRequestEndParams
    ) -> None:
        connection = params.response.connection
        protocol = connection.protocol if connection is not None else None
        closed = protocol.closed if protocol is not None else None  # (empty is falsy)
        if closed is not None:
            closing.append(closed)

    watch = aiohttp.TraceConfig()
    watch.on_request_end.append(on_request_end)
    return watch, closing


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
