"""Dialling one endpoint: TCP, TLS (pinned by the caller) and the WebSocket upgrade,
through an outbound proxy when one is configured, with one deadline and one-line errors.

`session.connect()` dials with `dial()`, then checks the pinned certificate and sends
CONNECT. Also here: the process-wide trims of asyncio's TLS connections and what a dial
leaves behind once the upgrade is done (memory per idle connection, issue 14), and the
handshake counter.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ssl
import threading
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from nbwss import logs
from nbwss.errors import MSG_CERT_MISMATCH, ConnectError, TrustError, unable_to_connect
from nbwss.metrics import HANDSHAKES
from nbwss.neterrors import describe
from nbwss.outbound import Proxy, request_options
from nbwss.properties import Settings

log = logs.get_logger("nbwss.dial")

# TCP + TLS + HTTP upgrade; the CONNECT answer then has `connect.responseTimeout`.
DIAL_TIMEOUT_S: Final = 10.0
# A frame this many times over `message.maxBytes` is not even read: the transport closes
# with 1009. Below that, an oversized frame follows `exception.ignoreDecoder` like any
# other undecodable one.
HARD_SIZE_FACTOR: Final = 2
TLS_READ_BUFFER_BYTES: Final = 16 * 1024


def trim_tls_connections() -> None:
    """The process-wide trims of asyncio's TLS connections: one shared read buffer
    (`trim_tls_read_buffer`) and no decoded peer certificate kept per connection
    (`keep_no_peercert_dict`). Idempotent."""
    trim_tls_read_buffer()
    keep_no_peercert_dict()


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
            self._ssl_buffer, self._ssl_buffer_view = _thread_read_buffer(len(own))  # type: ignore[attr-defined]

    init.shares_read_buffer = True  # type: ignore[attr-defined]
    protocol.__init__ = init  # type: ignore[method-assign]


def keep_no_peercert_dict() -> None:
    """Have asyncio's TLS transports decode the peer certificate into a dict when asked
    (`get_extra_info("peercert")`), not keep one per connection from the handshake on.

    asyncio stores `SSLObject.getpeercert()` in the transport's extra info when the
    handshake completes: about 2 KiB of dicts and strings per connection, a tenth of
    what an idle nbwss connection costs, that nothing reads (the pin is checked on the
    DER form: `check_peer`). The handshake still decodes it once, as before (a failure
    there still fails the handshake); only the result is not kept, and the same value
    is decoded again from the `ssl_object` on request. Verification is OpenSSL's and
    unchanged. Leaves a Python version whose SSLProtocol lacks these hooks alone.
    """
    protocol = asyncio.sslproto.SSLProtocol
    completed = getattr(protocol, "_on_handshake_complete", None)
    extra_info = getattr(protocol, "_get_extra_info", None)
    if completed is None or extra_info is None or getattr(completed, "keeps_no_peercert", False):
        return

    def on_handshake_complete(self: Any, handshake_exc: BaseException | None) -> None:
        completed(self, handshake_exc)
        extra = getattr(self, "_extra", None)
        if isinstance(extra, dict) and "ssl_object" in extra:
            extra.pop("peercert", None)

    def get_extra_info(self: Any, name: str, default: Any = None) -> Any:
        if name == "peercert":
            extra = getattr(self, "_extra", {})
            ssl_object = extra.get("ssl_object")
            if "peercert" not in extra and ssl_object is not None:
                return ssl_object.getpeercert()
        return extra_info(self, name, default)

    on_handshake_complete.keeps_no_peercert = True  # type: ignore[attr-defined]
    protocol._on_handshake_complete = on_handshake_complete  # type: ignore[method-assign]
    protocol._get_extra_info = get_extra_info  # type: ignore[method-assign]


_read_buffers = threading.local()


def _thread_read_buffer(size: int) -> tuple[bytearray, memoryview]:
    """The one TLS read buffer of this thread's connections, at least `size` bytes, and
    one view of it (a view per connection is 0.3 KiB more)."""
    buffer: bytearray | None = getattr(_read_buffers, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = _read_buffers.buffer = bytearray(size)
        _read_buffers.view = memoryview(buffer)
    view: memoryview = _read_buffers.view
    return buffer, view


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
            ws = await http.ws_connect(
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
    release_upgrade(ws)
    return ws


_NO_HEADERS: Final = CIMultiDictProxy(CIMultiDict[str]())


def release_upgrade(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Let go of what aiohttp keeps of the HTTP upgrade once the WebSocket is open.

    The connection's `ClientResponse` lives as long as the WebSocket (it closes the
    connection), and with it the upgrade answer's headers (raw and parsed), the
    request's (`request_info`) and the HTTP parser that read them: about 3 KiB per
    connection that nothing reads once frames flow (a WebSocket answer has no body; the
    upgrade's headers were checked by `ws_connect`). Private attributes of aiohttp's,
    each set only if present; and since only memory is at stake, an aiohttp that
    refuses one (a read-only property, another signature) keeps what it keeps: the
    connection goes on, and `dial.upgrade_kept` says so once.
    """
    global _upgrade_kept_logged
    try:
        _release_upgrade(ws)
    except Exception as exc:
        if not _upgrade_kept_logged:
            _upgrade_kept_logged = True
            log.info("dial.upgrade_kept", reason=f"{type(exc).__name__}: {exc}")


_upgrade_kept_logged = False


def _release_upgrade(ws: aiohttp.ClientWebSocketResponse) -> None:
    response: Any = getattr(ws, "_response", None)
    if response is None:
        return
    for name, empty in (("_raw_headers", ()), ("_headers", _NO_HEADERS), ("_history", ())):
        if hasattr(response, name):
            setattr(response, name, empty)
    cache = getattr(response, "_cache", None)
    if isinstance(cache, dict):
        cache.clear()  # the parsed headers' derived values (content type, links...)
    request = getattr(response, "_request_info", None)
    if isinstance(request, aiohttp.RequestInfo):
        response._request_info = aiohttp.RequestInfo(
            request.url, request.method, _NO_HEADERS, request.real_url
        )
    protocol: Any = getattr(response, "_protocol", None)
    if getattr(protocol, "upgraded", False) and hasattr(protocol, "_parser"):
        protocol._parser = None  # frames go to the WebSocket reader from now on


def count_handshake(target: Target, result: str) -> None:
    """Count a handshake's outcome (`nbwss_handshakes_total`)."""
    HANDSHAKES.labels(group=target.group_id, host=target.host_name, result=result).inc()
