"""A TCP fault proxy for loopback tests and the soak: cut, stall, delay, refuse.

TLS runs end to end between the daemon and an endpoint, so faults are injected below
it, at TCP level, the way websockets' `InterceptingTransport` does inside a process:
the proxy listens on 127.0.0.1, dials its target for each accepted connection, and
pumps bytes both ways. Every control takes effect at once and is observable through
events (`wait_connections`, `ProxiedConnection.closed`), so a test never sleeps to wait
for state.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from types import TracebackType
from typing import Self

_CHUNK = 64 * 1024


def _reset_on_close(writer: asyncio.StreamWriter) -> None:
    """Make the next close send RST instead of FIN (SO_LINGER with a zero timeout)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class ProxiedConnection:
    """One client connection and its upstream twin, with two byte pumps between them."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        delay_s: float,
    ) -> None:
        self._client = client
        self._upstream = upstream
        self.delay_s = delay_s
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.closed = asyncio.Event()
        self.bytes_up = 0  # client -> target
        self.bytes_down = 0  # target -> client

    async def run(self) -> None:
        """Pump both ways until either side closes or `cut` is called."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(self._client[0], self._upstream[1], up=True))
                group.create_task(self._pump(self._upstream[0], self._client[1], up=False))
        except* (ConnectionError, OSError):
            pass
        finally:
            self._abort(reset=False)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        while data := await reader.read(_CHUNK):
            # A stalled connection holds the chunk it has read; TCP back-pressure holds
            # the rest, so nothing is lost, only late, as with a stuck middlebox.
            await self.flowing.wait()
            if self.delay_s > 0:
                await asyncio.sleep(self.delay_s)
            if up:
                self.bytes_up += len(data)
            else:
                self.bytes_down += len(data)
            writer.write(data)
            await writer.drain()
        # EOF on one side: end the whole connection (WebSocket has no half-close use).
        self._abort(reset=False)

    def stall(self) -> None:
        """Stop forwarding in both directions until `resume`."""
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    def cut(self, *, reset: bool = False) -> None:
        """Close both sides now; `reset=True` sends RST rather than FIN."""
        self._abort(reset=reset)

    def _abort(self, *, reset: bool) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.flowing.set()  # release a stalled pump so it sees the closed socket
        for _, writer in (self._client, self._upstream):
            if reset:
                _reset_on_close(writer)
                writer.transport.abort()
            else:
                writer.close()


class FaultProxy:
    """Listens on 127.0.0.1:0 and forwards each connection to `target_host:target_port`.

    Controls: `cut_all`, `stall_all` / `resume_all`, `delay_s` (added before each chunk
    is forwarded, for connections made after it is set and those live now), and
    `refuse_new` (accept, then close at once without dialling the target).
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.refuse_new = False
        self._delay_s = 0.0
        self.accepted = 0  # every connection accepted, refused ones included
        self.forwarded = 0  # connections that reached the target
        self.connections: list[ProxiedConnection] = []
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def delay_s(self) -> float:
        return self._delay_s

    @delay_s.setter
    def delay_s(self, value: float) -> None:
        self._delay_s = value
        for connection in self.connections:
            connection.delay_s = value

    @property
    def live(self) -> list[ProxiedConnection]:
        return [c for c in self.connections if not c.closed.is_set()]

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        """Stop listening, cut every connection, and wait for every pump to end."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for connection in self.connections:
            connection.cut()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_connections(self, count: int) -> None:
        """Wait until `count` connections have been accepted in total (refused included)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.accepted >= count)

    async def wait_forwarded(self, count: int) -> None:
        """Wait until `count` connections in total have been joined to the target."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.forwarded >= count)

    def cut_all(self, *, reset: bool = False) -> int:
        """Cut every live connection; returns how many were cut."""
        live = self.live
        for connection in live:
            connection.cut(reset=reset)
        return len(live)

    def stall_all(self) -> int:
        live = self.live
        for connection in live:
            connection.stall()
        return len(live)

    def resume_all(self) -> None:
        for connection in self.connections:
            connection.resume()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._count(accepted=True)
        if self.refuse_new:
            _reset_on_close(writer)
            writer.transport.abort()
            return
        try:
            upstream = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            # Target down: the client sees the connection dropped, as with a dead server.
            _reset_on_close(writer)
            writer.transport.abort()
            return
        connection = ProxiedConnection((reader, writer), upstream, self._delay_s)
        self.connections = [*self.live, connection]  # forget the closed ones
        if self._closing:  # accepted just before close(): it must not outlive it
            connection.cut()
        await self._count(accepted=False)
        await connection.run()

    async def _count(self, *, accepted: bool) -> None:
        async with self._changed:
            if accepted:
                self.accepted += 1
            else:
                self.forwarded += 1
            self._changed.notify_all()
