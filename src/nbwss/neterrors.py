"""One line about a network failure, fit for an admin and safe to log.

aiohttp's own messages embed object reprs (`ssl:<ssl.SSLContext object at 0x...>`);
these say what happened and where, and never carry what was sent. Through an outbound
proxy, a failure of the proxy names the proxy (never its credentials).
"""

from __future__ import annotations

import aiohttp

from nbwss import outbound
from nbwss.outbound import Proxy


def describe(exc: BaseException, proxy: Proxy | None = None) -> str:
    if proxy is not None:
        through_proxy = _describe_proxy_failure(exc, proxy)
        if through_proxy is not None:
            return through_proxy
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"its TLS certificate is not trusted ({exc.certificate_error})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port} ({_os_reason(exc)})"
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"the server refused the WebSocket upgrade (HTTP {exc.status})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _describe_proxy_failure(exc: BaseException, proxy: Proxy) -> str | None:
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return outbound.refused(proxy, exc.status, exc.message)
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return outbound.unreachable(proxy, exc.os_error)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return outbound.no_answer(proxy, tunnel_known=False)
    return None


def _os_reason(exc: aiohttp.ClientConnectorError) -> str:
    return exc.os_error.strerror or type(exc.os_error).__name__
