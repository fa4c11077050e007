"""`nbwss run` on uvloop (the `speed` extra, which the test extra installs) and on asyncio's
loop: each connects over TLS and delivers; `eventLoop=uvloop` without uvloop is refused."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbwss import eventloop, outbox
from nbwss.errors import ConfigError
from nbwss.store import Store
from nbwss.wake import send_wake
from tests.conftest import TlsMaterial, timeout
from tests.peers import Peer, add_endpoint


@pytest.fixture
def store(short_dir: Path) -> Iterator[Store]:
    db = Store(short_dir / "nbwss.db", short_dir / "nbwss.key")
    yield db
    db.close()


@pytest.mark.parametrize(
    ("setting", "loop"), [("uvloop", "uvloop"), ("auto", "uvloop"), ("asyncio", "asyncio")]
)
async def test_nbwss_run_delivers_on_the_loop_the_property_picks(
    tls: TlsMaterial, store: Store, short_dir: Path, setting: str, loop: str
) -> None:
    config = short_dir / "nbwss.properties"
    config.write_text(
        f"store.path={short_dir / 'nbwss.db'}\nlog.format=json\neventLoop={setting}\n"
    )
    async with Peer(tls.server_cert) as peer:
        add_endpoint(store, peer, "ep1.test")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nbwss", "-c", str(config), "run",
            env={**os.environ, "NOTIFY_SOCKET": ""},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await peer.wait_for(lambda: peer.connected, seconds=timeout(20))
            with store.transaction() as conn:
                outbox.enqueue(conn, [("JOB", {"jobId": n}) for n in range(3)], time.time())
            send_wake(short_dir / "nbwss.wake")
            await peer.wait_for(lambda: len(peer.received("NOTIFICATION")) >= 1)
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(timeout(10)):
                _, stderr = await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 0, stderr.decode()
    events = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    assert [e["loop"] for e in events if e["event"] == "service.event_loop"] == [loop]
    [message] = peer.received("NOTIFICATION")[:1]
    assert [d["jobId"] for e in message["payload"] for d in e["data"]] == [0, 1, 2]


def test_uvloop_required_but_not_installed_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what an import of a missing one does
    assert eventloop.choose("auto") == ("asyncio", None)
    with pytest.raises(ConfigError, match=r"install nbwss\[speed\]"):
        eventloop.choose("uvloop")
