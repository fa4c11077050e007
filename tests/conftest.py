"""Shared fixtures: real TLS material from trustme, temporary state, scaled timeouts.

Timeouts in integration tests are multiplied by `NBWSS_TESTS_TIMEOUT_FACTOR` (default 1)
for slow or loaded machines, as websockets does with WEBSOCKETS_TESTS_TIMEOUT_FACTOR.
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from hypothesis import settings

from nbwss.standin import restapi
from nbwss.standin.restapi import StandinApi
from nbwss.standin.scenarios import GuideScenarios
from nbwss.store import Store

# The vendor guide's example messages as valid JSON, copied from the project's shared
# spec/examples/ into the docs (app developers read them there), so that a clone alone
# can run the tests.
SPEC_EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples" / "guide"

TIMEOUT_FACTOR = float(os.environ.get("NBWSS_TESTS_TIMEOUT_FACTOR", "1"))

# No per-example deadline: on a loaded 2-core machine a first example (regexes compiled,
# caches cold) can take over hypothesis's 200 ms, a failure with no bug behind it.
# Speed is measured by the benchmarks (`bench fuzz --slow-ms` for the parsers), not here.
settings.register_profile("nbwss", deadline=None)
settings.load_profile("nbwss")


def timeout(seconds: float) -> float:
    """A test deadline, scaled for slow machines."""
    return seconds * TIMEOUT_FACTOR


@dataclass
class TlsMaterial:
    """A CA and a server certificate for localhost / 127.0.0.1, as files and contexts."""

    ca: trustme.CA
    server_cert: trustme.LeafCert
    ca_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


def make_tls(directory: Path, *names: str) -> TlsMaterial:
    ca = trustme.CA()
    leaf = ca.issue_cert(*(names or ("localhost", "127.0.0.1")))
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return TlsMaterial(ca=ca, server_cert=leaf, ca_file=ca_file)


@pytest.fixture
def tls(tmp_path: Path) -> TlsMaterial:
    return make_tls(tmp_path)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """State in a short path, so the daemon's Unix sockets fit their address limit."""
    with tempfile.TemporaryDirectory(prefix="nbw") as name:
        yield Path(name)


@pytest.fixture
def short_store(short_dir: Path) -> Iterator[Store]:
    """A real store in `short_dir` (nbwss.db and nbwss.key), closed after the test."""
    store = Store(short_dir / "nbwss.db", short_dir / "nbwss.key")
    yield store
    store.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A real datagram socket standing in for systemd's $NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    yield sock
    sock.close()


@pytest.fixture
async def standin(tls: TlsMaterial) -> AsyncIterator[tuple[StandinApi, str]]:
    """The stand-in NetBackup REST API over HTTPS, its catalog ready for the guide's
    scenarios; yields the model to drive and the base URL."""
    api = StandinApi()
    GuideScenarios().prepare(api)
    async with restapi.serving(api, tls.server_context()) as base_url:
        yield api, base_url


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private state directory; the environment points the store at it."""
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    monkeypatch.setenv("STATE_DIRECTORY", str(directory))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("NBWSS_CONFIG", raising=False)
    return directory


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """`cli.main` points structlog at the stderr of the test that ran it; once that stream
    is closed a later test would write to it. Every test starts from the defaults."""
    import structlog

    from nbwss import logs

    yield
    structlog.reset_defaults()
    logs._stream = logs._pending = None
