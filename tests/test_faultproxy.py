"""The fault proxy over real loopback sockets: it forwards, cuts, stalls, delays, refuses."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.conftest import timeout
from tests.faultproxy import FaultProxy


class EchoServer:
    """A TCP echo target that records what it received and how many clients it saw."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.clients = 0
        self.client_gone = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients += 1
        self._writers.append(writer)
        try:
            while data := await reader.read(4096):
                await self.received.put(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            self.client_gone.set()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def proxy(echo: EchoServer) -> AsyncIterator[FaultProxy]:
    assert echo._server is not None
    port = echo._server.sockets[0].getsockname()[1]
    async with FaultProxy("127.0.0.1", port) as running:
        yield running


async def _dial(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(timeout(5)):
        return await reader.readexactly(len(data))


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_forwards_both_ways_and_counts_connections(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    first = await _dial(proxy)
    second = await _dial(proxy)
    assert await _roundtrip(*first, b"hello") == b"hello"
    assert await _roundtrip(*second, b"world" * 1000) == b"world" * 1000
    async with asyncio.timeout(timeout(5)):
        await proxy.wait_forwarded(2)
    assert (proxy.accepted, proxy.forwarded, echo.clients) == (2, 2, 2)
    assert len(proxy.live) == 2
    counts = sorted((c.bytes_up, c.bytes_down) for c in proxy.live)
    assert counts == [(5, 5), (5000, 5000)]
    await _close(first[1])
    await _close(second[1])


async def test_cut_closes_both_sides(proxy: FaultProxy, echo: EchoServer) -> None:
    reader, writer = await _dial(proxy)
    await _roundtrip(reader, writer, b"ping")
    assert proxy.cut_all() == 1
    async with asyncio.timeout(timeout(5)):
        assert await reader.read() == b""
        await echo.client_gone.wait()
    assert proxy.live == []
    await _close(writer)


async def test_cut_with_reset_sends_rst(proxy: FaultProxy) -> None:
    reader, writer = await _dial(proxy)
    await _roundtrip(reader, writer, b"ping")
    proxy.cut_all(reset=True)
    async with asyncio.timeout(timeout(5)):
        with pytest.raises(ConnectionResetError):
            await reader.read()
    await _close(writer)


async def test_stall_holds_bytes_until_resume(proxy: FaultProxy, echo: EchoServer) -> None:
    reader, writer = await _dial(proxy)
    await _roundtrip(reader, writer, b"before")
    await echo.received.get()
    assert proxy.stall_all() == 1
    writer.write(b"during")
    await writer.drain()
    # A bounded negative check: the bytes must not reach the target while stalled.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await echo.received.get()
    proxy.resume_all()
    async with asyncio.timeout(timeout(5)):
        assert await echo.received.get() == b"during"
        assert await reader.readexactly(6) == b"during"
    await _close(writer)


async def test_delay_adds_latency_each_way(proxy: FaultProxy) -> None:
    reader, writer = await _dial(proxy)
    proxy.delay_s = 0.2
    started = time.monotonic()
    assert await _roundtrip(reader, writer, b"slow") == b"slow"
    assert time.monotonic() - started >= 0.4  # once up, once down
    await _close(writer)


async def test_refuse_new_drops_without_reaching_target(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    proxy.refuse_new = True
    reader, writer = await _dial(proxy)
    async with asyncio.timeout(timeout(5)):
        with pytest.raises(ConnectionResetError):
            await reader.read()
        await proxy.wait_connections(1)
    assert (proxy.accepted, proxy.forwarded, echo.clients) == (1, 0, 0)
    await _close(writer)
    proxy.refuse_new = False
    again = await _dial(proxy)
    assert await _roundtrip(*again, b"back") == b"back"
    await _close(again[1])


async def test_target_down_drops_the_client() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    async with FaultProxy("127.0.0.1", port) as proxy:
        reader, writer = await _dial(proxy)
        async with asyncio.timeout(timeout(5)):
            with pytest.raises(ConnectionResetError):
                await reader.read()
        assert (proxy.accepted, proxy.forwarded) == (1, 0)
        await _close(writer)


async def test_close_ends_live_and_stalled_connections(echo: EchoServer) -> None:
    assert echo._server is not None
    proxy = await FaultProxy("127.0.0.1", echo._server.sockets[0].getsockname()[1]).start()
    reader, writer = await _dial(proxy)
    await _roundtrip(reader, writer, b"x")
    proxy.stall_all()
    async with asyncio.timeout(timeout(5)):
        await proxy.close()
        assert await reader.read() == b""
    await _close(writer)
