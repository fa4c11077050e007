"""`nbwss endpoint` end to end: the CLI against a real HTTPS/TLS server on loopback.

The server (aiohttp over TLS with a trustme certificate for localhost and 127.0.0.1) is
both the endpoint whose certificate is inspected and pinned, and the cloud app serving
details for URL sources. The CLI runs in-process in a worker thread (it runs its own
event loop, as from a shell), and once as a real subprocess on a pseudo-terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import socket
import sqlite3
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from nbwss import cli, errors
from nbwss.errors import (
    MSG_CERT_MISMATCH,
    MSG_EXISTS,
    MSG_INCORRECT_URL,
    MSG_INVALID_JSON,
    MSG_INVALID_PARAMETER,
    MSG_NO_SSL,
    MSG_NO_URL_CONNECTION,
    MSG_NOT_FOUND,
    MSG_ONLY_WSS,
    MSG_UNPARSABLE,
)
from nbwss.outbox import backlog
from nbwss.status import StatusServer
from nbwss.store import Store
from nbwss.trust import fingerprint
from nbwss.values import GroupStatus
from tests.conftest import TlsMaterial, make_tls, timeout

TOKEN = "s3cret-T0KEN-value=="
NBWSS = Path(sys.executable).with_name("nbwss")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def events(self) -> list[dict[str, Any]]:
        """The structured log events written to stderr (JSON, as stderr is no terminal)."""
        return [json.loads(line) for line in self.err.splitlines() if line.startswith("{")]


RunCli = Callable[..., Awaitable[Result]]


@pytest.fixture
def nbwss(capsys: pytest.CaptureFixture[str], state_dir: Path) -> RunCli:
    """Run `nbwss ARGS` in-process; returns exit code and what it printed."""

    async def run(*argv: str) -> Result:
        capsys.readouterr()
        try:
            code = await asyncio.to_thread(cli.main, list(argv))
        except SystemExit as exc:  # usage errors leave through argparse
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@dataclass
class Cloud:
    """The loopback server: its port, pinned-to-be certificate, and served documents."""

    server: TestServer
    documents: dict[str, tuple[int, bytes]]
    fingerprint: str
    directory: Path

    @property
    def port(self) -> int:
        port = self.server.port
        assert port is not None
        return port

    def details(self, host_name: str = "cloud1.example.com", **changes: Any) -> dict[str, Any]:
        details: dict[str, Any] = {
            "token": TOKEN,
            "priority": 1,
            "groupId": "GROUP1",
            "hostName": host_name,
            "url": f"wss://127.0.0.1:{self.port}/cfs/nbufacade",
        }
        details.update(changes)
        return details

    def file(self, content: Any, name: str = "details.json") -> str:
        path = self.directory / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return str(path)

    def serve(self, name: str, content: Any, status: int = 200) -> str:
        body = content if isinstance(content, bytes) else json.dumps(content).encode()
        self.documents[name] = (status, body)
        return f"https://localhost:{self.port}/{name}"


async def start_cloud(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tls: TlsMaterial, directory: Path
) -> Cloud:
    documents: dict[str, tuple[int, bytes]] = {}

    async def document(request: web.Request) -> web.Response:
        status, body = documents.get(request.match_info["name"], (404, b"not found"))
        return web.Response(status=status, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{name}", document)
    server = await aiohttp_server(app, ssl=tls.server_context())
    der = ssl.PEM_cert_to_DER_cert(tls.server_cert.cert_chain_pems[0].bytes().decode())
    return Cloud(server, documents, fingerprint(der), directory)


@pytest.fixture
async def cloud(aiohttp_server: Any, tls: TlsMaterial, tmp_path: Path) -> Cloud:
    return await start_cloud(aiohttp_server, tls, tmp_path)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def read_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in directory.iterdir()}


async def listed(nbwss: RunCli) -> list[dict[str, Any]]:
    result = await nbwss("endpoint", "list", "--json")
    assert result.code == 0, result.err
    endpoints: list[dict[str, Any]] = json.loads(result.out)
    return endpoints


# -- validate --------------------------------------------------------------------------------


async def test_validate_shows_the_certificate_and_how_to_add(
    nbwss: RunCli, cloud: Cloud
) -> None:
    result = await nbwss("endpoint", "validate", "--file", cloud.file(cloud.details()))
    assert result.code == 0, result.err
    assert f"SHA-256:    {cloud.fingerprint}" in result.out
    assert "IP:127.0.0.1" in result.out
    assert f"--fingerprint {cloud.fingerprint}" in result.out
    assert TOKEN not in result.out + result.err
    assert await listed(nbwss) == []  # validate stores nothing


async def test_validate_json_is_for_scripts(nbwss: RunCli, cloud: Cloud) -> None:
    result = await nbwss("endpoint", "validate", "--json", "--file", cloud.file(cloud.details()))
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["certificate"]["sha256"] == cloud.fingerprint
    assert report["endpoint"]["hostName"] == "cloud1.example.com"
    assert report["server"] == f"127.0.0.1:{cloud.port}"
    assert report["problems"] == []
    assert "token" not in report["endpoint"]


async def test_unreachable_endpoint_server(nbwss: RunCli, cloud: Cloud) -> None:
    details = cloud.details(url=f"wss://127.0.0.1:{closed_port()}/x")
    result = await nbwss("endpoint", "validate", "--file", cloud.file(details))
    assert result.code == 1
    assert result.err.startswith(
        "nbwss: error: Unable to establish connection with host: 127.0.0.1"
    )


async def test_certificate_that_does_not_name_the_host_is_refused(
    nbwss: RunCli, aiohttp_server: Any, tmp_path: Path
) -> None:
    other = await start_cloud(aiohttp_server, make_tls(tmp_path, "other.example"), tmp_path)
    details = other.file(other.details())
    result = await nbwss("endpoint", "validate", "--file", details)
    assert result.code == 1
    assert "Warning: the certificate does not name 127.0.0.1" in result.out
    assert result.err == (
        f"nbwss: error: {MSG_NO_SSL}: the certificate does not name 127.0.0.1 "
        "(its names: DNS:other.example)\n"
    )
    result = await nbwss("endpoint", "add", "--yes", "--file", details)
    assert result.code == 1
    assert await listed(nbwss) == []


async def test_expired_certificate_is_refused_as_the_daemon_would(
    nbwss: RunCli, aiohttp_server: Any, tmp_path: Path
) -> None:
    ca = trustme.CA()
    now = datetime.now(UTC)
    leaf = ca.issue_cert(
        "127.0.0.1", not_before=now - timedelta(days=10), not_after=now - timedelta(days=1)
    )
    expired = TlsMaterial(ca=ca, server_cert=leaf, ca_file=tmp_path / "unused.pem")
    cloud = await start_cloud(aiohttp_server, expired, tmp_path)
    details = cloud.file(cloud.details())
    result = await nbwss("endpoint", "validate", "--file", details)
    assert result.code == 1
    assert result.err.startswith(f"nbwss: error: {MSG_NO_SSL}: the certificate expired on ")
    assert (await nbwss("endpoint", "add", "--yes", "--file", details)).code == 1
    assert await listed(nbwss) == []


# -- add -------------------------------------------------------------------------------------


async def test_add_with_the_accepted_fingerprint_pins_it(nbwss: RunCli, cloud: Cloud) -> None:
    typed = cloud.fingerprint.replace(":", "").lower()  # as an admin may paste it
    result = await nbwss("endpoint", "add", "--file", cloud.file(cloud.details()),
                         "--fingerprint", typed)
    assert result.code == 0, result.err
    assert "Added cloud1.example.com (group GROUP1, priority 1)" in result.out
    [added] = [e for e in result.events() if e["event"] == "endpoint.added"]
    assert added["host"] == "cloud1.example.com"
    assert added["group"] == "GROUP1"
    assert added["fingerprint"] == cloud.fingerprint
    assert TOKEN not in result.out + result.err
    assert await listed(nbwss) == [
        {
            "hostName": "cloud1.example.com",
            "url": f"wss://127.0.0.1:{cloud.port}/cfs/nbufacade",
            "groupId": "GROUP1",
            "priority": 1,
            "state": "ENABLED",
            "status": "DISCONNECTED",
            "fingerprint": cloud.fingerprint,
        }
    ]


async def test_add_with_another_fingerprint_stores_nothing(nbwss: RunCli, cloud: Cloud) -> None:
    wrong = "AB" * 32
    result = await nbwss("endpoint", "add", "--file", cloud.file(cloud.details()),
                         "--fingerprint", wrong)
    assert result.code == 1
    assert result.err.startswith(f"nbwss: error: {MSG_CERT_MISMATCH}: 127.0.0.1:")
    assert cloud.fingerprint in result.err
    assert await listed(nbwss) == []


async def test_malformed_fingerprint_fails_before_connecting(nbwss: RunCli, cloud: Cloud) -> None:
    details = cloud.details(url=f"wss://127.0.0.1:{closed_port()}/x")
    result = await nbwss("endpoint", "add", "--file", cloud.file(details), "--fingerprint", "AB")
    assert result.code == 1
    assert "is not a SHA-256 fingerprint" in result.err


async def test_add_without_acceptance_and_no_terminal_is_refused(
    nbwss: RunCli, cloud: Cloud
) -> None:
    result = await nbwss("endpoint", "add", "--file", cloud.file(cloud.details()))
    assert result.code == 1
    assert "no terminal to ask" in result.err
    assert "--fingerprint" in result.err
    assert await listed(nbwss) == []


async def test_duplicate_host_already_exists(nbwss: RunCli, cloud: Cloud) -> None:
    first = cloud.file(cloud.details(), "first.json")
    assert (await nbwss("endpoint", "add", "--yes", "--file", first)).code == 0
    again = cloud.file(cloud.details(groupId="GROUP2", priority=5), "again.json")
    result = await nbwss("endpoint", "add", "--yes", "--file", again)
    assert result.code == 1
    assert result.err.startswith(f"nbwss: error: {MSG_EXISTS}: cloud1.example.com")
    [kept] = await listed(nbwss)
    assert kept["groupId"] == "GROUP1"


def _without(key: str, details: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in details.items() if k != key}


INVALID_DETAILS: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("empty field", lambda d: {**d, "groupId": ""}, MSG_INVALID_JSON),
    ("blank field", lambda d: {**d, "hostName": "  "}, MSG_INVALID_JSON),
    ("missing key", lambda d: _without("token", d), MSG_INVALID_JSON),
    ("quoted priority", lambda d: {**d, "priority": "1"}, MSG_INVALID_JSON),
    ("boolean priority", lambda d: {**d, "priority": True}, MSG_INVALID_JSON),
    ("number as string field", lambda d: {**d, "groupId": 7}, MSG_INVALID_JSON),
    ("apostrophe", lambda d: {**d, "groupId": "O'Brien"}, MSG_INVALID_JSON),
    ("list", lambda d: [d], MSG_INVALID_JSON),
    ("not JSON", lambda d: "{token: x}", MSG_INVALID_JSON),
    ("ws url", lambda d: {**d, "url": "ws://127.0.0.1:1/x"}, MSG_ONLY_WSS),
    ("https url", lambda d: {**d, "url": "https://127.0.0.1:1/x"}, MSG_ONLY_WSS),
    ("url without host", lambda d: {**d, "url": "wss:///cfs/nbufacade"}, MSG_INCORRECT_URL),
    ("url bad port", lambda d: {**d, "url": "wss://h:99999/x"}, MSG_INCORRECT_URL),
]


@pytest.mark.parametrize(
    ("change", "message"),
    [pytest.param(change, message, id=name) for name, change, message in INVALID_DETAILS],
)
@pytest.mark.parametrize("action", ["validate", "add"])
async def test_invalid_details_are_refused_with_the_guides_message(
    nbwss: RunCli, cloud: Cloud, action: str, change: Callable[[Any], Any], message: str
) -> None:
    result = await nbwss("endpoint", action, "--yes" if action == "add" else "--json",
                         "--file", cloud.file(change(cloud.details())))
    assert result.code == 1
    assert result.err.startswith(f"nbwss: error: {message}")
    assert result.err.count("\n") == 1
    assert result.out == ""
    assert TOKEN not in result.err


async def test_missing_file_says_so(nbwss: RunCli, tmp_path: Path) -> None:
    result = await nbwss("endpoint", "validate", "--file", str(tmp_path / "nope.json"))
    assert result.code == 1
    assert "nbwss: error: cannot read" in result.err


# -- URL source ------------------------------------------------------------------------------


async def test_add_from_url_with_a_private_ca(
    nbwss: RunCli, cloud: Cloud, tls: TlsMaterial
) -> None:
    url = cloud.serve("details", cloud.details("cloud2.example.com", priority=2))
    result = await nbwss("endpoint", "add", "--url", url, "--ca-file", str(tls.ca_file),
                         "--fingerprint", cloud.fingerprint)
    assert result.code == 0, result.err
    [endpoint] = await listed(nbwss)
    assert (endpoint["hostName"], endpoint["priority"]) == ("cloud2.example.com", 2)


@pytest.mark.parametrize(
    ("document", "status", "message"),
    [
        (b"<html>not json</html>", 200, MSG_UNPARSABLE),
        (b"{}", 404, MSG_NO_URL_CONNECTION),
        (b'{"token": "x"}', 200, MSG_INVALID_JSON),
    ],
    ids=["bad JSON", "404", "incomplete details"],
)
async def test_url_source_failures(
    nbwss: RunCli, cloud: Cloud, tls: TlsMaterial, document: bytes, status: int, message: str
) -> None:
    url = cloud.serve("details", document, status)
    result = await nbwss("endpoint", "validate", "--url", url, "--ca-file", str(tls.ca_file))
    assert result.code == 1
    assert result.err.startswith(f"nbwss: error: {message}")


async def test_url_source_unreachable(nbwss: RunCli, tls: TlsMaterial) -> None:
    url = f"https://127.0.0.1:{closed_port()}/details"
    result = await nbwss("endpoint", "validate", "--url", url, "--ca-file", str(tls.ca_file),
                         "--timeout", str(timeout(2)))
    assert result.code == 1
    assert result.err.startswith(f"nbwss: error: {MSG_NO_URL_CONNECTION}: {url}")


async def test_url_source_with_untrusted_certificate(nbwss: RunCli, cloud: Cloud) -> None:
    url = cloud.serve("details", cloud.details())
    result = await nbwss("endpoint", "validate", "--url", url)  # system CAs only
    assert result.code == 1
    assert result.err.startswith(f"nbwss: error: {MSG_NO_URL_CONNECTION}")


async def test_url_source_malformed_url(nbwss: RunCli) -> None:
    result = await nbwss("endpoint", "validate", "--url", "http://cloud.example.com/details")
    assert result.code == 1
    assert result.err.startswith(f"nbwss: error: {MSG_INVALID_PARAMETER}: {MSG_INCORRECT_URL}")


@pytest.mark.parametrize(
    "argv",
    [
        ["endpoint", "add"],
        ["endpoint", "validate", "--file", "a.json", "--url", "https://h/"],
        ["endpoint", "validate", "--file", "a.json", "--ca-file", "ca.pem"],
        ["endpoint", "validate", "--file", "a.json", "--timeout", "0"],
        ["endpoint", "show"],
        ["endpoint"],
    ],
)
async def test_usage_errors_exit_2(nbwss: RunCli, argv: list[str]) -> None:
    result = await nbwss(*argv)
    assert result.code == 2
    assert result.err.startswith("nbwss: error: ")
    assert result.err.count("\n") == 1


# -- list, show, enable, disable, delete -----------------------------------------------------


async def test_list_is_friendly_when_empty(nbwss: RunCli) -> None:
    result = await nbwss("endpoint", "list")
    assert result.code == 0
    assert result.out.startswith("No endpoints yet.")


async def test_lifecycle_and_the_token_is_never_in_clear(
    nbwss: RunCli, cloud: Cloud, state_dir: Path
) -> None:
    assert await listed(nbwss) == []  # creates the database
    # A second connection keeps the WAL file (where the adds land) after each CLI run.
    watcher = sqlite3.connect(state_dir / "nbwss.db")
    try:
        watcher.execute("SELECT count(*) FROM endpoints").fetchone()
        for name, group, priority in [("b.example.com", "G1", 2), ("a.example.com", "G1", 1),
                                      ("c.example.com", "G2", 1)]:
            details = cloud.file(cloud.details(name, groupId=group, priority=priority), name)
            assert (await nbwss("endpoint", "add", "--yes", "--file", details)).code == 0
        result = await nbwss("endpoint", "disable", "b.example.com")
        assert result.code == 0, result.err
        assert [(e["event"], e["host"], e["group"]) for e in result.events()] == [
            ("endpoint.disabled", "b.example.com", "G1")
        ]
        table = await nbwss("endpoint", "list")
        lines = table.out.splitlines()
        assert lines[0].split() == ["HOST", "URL", "GROUP", "PRIORITY", "STATE", "STATUS"]
        assert [line.split()[0] for line in lines[1:]] == [
            "a.example.com", "b.example.com", "c.example.com"
        ]
        assert lines[2].split()[4:] == ["DISABLED", "DISCONNECTED"]
        assert TOKEN not in table.out + table.err

        hidden = await nbwss("endpoint", "show", "b.example.com", "--json")
        assert "token" not in json.loads(hidden.out)
        assert TOKEN not in hidden.out
        shown = await nbwss("endpoint", "show", "b.example.com", "--token")
        assert "Token:" in shown.out
        assert TOKEN in shown.out
        assert TOKEN not in shown.err

        assert (await nbwss("endpoint", "enable", "b.example.com")).code == 0
        again = await nbwss("endpoint", "enable", "b.example.com")
        assert "already enabled" in again.out
        assert again.events() == []
        deleted = await nbwss("endpoint", "delete", "c.example.com")
        assert [e["event"] for e in deleted.events()] == ["endpoint.deleted"]

        stored = read_files(state_dir)
        assert {"nbwss.db", "nbwss.db-wal", "nbwss.key"} <= set(stored)
        assert b"a.example.com" in stored["nbwss.db-wal"]  # the check does see plain text
        for content in stored.values():
            assert TOKEN.encode() not in content
    finally:
        watcher.close()
    assert [e["hostName"] for e in await listed(nbwss)] == ["a.example.com", "b.example.com"]
    assert all(e["state"] == "ENABLED" for e in await listed(nbwss))


@pytest.mark.parametrize("action", ["show", "enable", "disable", "delete"])
async def test_unknown_host_is_no_entity_found(nbwss: RunCli, action: str) -> None:
    result = await nbwss("endpoint", action, "ghost.example.com")
    assert result.code == 1
    assert result.err == f"nbwss: error: {MSG_NOT_FOUND}: ghost.example.com\n"


async def test_readd_with_a_new_token_after_delete(nbwss: RunCli, cloud: Cloud) -> None:
    first = cloud.file(cloud.details())
    assert (await nbwss("endpoint", "add", "--yes", "--file", first)).code == 0
    assert (await nbwss("endpoint", "delete", "cloud1.example.com")).code == 0
    renewed = cloud.file(cloud.details(token="renewed-T0KEN=="), "renewed.json")
    assert (await nbwss("endpoint", "add", "--yes", "--file", renewed)).code == 0
    shown = await nbwss("endpoint", "show", "cloud1.example.com", "--json", "--token")
    assert json.loads(shown.out)["token"] == "renewed-T0KEN=="



IMAGE_EVENT = {
    "clientType": "VMWARE", "clientName": "vm1", "backupTime": 1459811698,
    "createdTime": 1459829720, "operationId": "CREATE", "backupId": "vm1_1459811698",
}


async def test_replace_renews_token_in_place_and_keeps_the_delivery_position(
    nbwss: RunCli, cloud: Cloud, state_dir: Path
) -> None:
    first = cloud.file(cloud.details())
    assert (await nbwss("endpoint", "add", "--yes", "--file", first)).code == 0
    assert (await nbwss("endpoint", "disable", "cloud1.example.com")).code == 0
    queued = await nbwss("notify", "--object", "IMAGE", "--data", json.dumps(IMAGE_EVENT))
    assert queued.code == 0
    renewed = cloud.file(cloud.details(token="renewed-T0KEN==", priority=3), "renewed.json")
    result = await nbwss("endpoint", "add", "--replace", "--yes", "--file", renewed)
    assert result.code == 0, result.err
    assert result.out.startswith("Renewed cloud1.example.com")
    assert [e["event"] for e in result.events()] == ["endpoint.replaced"]
    shown = json.loads((await nbwss("endpoint", "show", "cloud1.example.com", "--json",
                                    "--token")).out)
    assert (shown["token"], shown["priority"], shown["state"]) == ("renewed-T0KEN==", 3,
                                                                   "DISABLED")
    # The notification queued before the renewal is still owed to the group.
    store = Store(state_dir / "nbwss.db", state_dir / "nbwss.key")
    try:
        [group] = backlog(store, time.time())
    finally:
        store.close()
    assert (group.group_id, group.backlog) == ("GROUP1", 1)



class _DaemonView:
    """What a running daemon's supervisor tells the status server (a `StatusSource`)."""

    def __init__(self, connected: dict[str, str]) -> None:
        self.connected = connected

    def snapshot(self) -> dict[str, GroupStatus]:
        return {g: GroupStatus(g, True, h, None) for g, h in self.connected.items()}


