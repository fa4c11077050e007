"""Trust: what a server presents (over real loopback TLS), and how it is judged."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme

from nbwss.errors import MSG_NO_SSL, TrustError
from nbwss.trust import certificate_info, check_peer, fetch_certificate, pinned_context
from tests.conftest import TlsMaterial, make_tls, timeout

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def leaf_der(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


async def _hold_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep the connection until the client leaves (its read sees EOF or a reset)."""
    with suppress(OSError):
        await reader.read()
    writer.close()


async def _http_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A server that does not speak TLS: it answers the ClientHello with plain HTTP."""
    await reader.read(1)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


@asynccontextmanager
async def serving(handler: Handler, context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """Serve `handler` on a loopback port; on exit, close the server and every connection."""
    writers: list[asyncio.StreamWriter] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await handler(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()
        await server.wait_closed()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_fetch_reports_the_certificate_the_server_presents(tls: TlsMaterial) -> None:
    async with serving(_hold_open, tls.server_context()) as port:
        info = await fetch_certificate("127.0.0.1", port, timeout(5))
    der = leaf_der(tls.server_cert)
    assert info.der == der
    assert info.fingerprint == certificate_info(der).fingerprint
    assert len(info.fingerprint.split(":")) == 32
    assert {"DNS:localhost", "IP:127.0.0.1"} <= set(info.sans)
    assert "trustme" in info.issuer.lower()
    assert info.is_valid_at(datetime.now(UTC))
    assert info.to_json()["sha256"] == info.fingerprint


async def test_fetched_certificate_is_what_the_pinned_context_then_trusts(
    tls: TlsMaterial,
) -> None:
    async with serving(_hold_open, tls.server_context()) as port:
        info = await fetch_certificate("localhost", port, timeout(5))
        async with asyncio.timeout(timeout(5)):
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=pinned_context(info.der), server_hostname="localhost"
            )
        presented = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        await writer.wait_closed()
    check_peer(presented, info.der, "localhost")


async def test_refused_port_is_unable_to_establish_connection() -> None:
    with pytest.raises(TrustError, match=r"^Unable to establish connection with host: 127\.0"):
        await fetch_certificate("127.0.0.1", closed_port(), timeout(5))


async def test_unknown_host_is_unable_to_establish_connection() -> None:
    with pytest.raises(TrustError, match=r"^Unable to establish connection with host: no\.invalid"):
        await fetch_certificate("no.invalid", 443, timeout(5))


async def test_server_without_tls_fails_to_set_up_ssl_security() -> None:
    async with serving(_http_answer) as port:
        with pytest.raises(TrustError, match=f"^{MSG_NO_SSL}: TLS handshake"):
            await fetch_certificate("127.0.0.1", port, timeout(5))


async def test_silent_server_times_out_as_no_ssl() -> None:
    async with serving(_hold_open) as port:
        with pytest.raises(TrustError, match=f"^{MSG_NO_SSL}: .*timed out"):
            await fetch_certificate("127.0.0.1", port, 0.3)


def test_garbage_certificate_is_no_ssl() -> None:
    with pytest.raises(TrustError, match=f"^{MSG_NO_SSL}"):
        certificate_info(b"not a certificate")


def test_host_names_are_matched_like_the_daemon_does(tmp_path: Path) -> None:
    material = make_tls(tmp_path, "*.example.com", "Exact.Example.org", "10.0.0.1", "::1")
    info = certificate_info(leaf_der(material.server_cert))
    assert info.names_host("a.example.com")
    assert info.names_host("exact.example.org")
    assert info.names_host("10.0.0.1")
    assert info.names_host("0:0::1")
    assert not info.names_host("example.com")
    assert not info.names_host("a.b.example.com")
    assert not info.names_host("10.0.0.2")
    assert not info.names_host("other.example.org")


def test_validity_window_is_checked_against_the_time_given(tls: TlsMaterial) -> None:
    info = certificate_info(leaf_der(tls.server_cert))
    assert info.is_valid_at(info.not_before)
    assert not info.is_valid_at(info.not_before - timedelta(seconds=1))
    assert not info.is_valid_at(info.not_after + timedelta(seconds=1))
