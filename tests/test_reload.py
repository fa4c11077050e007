"""SIGHUP tells the truth: a bad file changes nothing and says so; a good one says what
it applied, and which changed keys wait for a restart."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from nbwss import logs, properties
from nbwss.daemon import build_service
from nbwss.errors import ConfigError
from nbwss.properties import Applies, Settings
from nbwss.sdnotify import Notifier
from nbwss.service import Service
from nbwss.store import Store
from tests.conftest import timeout
from tests.test_service import running


@pytest.fixture
def log_lines() -> io.StringIO:
    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    return stream


def events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def datagrams_after_reload(sock: socket.socket, service: Service) -> list[str]:
    """Everything sent to systemd from the reload on (the reload runs on the loop)."""
    loop = asyncio.get_running_loop()
    while True:  # drop READY=1 of the start
        try:
            sock.recv(4096)
        except BlockingIOError:
            break
    service.handle_reload()
    received = [(await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout(5))).decode()]
    while True:  # whatever else the reload sent right after
        try:
            received.append(sock.recv(4096).decode())
        except BlockingIOError:
            await asyncio.sleep(0)
            try:
                received.append(sock.recv(4096).decode())
            except BlockingIOError:
                return received


async def test_a_bad_file_keeps_the_old_settings_and_sends_no_ready(
    short_store: Store, notify_socket: socket.socket, log_lines: io.StringIO
) -> None:
    def broken() -> Settings:
        raise ConfigError("/etc/nbwss/nbwss.properties:4: keepAlive.scheduledRate='fast' "
                          "is not valid, expected a number of seconds > 0")

    before = Settings(store_path=short_store.path, connection_period_s=30.0)
    service = build_service(before, short_store, status=False, reload_settings=broken,
                            notifier=Notifier(notify_socket.getsockname()))
    async with running(service):
        sent = await datagrams_after_reload(notify_socket, service)
    assert service.settings is before
    assert not any("READY=1" in text or "RELOADING=1" in text for text in sent), sent
    assert sent[0].startswith("STATUS=reload failed, settings unchanged: ")
    names = [event["event"] for event in events(log_lines)]
    assert "service.reload_failed" in names
    assert "service.reloaded" not in names
    failed = next(e for e in events(log_lines) if e["event"] == "service.reload_failed")
    assert "keepAlive.scheduledRate='fast'" in failed["reason"]


async def test_a_good_file_is_applied_and_restart_keys_are_named(
    short_store: Store, notify_socket: socket.socket, log_lines: io.StringIO, tmp_path: Path
) -> None:
    config = tmp_path / "nbwss.properties"
    config.write_text(f"store.path={short_store.path}\nconnectionInfo.period=30\n")
    service = build_service(properties.load(config), short_store, status=False,
                            reload_settings=lambda: properties.load(config),
                            notifier=Notifier(notify_socket.getsockname()))
    async with running(service):
        config.write_text(
            f"store.path={short_store.path}\n"
            "connectionInfo.period=20\nkeepAlive.scheduledRate=7\n"
            "notification.maxBatch=10\ncommand.timeout=5\nnot.a.key=1\n"
        )
        sent = await datagrams_after_reload(notify_socket, service)
    assert service.settings.connection_period_s == 20.0
    assert sent[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert "READY=1\nSTATUS=reloaded" in sent
    by_name = {event["event"]: event for event in events(log_lines)}
    assert by_name["service.reloaded"]["applied"] == [
        "connectionInfo.period", "keepAlive.scheduledRate", "notification.maxBatch"]
    assert by_name["service.reload_needs_restart"]["keys"] == ["command.timeout"]
    assert "unknown key 'not.a.key'" in by_name["config.unknown_key"]["detail"]


def test_every_key_says_when_a_reload_applies_it() -> None:
    now = {p.key for p in properties.PROPERTIES if p.applies is Applies.NOW}
    assert now == {"connectionInfo.period", "log.level", "log.format"}
    old, new = Settings(), Settings(log_level="debug", notification_rate_s=1.0)
    assert properties.changed_keys(old, new, Applies.NOW) == ["log.level"]
    assert properties.changed_keys(old, new, Applies.NEW_CONNECTIONS) == [
        "notification.scheduledRate"]
    assert properties.changed_keys(old, new, Applies.RESTART) == []


ROOT = Path(__file__).resolve().parent.parent


def _keys_after(text: str, phrase: str) -> set[str]:
    """The keys named from `phrase` up to the next ';' (backticks and commas dropped)."""
    flat = " ".join(text.split())
    start = flat.index(phrase) + len(phrase)
    named = flat[start:flat.index(";", start)]
    return {word.strip("`,:.()") for word in named.split()
            if any(word.strip("`,:.()") == p.key for p in properties.PROPERTIES)}


def _expected(applies: Applies) -> set[str]:
    return {p.key for p in properties.PROPERTIES if p.applies is applies}


@pytest.mark.parametrize(("where", "now", "new_connections"), [
    ("config/nbwss.properties", "applies at once:", "applies to connections made from then on:"),
    ("docs/configuration.md", "applied at once:",
     "applied to connections made from then on (a live connection keeps what it was made "
     "with until it ends):"),
])
def test_the_sample_header_and_the_docs_name_what_a_reload_applies(
    where: str, now: str, new_connections: str
) -> None:
    text = (ROOT / where).read_text(encoding="utf-8")
    if where.endswith(".properties"):
        text = "\n".join(line.lstrip("# ") for line in text.split("\n\n")[0].splitlines())
    assert _keys_after(text, now) == _expected(Applies.NOW)
    assert _keys_after(text, new_connections) == _expected(Applies.NEW_CONNECTIONS)
    assert "service.reload_needs_restart" in text
