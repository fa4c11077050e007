"""Through a real HTTP proxy: pproxy, in its own process (`tests.httpproxy`).

The daemon's wss connection (TLS and the pin end to end, inside the CONNECT tunnel), the
certificate and details fetched by `endpoint validate|add`, an authenticating proxy with
right and wrong credentials, a proxy that is down, and noProxy; at the end, `nbwss run`
itself behind the authenticating proxy, as an admin would set it up.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from nbwss.dial import Target
from nbwss.endpoints import fetch_details
from nbwss.errors import MSG_CERT_MISMATCH, ConnectError, TrustError
from nbwss.outbound import Credentials, Proxy, ProxyPolicy, parse_no_proxy
from nbwss.properties import Settings
from nbwss.session import connect
from nbwss.store import Store
from nbwss.supervisor import Supervisor
from nbwss.trust import pinned_context
from tests import test_cli_endpoint
from tests.conftest import TlsMaterial, make_tls, timeout
from tests.httpproxy import PASSWORD, USER, HttpProxy, running_proxy
from tests.peers import Peer, add_endpoint
from tests.test_admin import nbwss as nbwss_process
from tests.test_cli_endpoint import TOKEN, Cloud, RunCli, closed_port
from tests.test_service import datagram_where
from tests.test_supervisor import supervising, until

# The in-process CLI and the loopback HTTPS server of the endpoint commands' tests.
nbwss = test_cli_endpoint.nbwss
cloud = test_cli_endpoint.cloud


@pytest.fixture(scope="module")
def http_proxy() -> Iterator[HttpProxy]:
    with running_proxy() as proxy:
        yield proxy


def open_proxy(http_proxy: HttpProxy) -> Proxy:
    return Proxy("127.0.0.1", http_proxy.open_port)


def auth_proxy(http_proxy: HttpProxy, password: str = PASSWORD) -> Proxy:
    return Proxy("127.0.0.1", http_proxy.auth_port, Credentials(USER, password))


async def dial(peer: Peer, proxy: Proxy, pinned: bytes | None = None) -> None:
    """Connect and CONNECT through `proxy` as the daemon does, then close."""
    target = Target("GROUP1", "ep1.test", peer.url, "token==", pinned or peer.certificate_der)
    async with aiohttp.ClientSession() as http:
        session = await connect(http, target, Settings(send_timeout_s=5.0),
                                pinned_context(target.certificate_der), proxy=proxy)
        await peer.wait_for(lambda: peer.connected)
        await session.abort()


# -- the daemon's connection ---------------------------------------------------------------


async def test_the_wss_connection_goes_through_the_proxy_with_the_pin_end_to_end(
    http_proxy: HttpProxy, tls: TlsMaterial, tmp_path: Path
) -> None:
    async with Peer(tls.server_cert) as peer:
        await dial(peer, open_proxy(http_proxy))
        await http_proxy.until(lambda: http_proxy.tunnels_to(peer.port) == 1)
        assert peer.received("CONNECT")[0]["payload"] == {"token": "token=="}

        # Another certificate behind the proxy (the proxy intercepting TLS, say): refused.
        pinned = peer.certificate_der
        await peer.stop()
        await peer.start(make_tls(tmp_path).server_cert)
        with pytest.raises(TrustError, match=MSG_CERT_MISMATCH):
            await dial(peer, open_proxy(http_proxy), pinned=pinned)
        await http_proxy.until(lambda: http_proxy.tunnels_to(peer.port) == 2)
        assert len(peer.received("CONNECT")) == 1


async def test_an_authenticating_proxy_takes_the_right_credentials_only(
    http_proxy: HttpProxy, tls: TlsMaterial
) -> None:
    refusals = http_proxy.refusals
    async with Peer(tls.server_cert) as peer:
        await dial(peer, auth_proxy(http_proxy))
        await http_proxy.until(lambda: http_proxy.tunnels_to(peer.port) == 1)
        for proxy in (auth_proxy(http_proxy, "wrong-password"),
                      Proxy("127.0.0.1", http_proxy.auth_port)):
            with pytest.raises(ConnectError) as refused:
                await dial(peer, proxy)
            assert str(refused.value).startswith(
                "Unable to establish connection with host: ep1.test: proxy "
                f"http://127.0.0.1:{http_proxy.auth_port} refused CONNECT: 407 Proxy "
                "Authentication Required (")
            assert "wrong-password" not in str(refused.value)
        await http_proxy.until(lambda: http_proxy.refusals == refusals + 2)
        assert http_proxy.tunnels_to(peer.port) == 1
        assert len(peer.connections) == 1


async def test_a_proxy_that_is_down_is_named(tls: TlsMaterial) -> None:
    port = closed_port()
    async with Peer(tls.server_cert) as peer:
        with pytest.raises(ConnectError) as down:
            await dial(peer, Proxy("127.0.0.1", port))
    assert str(down.value) == ("Unable to establish connection with host: ep1.test: proxy "
                               f"http://127.0.0.1:{port} unreachable (Connection refused)")
    assert peer.connections == []


async def test_no_proxy_hosts_are_dialled_directly(
    tls: TlsMaterial, store: Store
) -> None:
    # The proxy is down: only a direct connection can succeed.
    dead_proxy = f"http://127.0.0.1:{closed_port()}"
    async with Peer(tls.server_cert) as peer:
        add_endpoint(store, peer, "ep1.test")
        through = Settings(connection_period_s=30.0, proxy_url=dead_proxy)
        async with supervising(Supervisor(through, store)) as supervisor:
            await until(supervisor, lambda: store.endpoint("ep1.test").last_error is not None)
        assert f"proxy {dead_proxy} unreachable" in str(store.endpoint("ep1.test").last_error)
        assert peer.connections == []

        bypass = Settings(connection_period_s=30.0, proxy_url=dead_proxy,
                          proxy_no_proxy=("localhost", "127.0.0.0/8"))
        async with supervising(Supervisor(bypass, store)):
            await peer.wait_for(lambda: peer.connected)


@pytest.fixture
def store(state_dir: Path) -> Iterator[Store]:
    db = Store(state_dir / "nbwss.db", state_dir / "nbwss.key")
    yield db
    db.close()


# -- what the admin's commands fetch -------------------------------------------------------


def proxy_config(directory: Path, proxy_url: str, password: str | None = PASSWORD,
                 extra: str = "") -> str:
    """A properties file that sends everything through `proxy_url`."""
    lines = [f"proxy.url={proxy_url}", extra]
    if password is not None:
        (directory / "proxy.cred").write_text(f"{USER}:{password}\n")
        lines.append(f"proxy.credentialsFile={directory / 'proxy.cred'}")
    path = directory / "nbwss.properties"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


async def test_details_from_a_url_and_the_certificate_come_through_the_proxy(
    http_proxy: HttpProxy, nbwss: RunCli, cloud: Cloud, tls: TlsMaterial, tmp_path: Path
) -> None:
    url = cloud.serve("details.json", cloud.details())
    config = proxy_config(tmp_path, http_proxy.auth_url)
    result = await nbwss("-c", config, "endpoint", "validate", "--url", url,
                         "--ca-file", str(tls.ca_file))
    assert result.code == 0, result.err
    assert f"SHA-256:    {cloud.fingerprint}" in result.out
    # The details from https://localhost:PORT, then the certificate of wss://127.0.0.1:PORT.
    await http_proxy.until(lambda: http_proxy.tunnels_to(cloud.port, "localhost") == 1
                           and http_proxy.tunnels_to(cloud.port) == 1)


async def test_wrong_proxy_credentials_are_one_line_naming_the_proxy(
    http_proxy: HttpProxy, nbwss: RunCli, cloud: Cloud, tls: TlsMaterial, tmp_path: Path
) -> None:
    refusals = http_proxy.refusals
    config = proxy_config(tmp_path, http_proxy.auth_url, password="not-the-password")
    sources = (["--url", cloud.serve("details.json", cloud.details()), "--ca-file",
                str(tls.ca_file)], ["--file", cloud.file(cloud.details())])
    for source in sources:
        result = await nbwss("-c", config, "endpoint", "validate", *source)
        assert result.code == 1
        [line] = result.err.splitlines()
        assert line.startswith("nbwss: error: ")
        assert (f"proxy {http_proxy.auth_url} refused CONNECT: 407 Proxy Authentication "
                "Required (check the user and password in proxy.credentialsFile)") in line
        assert "not-the-password" not in result.err
    await http_proxy.until(lambda: http_proxy.refusals == refusals + 2)
    assert http_proxy.tunnels_to(cloud.port) + http_proxy.tunnels_to(cloud.port, "localhost") == 0


async def test_validate_follows_no_proxy(
    nbwss: RunCli, cloud: Cloud, tmp_path: Path
) -> None:
    config = proxy_config(tmp_path, f"http://127.0.0.1:{closed_port()}", password=None,
                          extra="proxy.noProxy=127.0.0.1")
    result = await nbwss("-c", config, "endpoint", "validate", "--file",
                         cloud.file(cloud.details()))
    assert result.code == 0, result.err


async def test_endpoint_test_goes_through_the_proxy_and_says_so(
    http_proxy: HttpProxy, nbwss: RunCli, tls: TlsMaterial, store: Store, tmp_path: Path
) -> None:
    config = proxy_config(tmp_path, http_proxy.auth_url)
    async with Peer(tls.server_cert) as peer:
        add_endpoint(store, peer, "ep1.test")
        result = await nbwss("-c", config, "endpoint", "test", "ep1.test")
        assert result.code == 0, result.err
        assert f"\n  Through:     proxy {http_proxy.auth_url}\n  valid:       true\n" in \
            result.out
        await http_proxy.until(lambda: http_proxy.tunnels_to(peer.port) == 1)
        await peer.wait_for(lambda: peer.connections[0].closed)
        assert peer.connections[0].close_code == 1000


# -- nbwss run behind the proxy, end to end ------------------------------------------------


async def test_doctor_checks_the_pins_through_the_proxy_and_run_refuses_a_bad_file(
    http_proxy: HttpProxy, tls: TlsMaterial, short_store: Store, short_dir: Path
) -> None:
    config = short_dir / "nbwss.properties"
    settings = f"store.path={short_dir / 'nbwss.db'}\nproxy.url={http_proxy.auth_url}\n"
    (short_dir / "proxy.cred").write_text(f"{USER}:{PASSWORD}\n")
    config.write_text(settings + f"proxy.credentialsFile={short_dir / 'proxy.cred'}\n")
    unit = str(short_dir / "no-unit.service")
    async with Peer(tls.server_cert) as peer:
        add_endpoint(short_store, peer, "ep1.test")
        sound = await nbwss_process(config, "doctor", "--unit", unit)
        assert "ok       endpoint ep1.test: presents its pinned certificate" in sound.out
        await http_proxy.until(lambda: http_proxy.tunnels_to(peer.port) == 1)

        missing = short_dir / "missing.cred"
        config.write_text(settings + f"proxy.credentialsFile={missing}\n")
        faulty = await nbwss_process(config, "doctor", "--unit", unit)
        assert (f"FAIL     outbound proxy: proxy.credentialsFile: cannot read {missing}: No "
                "such file or directory") in faulty.out.splitlines()
        run = await nbwss_process(config, "run")
    assert (run.code, run.err) == (
        1, f"nbwss: error: proxy.credentialsFile: cannot read {missing}: No such file or "
        "directory\n")
    assert peer.connections == []


class DaemonLog:
    """`nbwss run`'s JSON log events, read as they come."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    async def read(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            if line.startswith(b"{"):
                self.events.append(json.loads(line))
                self._changed.set()

    async def wait_for(self, event: str, seconds: float = 10) -> dict[str, Any]:
        async with asyncio.timeout(timeout(seconds)):
            while True:
                found = [e for e in self.events if e["event"] == event]
                if found:
                    return found[-1]
                self._changed.clear()
                await self._changed.wait()


