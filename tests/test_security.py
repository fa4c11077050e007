"""Security checks (issue 8, item 3): pinned TLS, the COMMAND guard, secrets at rest and in logs.

- TLS: the daemon's dial refuses a server whose certificate is not the pinned one (from
  another CA, or another leaf of the same CA) and a server whose certificate names
  another host; the token is never sent to such a server.
- The COMMAND guard holds against SSRF and request-smuggling payloads: every one is
  refused before any request is made.
- After a daemon run with traffic and COMMANDs (a short chaos soak), neither the
  endpoint tokens nor the COMMAND `Authorization` values appear in any log line or in
  any file under the state directory in clear text, and the database and key files are
  owner-only (0600).
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from nbwss.dial import Target
from nbwss.errors import TrustError
from nbwss.guard import ApiRequest, Policy, Refusal, check_command
from nbwss.messages import Message, MessageType, request
from nbwss.properties import Settings
from nbwss.proxy import CommandProxy
from nbwss.session import connect
from nbwss.standin.restapi import StandinApi, serving
from nbwss.trust import pinned_context
from tests.conftest import TlsMaterial, timeout
from tests.peers import Peer, certificate_der

TOKEN = "the-endpoint-token-Zm9vYmFyYmF6=="

# -- TLS: only the pinned certificate, only for its host ---------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _dial(http: aiohttp.ClientSession, peer: Peer, pinned_der: bytes) -> None:
    target = Target("G1", "ep1.test", peer.url, TOKEN, pinned_der)
    settings = Settings(send_timeout_s=timeout(2))
    async with asyncio.timeout(timeout(10)):
        session = await connect(http, target, settings, pinned_context(pinned_der))
        await session.abort()


async def test_tls_accepts_the_pinned_certificate(
    tls: TlsMaterial, http: aiohttp.ClientSession
) -> None:
    """The control case: with the right certificate the same dial succeeds."""
    async with Peer(tls.server_cert) as peer:
        await _dial(http, peer, peer.certificate_der)
        assert peer.received("CONNECT")[0]["payload"]["token"] == TOKEN


@pytest.mark.parametrize("other", ["another_ca", "same_ca_other_leaf"])
async def test_tls_refuses_a_certificate_that_is_not_pinned(
    tls: TlsMaterial, http: aiohttp.ClientSession, other: str
) -> None:
    issuer = trustme.CA() if other == "another_ca" else tls.ca
    pinned = certificate_der(issuer.issue_cert("localhost", "127.0.0.1"))
    async with Peer(tls.server_cert) as peer:
        with pytest.raises(TrustError):
            await _dial(http, peer, pinned)
        assert peer.messages == []  # the token never left the daemon


async def test_tls_refuses_a_certificate_for_another_host(
    tls: TlsMaterial, http: aiohttp.ClientSession
) -> None:
    """Pinned, but it names other.example while the URL says 127.0.0.1."""
    elsewhere = tls.ca.issue_cert("other.example")
    async with Peer(elsewhere) as peer:
        with pytest.raises(TrustError):
            await _dial(http, peer, peer.certificate_der)
        assert peer.messages == []


# -- the COMMAND guard ---------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "method": "GET", "uri": "/netbackup/admin/jobs", "headers": {"Authorization": "jwt"}
}

BAD_URIS = [
    # absolute URLs and network paths: another host
    "https://evil.example/netbackup/admin/jobs",
    "http://127.0.0.1:22/netbackup/",
    "file:///etc/passwd",
    "//evil.example/netbackup/admin/jobs",
    "///evil.example/netbackup/",
    "\\\\evil.example\\netbackup\\admin",
    "/\\evil.example/netbackup/admin",
    "@evil.example/netbackup/admin",
    "/netbackup@evil.example/admin",
    "evil.example/netbackup/admin",
    # IPv6 literals
    "https://[::1]:1556/netbackup/admin/jobs",
    "//[::ffff:127.0.0.1]/netbackup/admin",
    "[::1]/netbackup/admin",
    # dot segments, plain and encoded, out of the allowed prefix
    "/netbackup/../admin",
    "/netbackup/../../etc/passwd",
    "/netbackup/%2e%2e/admin",
    "/netbackup/%2E%2E/%2e%2E/etc/passwd",
    "/netbackup/.%2e/admin",
    # encoded slashes and backslashes
    "/netbackup/..%2fadmin",
    "/netbackup/%2F%2Fevil.example/x",
    "/netbackup/..%5cadmin",
    "/netbackup/%5c%5cevil.example",
    # double encoding, left for a later decoder
    "/netbackup/%252e%252e/%252e%252e/admin",
    "/netbackup/%252fadmin",
    "/netbackup/%25252e%25252e/admin",
    # path parameters (Tomcat reads "..;" as "..")
    "/netbackup/..;/admin",
    "/netbackup;/../admin",
    "/netbackup/%3b/admin",
    # CRLF and other controls, raw and encoded: header or request-line injection
    "/netbackup/admin/jobs\r\nHost: evil.example",
    "/netbackup/admin/jobs HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET /admin",
    "/netbackup/admin/jobs%0d%0aX-Injected:%20yes",
    "/netbackup/admin/jobs%0aHost:evil.example",
    "/netbackup/admin\tjobs",
    # NUL bytes
    "/netbackup/admin\x00/jobs",
    "/netbackup/admin%00/jobs",
    "/netbackup/%00../admin",
    # Unicode dot and slash lookalikes, raw and encoded
    "/netbackup/\uff0e\uff0e/admin",
    "/netbackup/%EF%BC%8E%EF%BC%8E/admin",
    "/netbackup/%E2%80%A4%E2%80%A4/admin",
    "/netbackup/%EF%BC%8Fadmin",
    "/netbackup/\u2215admin",
    # overlong UTF-8 for '.' and '/'
    "/netbackup/%c0%ae%c0%ae/admin",
    "/netbackup/%c0%afadmin",
    # fragments, malformed escapes, empty segments, huge
    "/netbackup/admin/jobs#@evil.example",
    "/netbackup/%zz/admin",
    "/netbackup//admin/jobs",
    "/netbackup/" + "a" * 70_000,
    "",
]

BAD_HEADERS: list[dict[str, Any]] = [
    {"Authorization": "jwt\r\nX-Injected: 1"},
    {"Authorization": "jwt\nHost: evil.example"},
    {"X-Injected\r\nHost": "evil.example"},
    {"Transfer-Encoding": "chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1"},
    {"Content-Length": "0\r\n\r\nPOST /netbackup/login HTTP/1.1"},
    {"Transfer-Encoding ": "chunked"},
    {" Content-Length": "5"},
    {"Content-Length\t": "5"},
    {"Authorization": "jwt\x00"},
    {"Authorization": "x" * 100_000},
    {"Authorization": 123},
    {f"X-{i}": "1" for i in range(1000)},
]

BAD_METHODS = ["GET /admin HTTP/1.1\r\n", "CONNECT", "TRACE", "get", "G\x00ET", "", 7]


def _payloads() -> list[tuple[str, dict[str, Any]]]:
    cases = [(f"uri {uri[:60]!r}", {**GOOD, "uri": uri}) for uri in BAD_URIS]
    cases += [(f"headers {list(h)[:2]!r}", {**GOOD, "headers": h}) for h in BAD_HEADERS]
    cases += [(f"method {m!r}", {**GOOD, "method": m}) for m in BAD_METHODS]
    return cases


PAYLOADS = _payloads()


def test_guard_lets_the_good_command_through() -> None:
    """The control case: the same payload without the attack passes."""
    assert isinstance(check_command(GOOD, Policy()), ApiRequest)


@pytest.mark.parametrize(("name", "payload"), PAYLOADS, ids=[n for n, _ in PAYLOADS])
def test_guard_refuses_ssrf_and_smuggling_payloads(name: str, payload: dict[str, Any]) -> None:
    verdict = check_command(payload, Policy())
    assert isinstance(verdict, Refusal), f"{name} passed the guard as {verdict}"
    assert verdict.status in (400, 403)


@pytest.mark.parametrize(
    "header",
    ["Host", "Transfer-Encoding", "Content-Length", "Connection", "Upgrade", "TE", "Trailer"],
)
def test_guard_never_forwards_framing_or_host_headers(header: str) -> None:
    """Framing is the HTTP client's to compute: the endpoint cannot set it for the API."""
    payload = {**GOOD, "headers": {header: "chunked", "Connection": "X-Smuggle",
                                   "X-Smuggle": "1"}, "parameters": "0\r\n\r\nGET /admin"}
    verdict = check_command(payload, Policy())
    assert isinstance(verdict, ApiRequest)
    forwarded = {name.lower() for name, _ in verdict.headers}
    assert header.lower() not in forwarded
    assert "x-smuggle" not in forwarded  # named in Connection: hop-by-hop too


