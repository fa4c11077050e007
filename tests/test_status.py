"""The status server: /status, /metrics, its local-only address, and `nbwss status`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import socket
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from nbwss import cli, metrics
from nbwss.endpoints import EndpointDetails
from nbwss.errors import ConfigError, NbwssError
from nbwss.status import (
    StatusServer,
    TcpAddress,
    UnixAddress,
    fetch_status,
    parse_status_address,
)
from nbwss.store import Store
from nbwss.values import GroupStatus, OutstandingStatus
from tests.conftest import timeout


@pytest.fixture
def store(state_dir: Path) -> Iterator[Store]:
    opened = Store(state_dir / "nbwss.db", state_dir / "nbwss.key")
    for host, priority in (("cloud-a.example", 1), ("cloud-b.example", 2)):
        opened.add_endpoint(
            EndpointDetails("token-" + host, priority, "G1", host, f"wss://{host}:14146/x"),
            b"certificate", "AA:BB",
        )
    yield opened
    opened.close()


async def serving(server: StatusServer) -> asyncio.Task[None]:
    task = asyncio.create_task(server.run())
    ready = asyncio.create_task(server.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=timeout(10),
                                 return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        await task  # raises what stopped it
    assert ready in done
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.fixture
async def unix_server(state_dir: Path, store: Store) -> AsyncIterator[StatusServer]:
    server = StatusServer(str(state_dir / "nbwss.sock"), store)
    task = await serving(server)
    yield server
    await stop(task)


def queue(store: Store, *objects: str, queued_at: float | None = None) -> None:
    """Rows as `nbwss notify` writes them (the outbox schema of store.py)."""
    with store.transaction() as conn:
        for obj in objects:
            conn.execute("INSERT INTO outbox (object, data, queued_at) VALUES (?, ?, ?)",
                         (obj, "{}", queued_at or time.time()))


async def scrape(server: StatusServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics over the server's Unix socket, as {(sample name, labels): value}."""
    assert isinstance(server.address, UnixAddress)
    connector = aiohttp.UnixConnector(path=str(server.address.path))
    async with aiohttp.ClientSession(connector=connector) as session, session.get(
        "http://localhost/metrics"
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# -- the address ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/var/lib/nbwss/nbwss.sock", UnixAddress(Path("/var/lib/nbwss/nbwss.sock"))),
        ("nbwss.sock", UnixAddress(Path("nbwss.sock"))),
        ("127.0.0.1:9464", TcpAddress("127.0.0.1", 9464)),
        ("[::1]:9464", TcpAddress("::1", 9464)),
    ],
)
def test_local_addresses_are_accepted(text: str, expected: object) -> None:
    assert parse_status_address(text) == expected


@pytest.mark.parametrize(
    "text", ["0.0.0.0:9464", "192.0.2.7:9464", "[::]:9464", "[2001:db8::1]:80", "localhost:9464"]
)
def test_non_loopback_addresses_are_refused(text: str, store: Store) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        StatusServer(text, store)


# -- the Unix socket -----------------------------------------------------------------------


async def test_unix_socket_is_private_and_removed_at_stop(state_dir: Path, store: Store) -> None:
    path = state_dir / "nbwss.sock"
    task = await serving(StatusServer(str(path), store))
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert not [name for name in os.listdir(state_dir) if name.startswith(".sock-")]
    await stop(task)
    assert not path.exists()


async def test_a_second_server_on_a_live_socket_is_refused(
    unix_server: StatusServer, store: Store
) -> None:
    with pytest.raises(ConfigError, match="already serving"):
        await StatusServer(str(unix_server.address), store).run()


async def test_a_stale_socket_is_replaced(state_dir: Path, store: Store) -> None:
    path = state_dir / "nbwss.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # bound, never listening, closed: what a killed daemon leaves
    task = await serving(StatusServer(str(path), store))
    try:
        assert (await fetch_status(str(path)))["groups"]["G1"]["backlog"] == 0
    finally:
        await stop(task)


async def test_a_regular_file_is_never_replaced(state_dir: Path, store: Store) -> None:
    path = state_dir / "nbwss.db"
    with pytest.raises(ConfigError, match="not a socket"):
        await StatusServer(str(path), store).run()
    assert path.stat().st_size > 0


# -- loopback TCP --------------------------------------------------------------------------


