"""The daemon's life cycle: sd_notify, start, reload, graceful stop, and `nbwss run`."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from nbwss.component import Component
from nbwss.daemon import build_service
from nbwss.properties import Settings
from nbwss.sdnotify import Notifier, watchdog_interval_s
from nbwss.service import Service
from nbwss.status import fetch_status
from nbwss.store import Store
from tests.conftest import TlsMaterial, timeout
from tests.peers import Peer, add_endpoint


@pytest.fixture
def store(state_dir: Path) -> Iterator[Store]:
    db = Store(state_dir / "nbwss.db", state_dir / "nbwss.key")
    yield db
    db.close()


async def datagram_where(sock: socket.socket, predicate: Callable[[str], bool]) -> str:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout(10)):
        while True:
            text = (await loop.sock_recv(sock, 4096)).decode()
            if predicate(text):
                return text


async def test_notifier_sends_one_datagram_per_call(notify_socket: socket.socket) -> None:
    notifier = Notifier(notify_socket.getsockname())
    assert notifier.send("READY=1", "STATUS=connecting")
    assert await datagram_where(notify_socket, bool) == "READY=1\nSTATUS=connecting"


async def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"nbwss-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        assert Notifier("@" + name).send("WATCHDOG=1")
        assert await datagram_where(sock, bool) == "WATCHDOG=1"


def test_notifier_without_systemd_does_nothing_and_a_dead_socket_is_not_fatal(
    tmp_path: Path,
) -> None:
    assert not Notifier.from_env({}).send("READY=1")
    assert not Notifier(str(tmp_path / "nobody-listens")).send("READY=1")


def test_watchdog_interval_is_half_the_timeout_and_only_for_this_process() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000"}) == 2.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({}) is None


class Recorder(Component):
    """A component: runs until cancelled, and says so."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = False

    async def run(self) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


@asynccontextmanager
async def running(service: Service) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(service.async_run(handle_signals=False))
    try:
        async with asyncio.timeout(timeout(5)):
            await service.ready.wait()
        yield task
    finally:
        service.handle_exit()
        async with asyncio.timeout(timeout(10)):
            await task


async def test_service_starts_reports_to_systemd_and_stops_with_close_frames(
    tls: TlsMaterial, store: Store, notify_socket: socket.socket
) -> None:
    async with Peer(tls.server_cert) as peer:
        add_endpoint(store, peer, "ep1.test", priority=1)
        add_endpoint(store, peer, "ep2.test", priority=2)
        store.set_enabled("ep2.test", False)
        store.set_status("ep2.test", True)  # left behind by a killed daemon
        component = Recorder()
        service = build_service(
            Settings(store_path=store.path, connection_period_s=30.0), store, status=False,
            components=[component], notifier=Notifier(notify_socket.getsockname()),
            watchdog_s=0.05,
        )
        async with running(service) as task:
            assert not store.endpoint("ep2.test").connected
            await datagram_where(notify_socket, lambda text: "READY=1" in text)
            await peer.wait_for(lambda: peer.connected)
            await datagram_where(notify_socket, lambda t: "1 server group(s) connected" in t)
            await datagram_where(notify_socket, lambda text: text == "WATCHDOG=1")
            assert component.started.is_set()
            service.handle_exit()
            async with asyncio.timeout(timeout(10)):
                await task
        assert component.cancelled
        assert peer.connections[0].close_code == 1000
        assert peer.connections[0].close_reason == "daemon stopping"
        assert not store.endpoint("ep1.test").connected


async def test_a_running_daemon_keeps_start_up_out_of_the_collector_and_undoes_it_at_stop(
    store: Store,
) -> None:
    thresholds = gc.get_threshold()
    service = build_service(
        Settings(store_path=store.path, connection_period_s=30.0), store, status=False,
        notifier=Notifier(None),
    )
    async with running(service):
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] > thresholds[0]  # fewer young collections
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == thresholds


