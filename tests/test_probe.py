"""`nbwss endpoint test HOST` and `nbwss endpoint validate --connect`: the handshake test.

Against the reference endpoint (`nbwss.reference`: it checks the token and serves one
path, so a wrong token is `valid: false` and a wrong path a 404), over loopback TLS; and
beside a running `nbwss run`, whose own connection must not notice.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from nbwss.admin import TEST_CLOSE_REASON
from nbwss.endpoints import EndpointDetails
from nbwss.reference import ReferenceEndpoint
from nbwss.store import Store
from nbwss.trust import fingerprint
from tests import test_cli_endpoint
from tests.conftest import TlsMaterial
from tests.peers import Peer, add_endpoint, certificate_der
from tests.test_admin import daemon
from tests.test_admin import nbwss as nbwss_process
from tests.test_cli_endpoint import RunCli, closed_port

GOOD_TOKEN = "the-token-the-app-gave=="
HOST = "cloud1.example.com"

nbwss = test_cli_endpoint.nbwss  # the CLI, in-process


@pytest.fixture
async def endpoint(tls: TlsMaterial) -> AsyncIterator[ReferenceEndpoint]:
    async with ReferenceEndpoint(GOOD_TOKEN, tls.server_context()) as reference:
        yield reference


@pytest.fixture
def store(state_dir: Path) -> Iterator[Store]:
    db = Store(state_dir / "nbwss.db", state_dir / "nbwss.key")
    yield db
    db.close()


def stored(store: Store, tls: TlsMaterial, url: str, token: str = GOOD_TOKEN) -> None:
    """The endpoint as `endpoint add` stores it: details, token, pinned certificate."""
    der = certificate_der(tls.server_cert)
    details = EndpointDetails(token=token, priority=1, group_id="GROUP1", host_name=HOST,
                              url=url)
    store.add_endpoint(details, der, fingerprint(der))


# -- endpoint test HOST --------------------------------------------------------------------


async def test_a_good_token_is_valid_and_exits_0(
    nbwss: RunCli, endpoint: ReferenceEndpoint, store: Store, tls: TlsMaterial
) -> None:
    stored(store, tls, endpoint.url)
    result = await nbwss("endpoint", "test", HOST)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[:2] == [f"CONNECT test of {HOST} ({endpoint.url}):", "  valid:       true"]
    assert lines[2].startswith("  Round trip:  ")
    assert lines[2].endswith(" ms")
    assert endpoint.connections == 1
    assert GOOD_TOKEN not in result.out + result.err


async def test_a_wrong_token_is_valid_false_and_exits_1_with_the_reason(
    nbwss: RunCli, endpoint: ReferenceEndpoint, store: Store, tls: TlsMaterial
) -> None:
    stored(store, tls, endpoint.url, token="a-token-the-app-revoked")
    result = await nbwss("endpoint", "test", HOST)
    assert result.code == 1
    assert "  valid:       false\n" in result.out
    assert "HTTP status" not in result.out  # the upgrade itself succeeded
    assert result.err.splitlines()[-1] == (
        f"nbwss: error: endpoint test of {HOST} failed: the endpoint refused the token")
    assert endpoint.refusals == 1


async def test_a_wrong_path_is_the_http_status_and_exits_1(
    nbwss: RunCli, endpoint: ReferenceEndpoint, store: Store, tls: TlsMaterial
) -> None:
    stored(store, tls, endpoint.url.replace("/cfs/nbufacade", "/cfs/wrong"))
    result = await nbwss("endpoint", "test", HOST, "--json")
    assert result.code == 1
    report = json.loads(result.out)
    assert (report["valid"], report["httpStatus"], report["proxy"]) == (False, 404, None)
    assert report["reason"] == (f"Unable to establish connection with host: {HOST}: the "
                                "server refused the WebSocket upgrade (HTTP 404)")
    assert report["roundTripMs"] >= 0
    assert result.err.splitlines()[-1] == (
        f"nbwss: error: endpoint test of {HOST} failed: {report['reason']}")
    assert endpoint.connections + endpoint.refusals == 0


async def test_json_for_a_good_token(
    nbwss: RunCli, endpoint: ReferenceEndpoint, store: Store, tls: TlsMaterial
) -> None:
    stored(store, tls, endpoint.url)
    result = await nbwss("endpoint", "test", HOST, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report == {"hostName": HOST, "url": endpoint.url, "valid": True, "httpStatus": None,
                      "roundTripMs": report["roundTripMs"], "reason": None, "proxy": None}


async def test_nothing_listening_and_an_unknown_host(
    nbwss: RunCli, store: Store, tls: TlsMaterial
) -> None:
    stored(store, tls, f"wss://127.0.0.1:{closed_port()}/cfs/nbufacade")
    down = await nbwss("endpoint", "test", HOST)
    assert down.code == 1
    assert "  valid:       false\n" in down.out
    assert down.err.splitlines()[-1].startswith(
        f"nbwss: error: endpoint test of {HOST} failed: Unable to establish connection with "
        f"host: {HOST}: cannot connect to 127.0.0.1:")
    unknown = await nbwss("endpoint", "test", "nobody.example.com")
    assert (unknown.code, unknown.err) == (
        1, "nbwss: error: no entity was found: nobody.example.com\n")


# -- endpoint validate --connect -----------------------------------------------------------


def details_file(directory: Path, url: str, token: str) -> str:
    path = directory / "details.json"
    path.write_text(json.dumps({"token": token, "priority": 1, "groupId": "GROUP1",
                                "hostName": HOST, "url": url}))
    return str(path)


async def test_validate_connect_says_whether_the_token_is_accepted(
    nbwss: RunCli, endpoint: ReferenceEndpoint, tmp_path: Path
) -> None:
    good = await nbwss("endpoint", "validate", "--connect", "--file",
                       details_file(tmp_path, endpoint.url, GOOD_TOKEN))
    assert good.code == 0, good.err
    assert "\n  valid:       true\n" in good.out
    assert "To add it: nbwss endpoint add --file" in good.out

    wrong = await nbwss("endpoint", "validate", "--connect", "--json", "--file",
                        details_file(tmp_path, endpoint.url, "not-the-token"))
    assert wrong.code == 1
    report = json.loads(wrong.out)
    assert report["connect"]["valid"] is False
    assert report["connect"]["reason"] == "the endpoint refused the token"
    assert report["certificate"]["sha256"]  # the certificate part is there as without
    assert (endpoint.connections, endpoint.refusals) == (1, 1)


async def test_validate_without_connect_still_does_not_dial_the_websocket(
    nbwss: RunCli, endpoint: ReferenceEndpoint, tmp_path: Path
) -> None:
    result = await nbwss("endpoint", "validate", "--file",
                         details_file(tmp_path, endpoint.url, "not-the-token"))
    assert result.code == 0, result.err  # the details and certificate are fine
    assert (endpoint.connections, endpoint.refusals) == (0, 0)


# -- beside the running daemon -------------------------------------------------------------


async def test_the_daemons_own_connection_is_not_touched(
    tls: TlsMaterial, short_store: Store, short_dir: Path, notify_socket: socket.socket
) -> None:
    config = short_dir / "nbwss.properties"
    config.write_text(f"store.path={short_dir / 'nbwss.db'}\nlog.format=json\n")
    async with Peer(tls.server_cert) as peer:
        add_endpoint(short_store, peer, "ep1.test")
        async with daemon(config, notify_socket):
            await peer.wait_for(lambda: peer.connected, seconds=10)
            daemons = peer.connections[0]

            result = await nbwss_process(config, "endpoint", "test", "ep1.test")
            assert result.code == 0, result.err
            assert "  valid:       true\n" in result.out

            test = peer.connections[1]
            await peer.wait_for(lambda: test.closed)
            assert (test.close_code, test.close_reason) == (1000, TEST_CLOSE_REASON)
            assert [m["type"] for m in test.messages] == ["CONNECT"]
            assert not daemons.closed
            assert len(peer.connections) == 2
            await peer.ping()  # the daemon's connection still answers
            status = await nbwss_process(config, "status", "--json")
            assert json.loads(status.out)["groups"]["GROUP1"]["connected"] is True
