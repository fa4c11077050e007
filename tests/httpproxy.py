"""A real HTTP proxy for tests: pproxy (from PyPI, the `test` extra) in its own process.

One process, two listeners on 127.0.0.1: an open proxy, and one that demands Basic
credentials (`USER`:`PASSWORD`) with 407 otherwise. `--auth 0` makes it ask on every
connection (by default pproxy trusts an address that authenticated once for 30 days).
With `-v` it prints a line per tunnel (`http 127.0.0.1:PORT -> HOST:PORT`) and per refusal
(`Unauthorized HTTP from 127.0.0.1`); `tunnels_to(port)` reads them, so a test sees what
went through the proxy and what did not.

pproxy answers CONNECT with `200 Connection established`, and with 407 and
`Proxy-Authenticate: Basic` when credentials are missing or wrong; a tunnel it cannot
open, it closes without an answer (it sends no 502).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tests.conftest import timeout

USER = "nbwss-proxy-user"
PASSWORD = "pr0xy:pa$$word"  # a ':' in the password is allowed (Basic splits at the first)


class HttpProxy:
    """The running pproxy process; see the module docstring."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._process = process
        self.lines: list[str] = []
        self._changed = threading.Condition()
        ports = [self._port_of(self._read_line()) for _ in range(2)]
        self.open_port, self.auth_port = ports
        self._reader = threading.Thread(target=self._read_all, daemon=True)
        self._reader.start()

    @property
    def open_url(self) -> str:
        return f"http://127.0.0.1:{self.open_port}"

    @property
    def auth_url(self) -> str:
        return f"http://127.0.0.1:{self.auth_port}"

    def tunnels_to(self, port: int, host: str = "127.0.0.1") -> int:
        """How many tunnels the proxy opened to `host`:`port` so far."""
        with self._changed:
            return sum(line.endswith(f"-> {host}:{port}") for line in self.lines)

    @property
    def refusals(self) -> int:
        """How many connections it refused for want of the right credentials (407)."""
        with self._changed:
            return sum(line.startswith("Unauthorized HTTP") for line in self.lines)

    async def until(self, predicate: Callable[[], bool], seconds: float = 5.0) -> None:
        """Return once `predicate()` holds, checked after each line pproxy prints. Lines
        come in the order pproxy printed them: once the last expected one is in, a
        count of the others is final too."""
        await asyncio.to_thread(self._wait_for, predicate, timeout(seconds))

    def _wait_for(self, predicate: Callable[[], bool], seconds: float) -> None:
        with self._changed:
            if not self._changed.wait_for(predicate, seconds):
                raise AssertionError(f"pproxy never printed it; it printed {self.lines}")

    def _read_line(self) -> str:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError("pproxy did not start")
        return line.strip()

    @staticmethod
    def _port_of(line: str) -> int:
        # "Serving on ipv? 127.0.0.1:38349 by http"
        return int(line.split(" by ")[0].rsplit(":", 1)[1])

    def _read_all(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            with self._changed:
                self.lines.append(line.strip())
                self._changed.notify_all()


_WITHOUT_UVLOOP = (
    "import runpy, sys; sys.modules['uvloop'] = None; sys.argv[0] = 'pproxy'; "
    "runpy.run_module('pproxy', run_name='__main__', alter_sys=True)"
)


@contextmanager
def running_proxy() -> Iterator[HttpProxy]:
    """Start pproxy, yield it once both listeners are up, stop it at the end."""
    process = subprocess.Popen(
        # pproxy installs uvloop when it can import it (the test extra brings uvloop for
        # the daemon), and fails on uvloop >= 0.22's get_event_loop: keep it on asyncio.
        [sys.executable, "-u", "-c", _WITHOUT_UVLOOP, "-l", "http://127.0.0.1:0",
         "-l", f"http://127.0.0.1:0#{USER}:{PASSWORD}", "--auth", "0", "-v"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        yield HttpProxy(process)
    finally:
        process.terminate()
        process.wait(timeout(10))
        if process.stdout is not None:
            process.stdout.close()
