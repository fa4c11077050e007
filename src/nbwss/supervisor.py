"""The connection process (spec section 4): which endpoint each server group uses.

Every `connectionInfo.period` (and at start, on `wake()` and on `endpoints_changed()`),
the supervisor reads the endpoints and applies `failover.plan()`, a pure decision: which live
connections to close (endpoint deleted, disabled, or re-added with other details) and,
per group, the enabled endpoints in the order to try them (lowest priority number
first, ties by host name).

Each group with endpoints has one task that keeps it connected: it tries the list in
order until one endpoint completes CONNECT, serves that connection until it ends, then
tries the list again at once. A group never leaves a live connection for a better one
(no pre-emption), so at most one connection per group. An endpoint being dialled or
connected is skipped by every other group (a host re-added in another group while its
old group still dials it), so never two dials of one endpoint at once.

Rounds in which no endpoint answered are spaced by a jittered exponential backoff
capped at the period (`nbwss.backoff`: from 0.05 s, or from 2 s after a refused token).
A run (periodic, or after an admin command changed the endpoints) cuts a group's wait
short only when that group's endpoints changed (added, re-added, enabled, priority);
SIGHUP (`wake`) cuts every wait short.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final

import aiohttp

from nbwss import heap
from nbwss.backoff import Backoff
from nbwss.dial import Target, trim_tls_connections
from nbwss.errors import NbwssError, NotFoundError, TokenRefusedError
from nbwss.failover import (
    Identity,
    Round,
    Signature,
    group_signature,
    identity_of,
    plan,
    retry_delay,
    token_digest,
)
from nbwss.flag import Flag
from nbwss.link import CommandHandler
from nbwss.logs import get_logger, register_secret
from nbwss.metrics import FAILOVERS
from nbwss.outbound import Proxy, load_policy
from nbwss.outboxes import GroupOutbox
from nbwss.properties import Settings
from nbwss.session import Session, connect
from nbwss.store import Store
from nbwss.trust import pinned_context
from nbwss.values import EndpointRecord

log = get_logger("nbwss.supervisor")

# TLS handshakes are CPU-bound; a thousand groups dial in waves rather than all at once.
MAX_CONCURRENT_DIALS: Final = 64


@dataclass(frozen=True, slots=True)
class LiveConnection:
    session: Session
    identity: Identity


class Supervisor:
    """Keeps each server group connected to one endpoint; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        delivery_for_group: Callable[[str], GroupOutbox] | None = None,
        command_handler: CommandHandler | None = None,
        rng: random.Random | None = None,
        backoff: Callable[[float], Backoff] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`backoff(cap_s)` makes each group's retry schedule (default: `Backoff` with
        the module's delays and `rng`'s jitter); tests pass a faster one. Raises
        `ConfigError` when the outbound proxy's settings cannot be used (e.g.
        `proxy.credentialsFile` unreadable), so `nbwss run` stops before connecting."""
        self._settings = settings
        self._env = os.environ if env is None else env
        self._outbound = (settings, load_policy(settings, self._env))
        self._store = store
        self._delivery_for_group = delivery_for_group
        self._command_handler = command_handler
        rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._backoff = backoff or (lambda cap_s: Backoff(cap_s=cap_s, rng=rng))
        self._wake = asyncio.Event()
        self._woken = False  # the next run was asked for (SIGHUP): it kicks every group
        self._signatures: dict[str, Signature] = {}
        self._changed = asyncio.Event()
        self._stopping = False
        self._groups: Mapping[str, tuple[EndpointRecord, ...]] = {}
        self._known_hosts: set[str] = set()
        self._group_tasks: dict[str, asyncio.Task[None]] = {}
        self._kicks: dict[str, Flag] = {}  # one per group: lean Events
        self._live: dict[str, LiveConnection] = {}  # by host name
        self._dialling: set[str] = set()  # host names being dialled (up to CONNECT's answer)
        self._last_host: dict[str, str] = {}  # by group: the host it was last connected to
        self._contexts: dict[str, ssl.SSLContext] = {}  # by certificate fingerprint
        self._record_texts: dict[str, str] = {}  # the last read's names and fingerprints
        self._record_certificates: dict[bytes, bytes] = {}  # and its certificates
        self._dial_slots = asyncio.Semaphore(MAX_CONCURRENT_DIALS)
        self.runs = 0

    # -- what the service and the status server use ---------------------------------------

    @property
    def connected(self) -> dict[str, str]:
        """Each server group with a CONNECTED endpoint, and that endpoint's host name."""
        return {live.session.group_id: host for host, live in self._live.items()}

    @property
    def connected_count(self) -> int:
        """How many server groups are CONNECTED (cheaper than `len(connected)`)."""
        return len(self._live)

    def wake(self) -> None:
        """Run the connection process now, and cut every group's wait short (SIGHUP,
        tests); safe from a signal handler."""
        self._woken = True
        self._wake.set()

    def endpoints_changed(self) -> None:
        """Run the connection process now (an admin command changed the endpoints): the
        groups whose endpoints changed try at once, the others keep their schedule."""
        self._wake.set()

    def update_settings(self, settings: Settings) -> None:
        """New settings (and the proxy's credentials, read again at the next dial) apply
        to connections made from now on."""
        self._settings = settings

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds, checked after every state change."""
        while not predicate():
            await self._changed.wait()

    async def close_all(self, reason: str) -> None:
        """Stop connecting, close every connection with a normal close frame, and return
        once each one's DISCONNECTED status is written."""
        self._stopping = True
        for kick in self._kicks.values():
            kick.set()
        live = list(self._live.values())
        keepers = [
            self._group_tasks[group]
            for group in {connection.session.group_id for connection in live}
            if group in self._group_tasks
        ]
        await asyncio.gather(*(connection.session.close(reason) for connection in live))
        # Each keeper writes its status after its session ended, then sees `_stopping`.
        await asyncio.gather(*keepers, return_exceptions=True)

    # -- the connection process -----------------------------------------------------------

    async def run(self) -> None:
        """Run the connection process until cancelled; every group task is owned here."""
        trim_tls_connections()
        connector = aiohttp.TCPConnector(limit=0)
        # No cookie jar: every group is a separate cloud app, even on one host name, so
        # a cookie one endpoint's handshake sets must not ride on another's.
        http = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        async with http, asyncio.TaskGroup() as tasks:
            while True:
                await self._run_once(http, tasks)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._settings.connection_period_s):
                        await self._wake.wait()
                self._wake.clear()

    async def _run_once(self, http: aiohttp.ClientSession, tasks: asyncio.TaskGroup) -> None:
        live_hosts = list(self._live)
        try:
            records, digests = await asyncio.to_thread(self._read_store, live_hosts)
        except NbwssError as exc:
            log.error("connection_process.store_unreadable", reason=str(exc))
            return
        decision = plan(records, {h: live.identity for h, live in self._live.items()}, digests)
        self._groups = decision.groups
        self._known_hosts = {record.host_name for record in records}
        fingerprints = {record.fingerprint for record in records}
        self._contexts = {f: c for f, c in self._contexts.items() if f in fingerprints}
        for host, reason in decision.close.items():
            live = self._live.get(host)
            if live is not None:
                log.info("endpoint.closing", group=live.session.group_id, host=host, reason=reason)
                live.session.request_close(reason)
        woken, self._woken = self._woken, False
        for group_id, endpoints in decision.groups.items():
            signature = group_signature(endpoints)
            changed = self._signatures.get(group_id) != signature
            self._signatures[group_id] = signature
            if group_id in self._group_tasks:
                if woken or changed:
                    self._kicks[group_id].set()  # a waiting group tries its list now
            elif not self._stopping:
                self._kicks[group_id] = Flag()
                keeper = self._keep_connected(http, group_id)
                self._group_tasks[group_id] = tasks.create_task(keeper)
        self._signatures = {g: s for g, s in self._signatures.items() if g in decision.groups}
        self.runs += 1
        self._notify()
        # The re-read's freed pages, kept by glibc in the worker thread's arena: about
        # 1 KiB per idle connection a minute otherwise (`nbwss.heap`).
        await asyncio.to_thread(heap.trim)

    def _read_store(self, live_hosts: list[str]) -> tuple[list[EndpointRecord], dict[str, str]]:
        records = self._share_with_last_read(self._store.endpoints())
        present = {record.host_name for record in records}
        digests = {}
        for host in live_hosts:
            if host not in present:
                continue
            try:
                token = self._store.token(host)
            except NotFoundError:
                continue  # deleted since `endpoints()`: no digest, so `plan` closes it
            register_secret(token)
            digests[host] = token_digest(token)
        return records, digests

    def _share_with_last_read(self, records: list[EndpointRecord]) -> list[EndpointRecord]:
        """`records` with their names, fingerprints and certificates the very objects of
        the last read's where equal. A group's keeper holds the record it dialled with
        until its connection ends, so each read every `connectionInfo.period` would
        otherwise leave a second copy per live connection (~1 KiB; issue 14)."""
        last_texts, last_certificates = self._record_texts, self._record_certificates
        texts: dict[str, str] = {}
        certificates: dict[bytes, bytes] = {}

        def text(value: str) -> str:
            return texts.setdefault(value, last_texts.get(value, value))

        def certificate(value: bytes) -> bytes:
            return certificates.setdefault(value, last_certificates.get(value, value))

        shared = [
            replace(
                record, host_name=text(record.host_name), url=text(record.url),
                group_id=text(record.group_id), fingerprint=text(record.fingerprint),
                certificate_der=certificate(record.certificate_der),
            )
            for record in records
        ]
        self._record_texts, self._record_certificates = texts, certificates
        return shared

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- one group ------------------------------------------------------------------------

    async def _keep_connected(self, http: aiohttp.ClientSession, group_id: str) -> None:
        backoff = self._backoff(self._settings.connection_period_s)
        try:
            while not self._stopping:
                endpoints = self._groups.get(group_id, ())
                if not endpoints:
                    return
                tried = await self._connect_and_serve(http, group_id, endpoints)
                delay = retry_delay(tried, backoff)
                if delay is None:
                    continue  # a connection dropped: try the list again at once
                log.debug("group.retry", group=group_id, delay_s=round(delay, 3))
                await self._pause(group_id, delay)
        finally:
            del self._group_tasks[group_id]
            del self._kicks[group_id]
            self._notify()

    async def _pause(self, group_id: str, delay_s: float) -> None:
        kick = self._kicks[group_id]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await kick.wait()
        kick.clear()

    async def _connect_and_serve(
        self, http: aiohttp.ClientSession, group_id: str, endpoints: Sequence[EndpointRecord]
    ) -> Round:
        """Try `endpoints` in order; serve the first that connects."""
        refused = False
        for record in endpoints:
            if self._stopping:
                return Round(None, refused)
            if record.host_name in self._live or record.host_name in self._dialling:
                continue  # dialled or connected by another group (re-added elsewhere)
            self._dialling.add(record.host_name)
            try:
                session = await self._try(http, record)
            except TokenRefusedError:
                refused = True
                continue
            finally:
                self._dialling.discard(record.host_name)
            if session is None:
                continue
            if self._stopping:  # close_all ran while this one was being made
                del self._live[record.host_name]
                await session.abort()
                return Round(None, refused)
            return Round(await self._serve(session, record), refused)
        return Round(None, refused)

    async def _try(self, http: aiohttp.ClientSession, record: EndpointRecord) -> Session | None:
        """Dial and complete CONNECT; None when that failed (logged and written as the
        endpoint's last error), and `TokenRefusedError` again after that when the
        endpoint refused the token."""
        group_id, host = record.group_id, record.host_name
        try:
            token = await asyncio.to_thread(self._store.token, host)
            register_secret(token)
            target = Target(group_id, host, record.url, token, record.certificate_der)
            session = await connect(
                http, target, self._settings, self._context(record),
                delivery=self._delivery(group_id), command_handler=self._command_handler,
                dial_slots=self._dial_slots, proxy=self._proxy_for(record.url),
            )
        except (NbwssError, ConnectionError) as exc:
            log.warning("endpoint.connect_failed", group=group_id, host=host, reason=str(exc))
            await self._set_status(host, False, str(exc))
            self._notify()
            if isinstance(exc, TokenRefusedError):
                raise
            return None
        except Exception as exc:  # a bug must not take the other groups down
            log.exception("endpoint.connect_error", group=group_id, host=host)
            await self._set_status(host, False, f"internal error: {type(exc).__name__}")
            return None
        self._live[host] = LiveConnection(session, identity_of(record, token_digest(token)))
        return session

    async def _serve(self, session: Session, record: EndpointRecord) -> float:
        group_id, host = record.group_id, record.host_name
        previous = self._last_host.get(group_id)
        if previous is not None and previous != host:
            FAILOVERS.labels(group=group_id).inc()
        self._last_host[group_id] = host
        log.info("endpoint.connected", group=group_id, host=host, priority=record.priority)
        await self._set_status(host, True)
        self._notify()
        started = time.monotonic()
        reason = "daemon stopping"
        try:
            reason = await session.run()
        except Exception as exc:  # a bug must not take the other groups down
            log.exception("connection.failed", group=group_id, host=host)
            reason = f"internal error: {type(exc).__name__}"
        finally:
            del self._live[host]
            log.info("endpoint.disconnected", group=group_id, host=host, reason=reason)
            self._notify()
        await self._set_status(host, False, reason)
        return time.monotonic() - started

    async def _set_status(self, host: str, connected: bool, reason: str | None = None) -> None:
        if host not in self._known_hosts:
            return  # deleted: a status row would outlive its endpoint
        try:
            await asyncio.to_thread(self._store.set_status, host, connected, reason)
        except NbwssError as exc:
            log.error("endpoint.status_unwritable", host=host, reason=str(exc))

    def _proxy_for(self, url: str) -> Proxy | None:
        """The outbound proxy for `url`, decided by the settings in force: after a reload,
        `proxy.credentialsFile` is read again (a `ConfigError` fails this dial only)."""
        settings, decided = self._outbound
        if settings is not self._settings:
            decided = load_policy(self._settings, self._env)
            self._outbound = (self._settings, decided)
        return decided.proxy_for(url)

    def _context(self, record: EndpointRecord) -> ssl.SSLContext:
        context = self._contexts.get(record.fingerprint)
        if context is None:
            context = self._contexts[record.fingerprint] = pinned_context(record.certificate_der)
        return context

    def _delivery(self, group_id: str) -> GroupOutbox | None:
        """The group's outbox to deliver (the factory keeps one per group: its ledger
        outlives each connection)."""
        if self._delivery_for_group is None:
            return None
        return self._delivery_for_group(group_id)