@asynccontextmanager
async def daemon(config: Path, notify: socket.socket) -> AsyncIterator[
        tuple[asyncio.subprocess.Process, DaemonLog]]:
    env = {**os.environ, "NOTIFY_SOCKET": notify.getsockname()}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nbwss", "-c", str(config), "run", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    log = DaemonLog()
    reading = asyncio.create_task(log.read(process.stderr))
    try:
        await datagram_where(notify, lambda text: "READY=1" in text)
        yield process, log
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout(10)):
            await process.wait()
            await reading


async def test_nbwss_run_behind_an_authenticating_proxy(
    http_proxy: HttpProxy, tls: TlsMaterial, short_dir: Path, short_store: Store,
    notify_socket: socket.socket,
) -> None:
    config = short_dir / "nbwss.properties"
    credentials = short_dir / "proxy.cred"
    credentials.write_text(f"{USER}:wrong-password\n")
    config.write_text(
        f"store.path={short_dir / 'nbwss.db'}\nlog.format=json\nconnectionInfo.period=30\n"
        f"proxy.url={http_proxy.auth_url}\nproxy.credentialsFile={credentials}\n"
    )
    async with Peer(tls.server_cert) as peer:
        add_endpoint(short_store, peer, "ep1.test", token=TOKEN)
        async with daemon(config, notify_socket) as (process, log):
            failed = await log.wait_for("endpoint.connect_failed")
            assert failed["host"] == "ep1.test"
            assert (f"proxy {http_proxy.auth_url} refused CONNECT: 407 Proxy Authentication "
                    "Required") in failed["reason"]
            assert peer.connections == []

            credentials.write_text(f"{USER}:{PASSWORD}\n")  # fixed; a reload re-reads it
            process.send_signal(signal.SIGHUP)
            await peer.wait_for(lambda: peer.connected, seconds=10)
            await http_proxy.until(lambda: http_proxy.tunnels_to(peer.port) == 1)
            assert peer.received("CONNECT")[0]["payload"] == {"token": TOKEN}

            credentials.unlink()  # a reload that cannot use the proxy changes nothing
            process.send_signal(signal.SIGHUP)
            failed_reload = await log.wait_for("service.reload_failed")
            assert failed_reload["reason"].startswith(
                f"proxy.credentialsFile: cannot read {credentials}")
            assert peer.connected
        text = json.dumps(log.events)
        for secret in ("wrong-password", PASSWORD, TOKEN):
            assert secret not in text