def external_address() -> str | None:
    """This machine's address on its default route, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


async def test_loopback_tcp_serves_and_is_not_reachable_from_outside(store: Store) -> None:
    server = StatusServer("127.0.0.1:0", store)
    task = await serving(server)
    try:
        assert isinstance(server.address, TcpAddress)
        assert server.address.host == "127.0.0.1"
        assert server.address.port != 0
        document = await fetch_status(str(server.address))
        assert set(document["groups"]) == {"G1"}
        other = external_address()
        if other is not None:  # the same port on the machine's own address answers nothing
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(other, server.address.port)
    finally:
        await stop(task)


# -- /status -------------------------------------------------------------------------------


async def test_status_from_the_store(unix_server: StatusServer, store: Store) -> None:
    store.set_status("cloud-b.example", True)
    store.set_status("cloud-a.example", False, "Unable to establish connection with host: a")
    queue(store, "JOB", "IMAGE", queued_at=time.time() - 30)
    document = await fetch_status(str(unix_server.address))
    group = document["groups"]["G1"]
    assert document["live"] is False
    assert document["pid"] == os.getpid()
    assert group["connected"] is True
    assert group["endpoint"] == "cloud-b.example"
    assert group["since"] == pytest.approx(time.time(), abs=timeout(10))
    assert group["backlog"] == 2
    assert group["oldest_unacked_age_s"] >= 30
    assert group["last_error"] == (
        "cloud-a.example: Unable to establish connection with host: a"
    )
    assert [e["host_name"] for e in group["endpoints"]] == ["cloud-a.example", "cloud-b.example"]
    assert "token" not in json.dumps(document).lower()


async def test_outstanding_batch_from_the_store(unix_server: StatusServer, store: Store) -> None:
    queue(store, "JOB", "JOB")
    with store.transaction() as conn:
        conn.execute("INSERT INTO group_batches VALUES ('G1', 'ABCDEF12-X', 1, 2, ?)",
                     (time.time() - 7,))
    group = (await fetch_status(str(unix_server.address)))["groups"]["G1"]
    assert group["outstanding"]["message_id"] == "ABCDEF12-X"
    assert (group["outstanding"]["first_seq"], group["outstanding"]["last_seq"]) == (1, 2)
    assert group["outstanding"]["age_s"] >= 7


class LiveView:
    """What the daemon provides; a plain object with the Protocol's one method."""

    def __init__(self) -> None:
        self.groups: dict[str, GroupStatus] = {}

    def snapshot(self) -> dict[str, GroupStatus]:
        return self.groups


async def test_live_view_overrides_the_store(state_dir: Path, store: Store) -> None:
    live = LiveView()
    outstanding = OutstandingStatus("M1", 1, 1, count=1, sent_at=time.time() - 3, sends=2)
    live.groups["G1"] = GroupStatus("G1", True, "cloud-a.example", outstanding)
    task = await serving(StatusServer(str(state_dir / "s.sock"), store, live))
    try:
        queue(store, "JOB")
        document = await fetch_status(str(state_dir / "s.sock"))
    finally:
        await stop(task)
    group = document["groups"]["G1"]
    assert document["live"] is True
    assert (group["connected"], group["endpoint"]) == (True, "cloud-a.example")
    assert group["outstanding"]["sends"] == 2
    assert group["outstanding"]["age_s"] >= 3
    assert group["backlog"] == 1  # always from the store: other processes queue


# -- /metrics ------------------------------------------------------------------------------


async def test_metrics_agree_with_the_live_status(state_dir: Path, store: Store) -> None:
    """One source: /metrics reads the document /status serves, live view included; an
    endpoint never connected is a 0 series, so `max by (group)` alerts on such a group."""
    live = LiveView()
    live.groups["G1"] = GroupStatus("G1", False, None, None)
    server = StatusServer(str(state_dir / "m.sock"), store, live)
    task = await serving(server)
    try:
        down = await scrape(server)
        live.groups["G1"] = GroupStatus("G1", True, "cloud-b.example", None, last_ack=1234.5)
        up = await scrape(server)
        document = await fetch_status(str(state_dir / "m.sock"))
    finally:
        await stop(task)
    a = ("nbwss_connected", (("group", "G1"), ("host", "cloud-a.example")))
    b = ("nbwss_connected", (("group", "G1"), ("host", "cloud-b.example")))
    assert (down[a], down[b]) == (0, 0)
    assert (up[a], up[b]) == (0, 1)
    assert document["groups"]["G1"]["endpoint"] == "cloud-b.example"
    assert up[("nbwss_last_ack_timestamp_seconds", (("group", "G1"),))] == 1234.5