def test_services_whose_lives_overlap_keep_the_collector_tuned_until_the_last_stops() -> None:
    """Tests and benchmarks run several services in one process: the first to stop must
    not unfreeze the others' start-up, nor the last leave the threshold raised."""
    from nbwss.service import collector_tuned_for_a_daemon

    thresholds = gc.get_threshold()
    first, second = collector_tuned_for_a_daemon(), collector_tuned_for_a_daemon()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] > thresholds[0]
    second.__exit__(None, None, None)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == thresholds


async def test_a_second_stop_request_does_not_wait_for_a_hung_endpoint(
    tls: TlsMaterial, store: Store
) -> None:
    async with Peer(tls.server_cert, answer_close=False) as peer:
        add_endpoint(store, peer, "ep1.test")
        service = build_service(
            Settings(store_path=store.path, connection_period_s=30.0, send_timeout_s=30.0),
            store, status=False, notifier=Notifier(None),
        )
        async with running(service) as task:
            await peer.wait_for(lambda: peer.connected)
            service.handle_exit()
            done, _ = await asyncio.wait({task}, timeout=0.3)
            assert not done  # waiting for the endpoint's close frame, within the grace
            service.handle_exit()
            async with asyncio.timeout(timeout(2)):
                await task
            assert service.force_exit


async def test_reload_reads_properties_and_store_at_once(tls: TlsMaterial, store: Store) -> None:
    reloaded = Settings(store_path=store.path, connection_period_s=30.0, keepalive_rate_s=7.0)
    service = build_service(
        Settings(store_path=store.path, connection_period_s=30.0), store, status=False,
        reload_settings=lambda: reloaded, notifier=Notifier(None),
    )
    async with Peer(tls.server_cert) as peer, running(service):
        add_endpoint(store, peer, "ep1.test")
        service.handle_reload()  # what SIGHUP does: no waiting for the 30 s period
        await peer.wait_for(lambda: peer.connected, seconds=2)
        assert service.settings is reloaded


async def test_nbwss_run_stops_cleanly_on_sigterm(
    tls: TlsMaterial, store: Store, state_dir: Path, notify_socket: socket.socket
) -> None:
    config = state_dir / "nbwss.properties"
    config.write_text(
        f"store.path={state_dir / 'nbwss.db'}\nconnectionInfo.period=30\nlog.format=json\n"
    )
    async with Peer(tls.server_cert) as peer, Peer(tls.server_cert) as later:
        add_endpoint(store, peer, "ep1.test")
        env = {**os.environ, "NOTIFY_SOCKET": notify_socket.getsockname()}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nbwss", "-c", str(config), "run",
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        try:
            await datagram_where(notify_socket, lambda text: "READY=1" in text)
            await peer.wait_for(lambda: peer.connected, seconds=10)
            add_endpoint(store, later, "other.test", group_id="GROUP2")
            process.send_signal(signal.SIGHUP)  # re-read now, not in 30 s
            await later.wait_for(lambda: later.connected, seconds=5)
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(timeout(10)):
                _, stderr = await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0, stderr.decode()
        await peer.wait_for(lambda: peer.connections[0].closed)
        assert peer.connections[0].close_code == 1000
        await later.wait_for(lambda: later.connections[0].closed)
        assert later.connections[0].close_code == 1000
        assert b'"endpoint.connected"' in stderr
        assert b"token-of-the-endpoint" not in stderr