class _Link:
    """The connection a COMMAND came on: only its names matter to the proxy."""

    group_id = "G1"
    host_name = "ep1.test"

    async def send(self, message: Message) -> None:
        raise AssertionError("the proxy answers by return value, never by sending")

    def command_reached_api(self, request: Message) -> None:
        pass


@pytest.fixture
async def standin(tls: TlsMaterial) -> AsyncIterator[tuple[StandinApi, CommandProxy]]:
    api = StandinApi()
    async with serving(api, tls.server_context()) as base_url:
        settings = Settings(rest_api_base_url=base_url, rest_api_ca_file=tls.ca_file)
        async with CommandProxy(settings) as proxy:
            yield api, proxy


def _command(payload: dict[str, Any]) -> Message:
    return request(MessageType.COMMAND, payload, time.time())


async def test_proxy_sends_none_of_the_payloads_to_the_api(
    standin: tuple[StandinApi, CommandProxy],
) -> None:
    """Through the real proxy to the real stand-in: every payload answered 400/403 unsent."""
    api, proxy = standin
    for name, payload in PAYLOADS:
        response = await proxy(_command(payload), _Link())
        assert isinstance(response.payload, dict)
        assert response.payload["responseCode"] in (400, 403), name
    assert api.requests == []
    authorized = {**GOOD, "headers": {"Authorization": api.login()}}
    control = await proxy(_command(authorized), _Link())  # the same proxy does reach the API
    assert isinstance(control.payload, dict)
    assert control.payload["responseCode"] == 200
    assert len(api.requests) == 1


