"""`nbwss status --check`, `/ready` and `/healthz`: one rule, judged on real figures.

End to end: the daemon as `build_service` assembles it, its status server on a Unix
socket, a real endpoint (`tests.peers`) that first refuses the token, then accepts it,
and the `nbwss status --check` command as a subprocess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nbwss import properties
from nbwss.daemon import build_service
from nbwss.health import failing_groups
from nbwss.store import Store
from tests.conftest import TlsMaterial
from tests.peers import ConnectAnswer, Peer, add_endpoint
from tests.test_admin import nbwss
from tests.test_service import running


def group(*, connected: bool, enabled: bool = True, age: float | None = None,
          last_error: str | None = None) -> dict[str, Any]:
    return {"connected": connected, "oldest_unacked_age_s": age, "backlog": 4,
            "last_error": last_error, "endpoints": [{"enabled": enabled}]}


def test_the_rule_names_each_failing_enabled_group_and_why() -> None:
    document = {"groups": {
        "OK": group(connected=True, age=10.0),
        "DOWN": group(connected=False, last_error="ep1: the endpoint refused the token"),
        "SLOW": group(connected=True, age=900.0),
        "OFF": group(connected=False, enabled=False),  # every endpoint disabled: not judged
        "KEPT": {"connected": False, "endpoints": [], "oldest_unacked_age_s": 5000.0},
    }}
    assert failing_groups(document, 600.0) == [
        "DOWN: DISCONNECTED (last error: ep1: the endpoint refused the token)",
        "SLOW: 4 notification(s) unacknowledged, the oldest for 900 s "
        "(status.maxBacklogAge is 600 s)",
    ]
    assert failing_groups(document, 1000.0)[1:] == []


@pytest.fixture
def config(short_dir: Path) -> Path:
    path = short_dir / "nbwss.properties"
    path.write_text(f"store.path={short_dir / 'nbwss.db'}\nconnectionInfo.period=0.3\n"
                    "status.maxBacklogAge=120\nlog.level=warning\n")
    return path


async def get(socket_path: Path, path: str) -> tuple[int, str]:
    connector = aiohttp.UnixConnector(path=str(socket_path))
    async with aiohttp.ClientSession(connector=connector) as session, session.get(
        f"http://localhost{path}"
    ) as response:
        return response.status, await response.text()


async def test_check_and_ready_fail_while_disconnected_and_pass_once_connected(
    tls: TlsMaterial, short_store: Store, config: Path, short_dir: Path
) -> None:
    settings = properties.load(config, env={})
    sock = short_dir / "nbwss.sock"
    async with Peer(tls.server_cert, connect=ConnectAnswer.INVALID) as peer:
        add_endpoint(short_store, peer, "ep1.test")
        service = build_service(settings, short_store)
        async with running(service):
            await peer.wait_for(lambda: len(peer.connections) >= 1)  # refused at CONNECT
            failing = await nbwss(config, "status", "--check")
            assert failing.code == 1, failing.err
            assert failing.out.startswith("GROUP1: DISCONNECTED")
            assert failing.out.count("\n") == 1  # one line per failing group
            status, text = await get(sock, "/ready")
            assert status == 503
            assert text.startswith("GROUP1: DISCONNECTED")
            assert await get(sock, "/healthz") == (200, "ok\n")

            peer.connect = ConnectAnswer.VALID
            await peer.wait_for(lambda: peer.connected)
            passing = await nbwss(config, "status", "--check")
            assert (passing.code, passing.out) == (
                0, "ok: 1 enabled server group(s) CONNECTED, no backlog older than 120 s\n")
            assert await get(sock, "/ready") == (
                200, "ready: 1 enabled server group(s) CONNECTED\n")


async def test_check_without_a_daemon_is_one_error_line(config: Path) -> None:
    result = await nbwss(config, "status", "--check")
    assert result.code == 1
    assert result.err.startswith("nbwss: error: the daemon is not running")