async def test_a_disabled_endpoint_has_no_connected_series(
    unix_server: StatusServer, store: Store
) -> None:
    store.set_enabled("cloud-b.example", False)
    series = {labels for name, labels in await scrape(unix_server) if name == "nbwss_connected"}
    assert series == {(("group", "G1"), ("host", "cloud-a.example"))}


async def test_metrics_names_are_present(unix_server: StatusServer) -> None:
    families = {name for name, _ in await scrape(unix_server)}
    for name in ("nbwss_notifications_queued_total", "nbwss_backlog",
                 "nbwss_oldest_unacked_age_seconds", "nbwss_connected",
                 "nbwss_command_duration_seconds_count"):
        assert name in families


async def test_metrics_move_with_counters(unix_server: StatusServer) -> None:
    key = ("nbwss_notifications_acked_total", (("group", "G-metrics"),))
    metrics.NOTIFICATIONS_ACKED.labels(group="G-metrics").inc(0)
    before = (await scrape(unix_server))[key]
    metrics.NOTIFICATIONS_ACKED.labels(group="G-metrics").inc(3)
    assert (await scrape(unix_server))[key] == before + 3


async def test_metrics_move_with_outbox_rows(unix_server: StatusServer, store: Store) -> None:
    backlog = ("nbwss_backlog", (("group", "G1"),))
    oldest = ("nbwss_oldest_unacked_age_seconds", (("group", "G1"),))
    queued = ("nbwss_notifications_queued_total", ())
    first = await scrape(unix_server)
    assert (first[backlog], first[oldest], first[queued]) == (0, 0, 0)
    queue(store, "JOB", "JOB", "IMAGE", queued_at=time.time() - 60)
    second = await scrape(unix_server)
    assert (second[backlog], second[queued]) == (3, 3)
    assert second[oldest] >= 60
    with store.transaction() as conn:  # the group acknowledges two of them
        conn.execute("UPDATE group_cursors SET acked_seq = 2 WHERE group_id = 'G1'")
        conn.execute("DELETE FROM outbox WHERE seq <= 2")  # and they are purged
    third = await scrape(unix_server)
    assert (third[backlog], third[queued]) == (1, 3)  # the total never goes back


# -- `nbwss status` ------------------------------------------------------------------------


@pytest.fixture
def unconfigured_logs() -> Iterator[None]:
    """`cli.main` points structlog at this test's captured stderr; undo that afterwards."""
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("unconfigured_logs")
def test_status_command_when_the_daemon_is_not_running(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"nbwss: error: the daemon is not running (no status socket at {state_dir}/nbwss.sock)\n"
    )


async def test_fetch_from_a_dead_socket_says_not_running(state_dir: Path) -> None:
    path = state_dir / "nbwss.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))
    with pytest.raises(NbwssError, match="the daemon is not running"):
        await fetch_status(str(path))


async def run_cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nbwss", *args, stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(timeout(60)):
        out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_status_command_prints_a_table_and_json(
    unix_server: StatusServer, store: Store
) -> None:
    store.set_status("cloud-a.example", True)
    queue(store, "JOB")
    code, table = await run_cli("status")
    assert code == 0
    lines = table.splitlines()
    assert lines[0].startswith("nbwss ")
    assert lines[1].split()[:3] == ["GROUP", "ENDPOINT", "STATE"]
    assert lines[2].split()[:3] == ["G1", "cloud-a.example", "CONNECTED"]
    code, text = await run_cli("status", "--json")
    assert code == 0
    assert json.loads(text)["groups"]["G1"]["backlog"] == 1


def test_the_documented_status_fields_are_the_typed_ones() -> None:
    """docs/operations.md names every field of the live status, and no other."""
    table = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| `outstanding` |"))
    documented = set(re.findall(r"`(\w+)`", row)) - {"outstanding"}
    typed = {field.name for field in dataclasses.fields(OutstandingStatus)}
    assert documented == typed | {"age_s"}