async def test_a_second_nbwss_run_on_the_same_state_refuses_and_touches_nothing(
    tls: TlsMaterial, store: Store, state_dir: Path, notify_socket: socket.socket
) -> None:
    config = state_dir / "nbwss.properties"
    config.write_text(f"store.path={state_dir / 'nbwss.db'}\nconnectionInfo.period=30\n")
    async with Peer(tls.server_cert) as peer:
        add_endpoint(store, peer, "ep1.test")
        env = {**os.environ, "NOTIFY_SOCKET": notify_socket.getsockname()}
        first = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nbwss", "-c", str(config), "run",
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await datagram_where(notify_socket, lambda text: "READY=1" in text)
            await peer.wait_for(lambda: peer.connected, seconds=10)
            second = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "nbwss", "-c", str(config), "run",
                env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )
            async with asyncio.timeout(timeout(20)):
                _, stderr = await second.communicate()
            assert second.returncode == 1
            assert stderr.decode() == (
                f"nbwss: error: another nbwss run (pid {first.pid}) is already using "
                f"{state_dir / 'nbwss.db'}\n"
            )
            # The first daemon's connection and recorded status are untouched.
            assert first.returncode is None
            assert not peer.connections[-1].closed
            assert store.endpoint("ep1.test").connected
        finally:
            first.send_signal(signal.SIGTERM)
            async with asyncio.timeout(timeout(10)):
                await first.wait()
    assert first.returncode == 0


def drained(sock: socket.socket) -> list[str]:
    """Every datagram waiting on `sock`, without waiting for more."""
    received = []
    while True:
        try:
            received.append(sock.recv(4096).decode())
        except BlockingIOError:
            return received


async def test_ready_is_sent_only_once_the_status_socket_answers(
    store: Store, state_dir: Path, notify_socket: socket.socket
) -> None:
    settings = Settings(store_path=store.path, connection_period_s=30.0)
    service = build_service(settings, store, notifier=Notifier(notify_socket.getsockname()))
    status_path = settings.status_address
    answered_at_ready: list[bool] = []

    def ready_then_probe(text: str) -> bool:
        if "READY=1" not in text:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            answered_at_ready.append(probe.connect_ex(status_path) == 0)
        return True

    task = asyncio.create_task(service.async_run(handle_signals=False))
    try:
        await datagram_where(notify_socket, ready_then_probe)
        assert answered_at_ready == [True]
        assert (await fetch_status(status_path))["live"] is True
    finally:
        service.handle_exit()
        async with asyncio.timeout(timeout(10)):
            await task


async def test_a_status_address_in_use_stops_nbwss_run_with_one_line_and_no_ready(
    state_dir: Path, notify_socket: socket.socket
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = state_dir / "nbwss.properties"
        config.write_text(
            f"store.path={state_dir / 'nbwss.db'}\nstatus.listen=127.0.0.1:{port}\n"
            "log.format=json\n"
        )
        env = {**os.environ, "NOTIFY_SOCKET": notify_socket.getsockname()}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nbwss", "-c", str(config), "run",
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(timeout(20)):
            _, stderr = await process.communicate()
    assert process.returncode == 1
    errors = [line for line in stderr.decode().splitlines() if line.startswith("nbwss: error:")]
    assert errors == [f"nbwss: error: cannot serve status at 127.0.0.1:{port}: "
                      "Address already in use"], stderr.decode()
    assert not any("READY=1" in text for text in drained(notify_socket))


class FailingStop(Recorder):
    """A component whose `stop()` raises (a socket file that cannot be removed, say)."""

    async def stop(self) -> None:
        raise OSError("cannot remove the socket file")


class StopRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True


async def test_a_component_whose_stop_raises_does_not_keep_the_others_from_stopping(
    store: Store,
) -> None:
    first, failing = StopRecorder(), FailingStop()
    service = build_service(
        Settings(store_path=store.path, connection_period_s=30.0), store, status=False,
        components=[first, failing], notifier=Notifier(None),
    )
    task = asyncio.create_task(service.async_run(handle_signals=False))
    async with asyncio.timeout(timeout(5)):
        await service.ready.wait()
    service.handle_exit()
    with pytest.raises(OSError, match="cannot remove the socket file"):
        async with asyncio.timeout(timeout(10)):
            await task
    assert first.stopped  # started first, stopped last: after the one that raised
