"""`nbwss doctor`: the set-up an admin can get wrong, checked, with what to fix.

Each check returns findings (ok, warning, FAIL) with a fix for anything not ok:
the key, the store and the systemd unit agree (the admin commands and the daemon must
open the same database with the same key); owners and modes of the files; every
stored token opens with the key; the local REST API answers and accepts the
credentials; each endpoint still presents its pinned certificate, and that certificate
is not expiring; the clock agrees with the REST API's. `check_key` is also what stops
`nbwss run` at start when a token cannot be decrypted.
"""

from __future__ import annotations

import asyncio
import enum
import os
import pwd
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from nbwss.errors import ConfigError, NbwssError, StoreError
from nbwss.outbound import DIRECT, ProxyPolicy, load_policy
from nbwss.properties import Settings
from nbwss.store import Store
from nbwss.trust import certificate_info, fetch_certificate

UNIT = Path("/etc/systemd/system/nbwss.service")
EXPIRY_WARNING = timedelta(days=30)
CLOCK_SKEW_S = 60.0
CONNECT_TIMEOUT_S = 5.0


class Verdict(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Finding:
    verdict: Verdict
    text: str
    fix: str | None = None


def ok(text: str) -> Finding:
    return Finding(Verdict.OK, text)


# -- the key and the tokens ------------------------------------------------------------------


def check_key(store: Store, settings: Settings) -> None:
    """Raise a one-line error naming the store and the key when a stored token cannot be
    decrypted with the key in use (the daemon would retry every endpoint forever)."""
    hosts = [record.host_name for record in store.endpoints()]
    if hosts and not settings.key_file.exists():
        raise StoreError(
            f"the key {settings.key_file} does not exist, but the store {settings.database} "
            f"holds {len(hosts)} endpoint token(s) sealed with a key: point store.keyFile "
            "(or LoadCredential=) at that key; 'nbwss doctor' compares them"
        )
    for host in hosts:
        try:
            store.token(host)
        except StoreError:
            raise StoreError(
                f"the token of {host} in the store {settings.database} cannot be decrypted "
                f"with the key {settings.key_file}: the admin commands and the daemon use "
                "different keys; point store.keyFile (or LoadCredential=) at the key the "
                "tokens were sealed with ('nbwss doctor' compares them)"
            ) from None


def key_findings(store: Store, settings: Settings) -> list[Finding]:
    try:
        check_key(store, settings)
    except StoreError as exc:
        return [Finding(Verdict.FAIL, f"tokens: {exc}",
                        "set store.keyFile to the key the tokens were sealed with")]
    count = len(store.endpoints())
    return [ok(f"tokens: {count} endpoint token(s) open with the key {settings.key_file}")]


# -- the unit ----------------------------------------------------------------------------------


def unit_directives(unit: Path) -> dict[str, str]:
    """The [Service] keys of a unit file (the last value of each)."""
    found: dict[str, str] = {}
    for line in unit.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith(("#", ";", "[")):
            found[key.strip()] = value.strip()
    return found


def unit_findings(settings: Settings, config: Path | None, unit: Path) -> list[Finding]:
    """The daemon under `unit` must read this configuration, this database and this key."""
    if not unit.exists():
        return [Finding(Verdict.WARNING, f"unit: {unit} is not installed",
                        "sudo nbwss service install")]
    directives = unit_directives(unit)
    findings = []
    unit_config = directives.get("Environment", "").partition("NBWSS_CONFIG=")[2] or None
    if unit_config and config is not None and Path(unit_config) != config:
        findings.append(Finding(
            Verdict.FAIL, f"unit: the daemon reads {unit_config}, this command {config}",
            f"run admin commands with -c {unit_config} (or set NBWSS_CONFIG)"))
    credential = directives.get("LoadCredential", "").partition("nbwss.key:")[2]
    if credential and Path(credential) != settings.key_file:
        findings.append(Finding(
            Verdict.FAIL, f"key: the daemon gets the key {credential} (LoadCredential=), "
            f"the admin commands read {settings.key_file}",
            f"set store.keyFile={credential} in {config or 'nbwss.properties'}"))
    state = directives.get("StateDirectory")
    daemon_db = settings.store_path if settings.source is not None else None
    if state and daemon_db is None:
        daemon_db = Path("/var/lib") / state / "nbwss.db"
    if daemon_db is not None and daemon_db != settings.database:
        findings.append(Finding(
            Verdict.FAIL, f"store: the daemon uses {daemon_db}, this command {settings.database}",
            f"set store.path={daemon_db} in {config or 'nbwss.properties'}"))
    return findings or [ok(f"unit: {unit} uses this configuration, database and key")]


# -- owners and modes --------------------------------------------------------------------------


def _mode_finding(path: Path, what: str, forbidden: int, owner: str | None) -> Finding:
    try:
        status = path.stat()
    except OSError as exc:
        return Finding(Verdict.FAIL, f"{what}: {path}: {exc.strerror}", f"check {path}")
    mode = stat.S_IMODE(status.st_mode)
    if mode & forbidden:
        wanted = oct(mode & ~forbidden)[2:]
        return Finding(Verdict.FAIL, f"{what}: {path} is mode {oct(mode)[2:]}",
                       f"chmod {wanted} {path}")
    if owner is not None:
        try:
            uid = pwd.getpwnam(owner).pw_uid
        except KeyError:
            uid = None
        if uid is not None and status.st_uid not in (uid, 0):
            return Finding(Verdict.FAIL, f"{what}: {path} is owned by uid {status.st_uid}",
                           f"chown {owner} {path}")
    return ok(f"{what}: {path} mode {oct(mode)[2:]}")


def file_findings(settings: Settings, service_user: str | None) -> list[Finding]:
    """Key: no write for the group, nothing for others; database: its owner's only."""
    findings = [_mode_finding(settings.key_file, "key file", 0o027, None)]
    if settings.database.exists():
        findings.append(_mode_finding(settings.database, "database", 0o077, service_user))
    if settings.source is not None:
        findings.append(_mode_finding(settings.source, "properties file", 0o022, None))
    return findings


# -- the REST API and the clock -----------------------------------------------------------------


async def rest_api_findings(settings: Settings, env: Mapping[str, str]) -> list[Finding]:
    """The API answers (any HTTP status), its clock agrees, and it takes our credentials."""
    from nbwss.sources import restclient  # the poller's client, only when checked
    from nbwss.sources.apiversion import VersionNegotiation

    base = settings.rest_api_base_url
    try:
        context = restclient.ssl_for(settings)
    except NbwssError as exc:
        return [Finding(Verdict.FAIL, f"REST API: {exc}", "fix restApi.caFile")]
    timeout = aiohttp.ClientTimeout(total=CONNECT_TIMEOUT_S * 2)
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        try:
            async with session.get(f"{base}/netbackup/") as response:
                server_date = response.headers.get("Date")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return [Finding(Verdict.FAIL, f"REST API: {base} does not answer "
                            f"({type(exc).__name__})", "check restApi.baseUrl, "
                            "restApi.caFile, and that NetBackup's web service runs")]
        findings = [ok(f"REST API: {base} answers"), clock_finding(server_date, time.time())]
        if not settings.poller_active:
            return [*findings, ok("REST API credentials: none configured (no poller)")]
        try:
            credentials = restclient.load_credentials(settings, env)
            client = restclient.RestClient(
                base, credentials, session, 1,
                negotiation=VersionNegotiation(settings.rest_api_version))
            await client.get_json("/admin/jobs", [("page[limit]", "1")])
        except NbwssError as exc:
            return [*findings, Finding(
                Verdict.FAIL, f"REST API credentials: {exc}",
                "check restApi.apiKeyFile, or restApi.userName and restApi.passwordFile")]
    return [*findings, ok("REST API credentials: accepted")]


def clock_finding(server_date: str | None, now: float) -> Finding:
    if server_date is None:
        return Finding(Verdict.WARNING, "clock: the REST API sent no Date to compare with")
    try:
        skew = now - parsedate_to_datetime(server_date).timestamp()
    except (TypeError, ValueError):
        return Finding(Verdict.WARNING, f"clock: the REST API's Date {server_date!r} is unreadable")
    if abs(skew) > CLOCK_SKEW_S:
        return Finding(Verdict.FAIL, f"clock: {skew:+.0f} s from the REST API's",
                       "synchronise the clock (timedatectl set-ntp true)")
    return ok(f"clock: within {CLOCK_SKEW_S:g} s of the REST API's")


# -- the endpoints' certificates ----------------------------------------------------------------


def outbound_findings(
    settings: Settings, env: Mapping[str, str]
) -> tuple[ProxyPolicy, list[Finding]]:
    """The outbound proxy the daemon would use; a FAIL when its settings cannot be used."""
    try:
        return load_policy(settings, env), []
    except ConfigError as exc:
        fix = "fix the proxy.* settings (see docs/configuration.md); checked without a proxy"
        return DIRECT, [Finding(Verdict.FAIL, f"outbound proxy: {exc}", fix)]


async def endpoint_findings(
    store: Store, now: datetime, outbound: ProxyPolicy = DIRECT
) -> list[Finding]:
    """Each endpoint presents its pinned certificate (seen through the outbound proxy, as
    the daemon sees it), which is neither expired nor expiring."""
    findings = []
    for record in store.endpoints():
        pinned = certificate_info(record.certificate_der)
        name = f"endpoint {record.host_name}"
        if now > pinned.not_after:
            findings.append(Finding(Verdict.FAIL, f"{name}: the pinned certificate expired on "
                                    f"{pinned.not_after:%Y-%m-%d}", _renew(record.host_name)))
        elif now + EXPIRY_WARNING > pinned.not_after:
            findings.append(Finding(Verdict.WARNING, f"{name}: the pinned certificate expires on "
                                    f"{pinned.not_after:%Y-%m-%d}", _renew(record.host_name)))
        url = urlsplit(record.url)
        try:
            seen = await fetch_certificate(url.hostname or record.host_name, url.port or 443,
                                           CONNECT_TIMEOUT_S, outbound.proxy_for(record.url))
        except NbwssError as exc:
            findings.append(Finding(Verdict.WARNING, f"{name}: {exc}",
                                    "check that the endpoint server runs and is reachable"))
            continue
        if seen.fingerprint != record.fingerprint:
            findings.append(Finding(
                Verdict.FAIL, f"{name}: presents {seen.fingerprint}, pinned "
                f"{record.fingerprint}", _renew(record.host_name)))
        else:
            findings.append(ok(f"{name}: presents its pinned certificate "
                               f"(until {pinned.not_after:%Y-%m-%d})"))
    return findings or [ok("endpoints: none added yet")]


def _renew(host: str) -> str:
    return (f"confirm the new certificate with the cloud app, then 'nbwss endpoint add "
            f"--replace --file DETAILS --fingerprint SHA256' ({host})")


# -- all of it ----------------------------------------------------------------------------------


def run(store: Store, settings: Settings, config: Path | None, unit: Path) -> list[Finding]:
    """Every check, in the order an admin would fix things."""
    service_user = unit_directives(unit).get("User") if unit.exists() else None
    local = [
        *(Finding(Verdict.WARNING, f"properties: {warning}", "fix or delete that line")
          for warning in settings.warnings),
        *unit_findings(settings, config, unit),
        *key_findings(store, settings),
        *file_findings(settings, service_user),
    ]
    return local + asyncio.run(_remote(store, settings))


async def _remote(store: Store, settings: Settings) -> list[Finding]:
    outbound, proxy_problems = outbound_findings(settings, os.environ)
    return [*await rest_api_findings(settings, os.environ), *proxy_problems,
            *await endpoint_findings(store, datetime.now(UTC), outbound)]