async def test_each_redirect_of_a_details_url_goes_through_the_proxy_its_url_needs(
    http_proxy: HttpProxy, tls: TlsMaterial
) -> None:
    """The first hop through the proxy; the redirect to a noProxy host directly."""
    port = 0

    async def start(_: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"https://localhost:{port}/details")

    async def details(_: web.Request) -> web.StreamResponse:
        return web.Response(body=json.dumps(redirected_details()).encode())

    app = web.Application()
    app.router.add_get("/start", start)
    app.router.add_get("/details", details)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_context()).start()
    port = runner.addresses[0][1]
    policy = ProxyPolicy(open_proxy(http_proxy), parse_no_proxy("localhost"))
    try:
        fetched = await fetch_details(f"https://127.0.0.1:{port}/start", ca_file=tls.ca_file,
                                      timeout_s=timeout(5), outbound=policy)
        # A last tunnel as a marker: pproxy prints in order, so once it is in, the count
        # of tunnels to localhost is final.
        await fetch_details(f"https://127.0.0.1:{port}/details", ca_file=tls.ca_file,
                            timeout_s=timeout(5), proxy=open_proxy(http_proxy))
    finally:
        await runner.cleanup()
    assert fetched.host_name == "cloud.example.com"
    await http_proxy.until(lambda: http_proxy.tunnels_to(port) == 2)
    assert http_proxy.tunnels_to(port, "localhost") == 0


def redirected_details() -> dict[str, Any]:
    return {"token": TOKEN, "priority": 1, "groupId": "GROUP1",
            "hostName": "cloud.example.com", "url": "wss://cloud.example.com:14146/x"}
