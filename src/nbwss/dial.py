"""Dialling one endpoint: TCP, TLS (pinned by the caller) and the WebSocket upgrade,
through an outbound proxy when one is configured, with one deadline and one-line errors.

`session.connect()` dials with `dial()`, then checks the pinned certificate and sends
CONNECT. Also here: the process-wide trim of asyncio's TLS read buffer (memory per idle
connection, issue 14) and the handshake counter.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ssl
import threading
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from nbwss.errors import MSG_CERT_MISMATCH, ConnectError, TrustError, unable_to_connect
from nbwss.metrics import HANDSHAKES
from nbwss.neterrors import describe
from nbwss.outbound import Proxy, request_options
from nbwss.properties import Settings

# TCP + TLS + HTTP upgrade; the CONNECT answer then has `connect.responseTimeout`.
DIAL_TIMEOUT_S: Final = 10.0
# A frame this many times over `message.maxBytes` is not even read: the transport closes
# with 1009. Below that, an oversized frame follows `exception.ignoreDecoder` like any
# other undecodable one.
HARD_SIZE_FACTOR: Final = 2
TLS_READ_BUFFER_BYTES: Final = 16 * 1024


def trim_tls_read_buffer() -> None:
    """Shrink asyncio's per-connection TLS read buffer from 256 KiB to 16 KiB, and have
    the connections of a thread share one.

    asyncio's SSL transport gives every connection a zero-filled (so resident) buffer of
    `SSLProtocol.max_size` bytes: with a thousand idle connections that alone is 250 MiB
    at CPython's size, 16 MiB at ours. The buffer only stages a socket read: the
    selector loop fills it (`get_buffer`, `recv_into`) and the protocol copies it into
    its TLS engine (`buffer_updated`) in one synchronous call, so the connections of one
    loop can use the same bytes. A TLS record holds at most 16 KiB, so a smaller buffer
    costs no throughput; 4 KiB doubled the CPU of reading a 500 KiB REST answer.
    `max_size` is a public class attribute (CPython 3.11 to 3.13); the buffer is its
    private `_ssl_buffer`, left alone should a Python version not have it. Sets both for
    the whole process, once, and never enlarges the buffer. (uvloop has its own TLS.)
    """
    protocol = asyncio.sslproto.SSLProtocol
    if getattr(protocol, "max_size", 0) > TLS_READ_BUFFER_BYTES:
        protocol.max_size = TLS_READ_BUFFER_BYTES
    made = protocol.__init__
    if getattr(made, "shares_read_buffer", False):
        return

    def init(self: asyncio.sslproto.SSLProtocol, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        own = getattr(self, "_ssl_buffer", None)
        if isinstance(own, bytearray):
            shared = _thread_read_buffer(len(own))
            self._ssl_buffer, self._ssl_buffer_view = shared, memoryview(shared)  # type: ignore[attr-defined]

    init.shares_read_buffer = True  # type: ignore[attr-defined]
    protocol.__init__ = init  # type: ignore[method-assign]


_read_buffers = threading.local()


def _thread_read_buffer(size: int) -> bytearray:
    """The one TLS read buffer of this thread's connections, at least `size` bytes."""
    buffer: bytearray | None = getattr(_read_buffers, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = _read_buffers.buffer = bytearray(size)
    return buffer


@dataclass(frozen=True, slots=True)
class Target:
    """Everything needed to dial one endpoint; the token never shows in a repr."""

    group_id: str
    host_name: str
    url: str
    token: str
    certificate_der: bytes

    def __repr__(self) -> str:
        return f"Target(group_id={self.group_id!r}, host_name={self.host_name!r}, url={self.url!r})"


async def dial(
    http: aiohttp.ClientSession,
    target: Target,
    settings: Settings,
    context: ssl.SSLContext,
    proxy: Proxy | None,
) -> aiohttp.ClientWebSocketResponse:
    host = target.host_name
    try:
        async with asyncio.timeout(DIAL_TIMEOUT_S):
            return await http.ws_connect(
                target.url,
                ssl=context,  # through a proxy too: TLS is end to end, inside the tunnel
                **request_options(proxy),
                autoping=False,
                autoclose=True,
                compress=0,  # a deflate context costs ~100s of KiB per connection
                max_msg_size=settings.message_max_bytes * HARD_SIZE_FACTOR,
                timeout=aiohttp.ClientWSTimeout(ws_close=settings.send_timeout_s),
            )
    except TimeoutError:
        count_handshake(target, "timeout")
        why = f"no answer in {DIAL_TIMEOUT_S:g} s"
        if proxy is not None:
            why += f" through proxy {proxy.url}"
        raise ConnectError(f"{unable_to_connect(host)}: {why}") from None
    except aiohttp.ClientConnectorCertificateError as exc:
        count_handshake(target, "error")
        raise TrustError(f"{MSG_CERT_MISMATCH}: {host}: {exc.certificate_error}") from None
    except (aiohttp.ClientError, OSError) as exc:
        count_handshake(target, "error")
        status = exc.status if isinstance(exc, aiohttp.WSServerHandshakeError) else None
        raise ConnectError(f"{unable_to_connect(host)}: {describe(exc, proxy)}",
                           http_status=status) from None


def count_handshake(target: Target, result: str) -> None:
    """Count a handshake's outcome (`nbwss_handshakes_total`)."""
    HANDSHAKES.labels(group=target.group_id, host=target.host_name, result=result).inc()