async def test_list_shows_connected_from_the_running_daemon_only(
    nbwss: RunCli, cloud: Cloud, state_dir: Path
) -> None:
    for name, priority in (("cloud1.example.com", 1), ("cloud2.example.com", 2)):
        details = cloud.file(cloud.details(name, priority=priority), f"{name}.json")
        assert (await nbwss("endpoint", "add", "--yes", "--file", details)).code == 0
    store = Store(state_dir / "nbwss.db", state_dir / "nbwss.key")
    try:
        store.set_status("cloud1.example.com", True)  # left behind by a killed daemon
        assert [e["status"] for e in await listed(nbwss)] == ["DISCONNECTED"] * 2
        view = _DaemonView({"GROUP1": "cloud2.example.com"})
        server = StatusServer(str(state_dir / "nbwss.sock"), store, source=view)
        serving = asyncio.create_task(server.run())
        try:
            async with asyncio.timeout(timeout(10)):
                await server.ready.wait()
            assert [e["status"] for e in await listed(nbwss)] == ["DISCONNECTED", "CONNECTED"]
            shown = await nbwss("endpoint", "show", "cloud2.example.com", "--json")
            assert json.loads(shown.out)["status"] == "CONNECTED"
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
    finally:
        store.close()


# -- as an admin runs it ---------------------------------------------------------------------