async def test_proxy_smuggling_headers_reach_the_api_as_one_clean_request(
    standin: tuple[StandinApi, CommandProxy],
) -> None:
    """TE/CL set by the app are dropped: the API sees one request framed by our client."""
    api, proxy = standin
    body = '0\r\n\r\nGET /netbackup/admin/jobs HTTP/1.1\r\nHost: x\r\n\r\n'
    headers = {"Authorization": api.login(), "Transfer-Encoding": "chunked", "Content-Length": "0",
               "Host": "evil.example", "Content-Type": "application/json"}
    payload = {"method": "POST", "uri": "/netbackup/config/servers/vmservers",
               "headers": headers, "parameters": body}
    response = await proxy(_command(payload), _Link())
    assert isinstance(response.payload, dict)
    assert response.payload["responseCode"] == 400  # the stand-in read one bad JSON body
    assert len(api.requests) == 1
    seen = api.requests[0]
    assert "transfer-encoding" not in {name.lower() for name in seen.headers}
    assert seen.headers["Content-Length"] == str(len(body.encode()))
    assert seen.headers["Host"] != "evil.example"
    assert seen.body == body.encode()


# -- secrets after a daemon run with traffic --------------------------------------------


def _run_soak(workdir: Path, seconds: float) -> dict[str, Any]:
    soak = Path(__file__).resolve().parents[1] / "bench" / "soak.py"
    done = subprocess.run(
        [sys.executable, str(soak), "--seconds", str(seconds), "--workdir", str(workdir),
         "--seed", "8", "--fault-every", "2", "--drain", "30"],
        capture_output=True, text=True, timeout=timeout(300), check=False,
    )
    # Delivery under faults is test_soak's to judge; here only what the run left behind.
    assert (workdir / "report.json").exists(), done.stdout + done.stderr[-3000:]
    report: dict[str, Any] = json.loads((workdir / "report.json").read_text())
    return report


# Whichever of these runs first pays for the module's soak run; a hang still ends.
SOAK_BUDGET = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def soaked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("soak")
    return workdir, _run_soak(workdir, seconds=20)


def _variants(secret: str) -> list[bytes]:
    """The secret as it could sit in a file: UTF-8, UTF-16 (SQLite can), JSON-escaped."""
    return [
        secret.encode(),
        secret.encode("utf-16-le"),
        json.dumps(secret).encode()[1:-1],
    ]


@SOAK_BUDGET
def test_run_had_tokens_and_commands(soaked: tuple[Path, dict[str, Any]]) -> None:
    """The checks below mean something only if secrets really went over the wire."""
    _, report = soaked
    assert report["endpoint_events"]["connects"] > 0
    assert report["commands_ok"] > 0  # Authorization went through the proxy to the API
    assert len(report["secrets"]["tokens"]) == 6


@SOAK_BUDGET
def test_secrets_are_in_no_log_line(soaked: tuple[Path, dict[str, Any]]) -> None:
    workdir, report = soaked
    log = (workdir / "daemon.log").read_bytes()
    assert log.count(b"\n") > 10  # the daemon did log
    for secret in [*report["secrets"]["tokens"], report["secrets"]["authorization"]]:
        for variant in _variants(secret):
            assert variant not in log, "a secret is in the daemon's log"


@SOAK_BUDGET
def test_secrets_are_in_no_state_file(soaked: tuple[Path, dict[str, Any]]) -> None:
    workdir, report = soaked
    files = [p for p in (workdir / "state").rglob("*") if p.is_file()]
    assert any(p.name == "nbwss.db" for p in files)
    for path in files:
        content = path.read_bytes()
        for secret in [*report["secrets"]["tokens"], report["secrets"]["authorization"]]:
            for variant in _variants(secret):
                assert variant not in content, f"a secret is in {path.name} in clear text"


@SOAK_BUDGET
def test_database_and_key_files_are_owner_only(soaked: tuple[Path, dict[str, Any]]) -> None:
    workdir, _ = soaked
    state = workdir / "state"
    checked = [state / "nbwss.db", state / "nbwss.key"]
    checked += [p for p in state.glob("nbwss.db-*") if p.is_file()]  # WAL and shm
    for path in checked:
        assert path.exists(), path.name
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o600, f"{path.name} is {mode:o}"
