"""One line about a network failure, fit for an admin and safe to log.

aiohttp's own messages embed object reprs (`ssl:<ssl.SSLContext object at 0x...>`);
these say what happened and where, and never carry what was sent.
"""

from __future__ import annotations

import aiohttp


def describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"its TLS certificate is not trusted ({exc.certificate_error})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        return f"cannot connect to {exc.host}:{exc.port} ({reason})"
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"the server refused the WebSocket upgrade (HTTP {exc.status})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