async def test_subprocess_asks_on_a_terminal_and_adds(cloud: Cloud, state_dir: Path) -> None:
    details = cloud.file(cloud.details())
    env = {**os.environ, "STATE_DIRECTORY": str(state_dir)}
    primary, secondary = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            str(NBWSS), "endpoint", "add", "--file", details,
            stdin=secondary, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        os.write(primary, b"y\n")
        async with asyncio.timeout(timeout(15)):
            out, err = await process.communicate()
    finally:
        os.close(secondary)
        os.close(primary)
    assert process.returncode == 0, err.decode()
    assert cloud.fingerprint in out.decode()
    assert "Trust this certificate and add the endpoint? [y/N]" in out.decode()
    assert TOKEN.encode() not in out + err
    listing = await asyncio.create_subprocess_exec(
        str(NBWSS), "endpoint", "list", stdout=asyncio.subprocess.PIPE, env=env
    )
    async with asyncio.timeout(timeout(15)):
        listed_out, _ = await listing.communicate()
    assert "cloud1.example.com" in listed_out.decode()
    assert "ENABLED" in listed_out.decode()


def test_every_message_of_the_guide_is_documented_for_admins() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "endpoints.md").read_text()
    messages = [value for name, value in vars(errors).items() if name.startswith("MSG_")]
    messages += [errors.unable_to_connect("H"), errors.unable_to_delete_certificate("H")]
    assert len(messages) >= 14
    for message in messages:
        assert f"`{message}" in page, message
