"""Pinned TLS: fetch what a server presents, fingerprints, contexts that trust one certificate.

The guide's trust store holds, per endpoint, the certificate the admin accepted. The
daemon trusts that certificate and nothing else: not the system CAs, not another
certificate from the same CA. The host name is still checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import ssl
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509

from nbwss import outbound
from nbwss.errors import MSG_CERT_MISMATCH, MSG_NO_SSL, TrustError, unable_to_connect
from nbwss.outbound import Proxy

_HEX = set("0123456789ABCDEF")


def fingerprint(certificate_der: bytes) -> str:
    """SHA-256 of the DER certificate as upper-case hex pairs joined by colons."""
    digest = hashlib.sha256(certificate_der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def normalize_fingerprint(text: str) -> str:
    """Accept hex with or without colons (or spaces), any case; return `fingerprint` form."""
    compact = "".join(c for c in text.strip().upper() if c not in ": ")
    if compact.startswith("SHA256"):
        compact = compact.removeprefix("SHA256").lstrip("=")
    if len(compact) != 64 or not set(compact) <= _HEX:
        raise TrustError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits)")
    return ":".join(compact[i : i + 2] for i in range(0, 64, 2))


def pinned_context(certificate_der: bytes) -> ssl.SSLContext:
    """A client context whose only trust anchor is the pinned certificate.

    VERIFY_X509_PARTIAL_CHAIN lets a CA-issued leaf be its own anchor, so the issuing
    CA is not trusted for anything else. `check_peer` closes the last gap: a pinned
    certificate that is itself a CA would otherwise vouch for others.
    """
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cadata=ssl.DER_cert_to_PEM_cert(certificate_der)
    )
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.check_hostname = True
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def check_peer(presented_der: bytes | None, pinned_der: bytes, host: str) -> None:
    """After the handshake: the server must have presented exactly the pinned certificate."""
    if presented_der != pinned_der:
        raise TrustError(f"{MSG_CERT_MISMATCH}: {host} presented another certificate")


# -- what a server presents (for `endpoint validate` and `add`) ------------------------------


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """The server certificate as an admin judges it; `der` is what gets pinned."""

    subject: str
    issuer: str
    sans: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    fingerprint: str
    der: bytes

    def is_valid_at(self, now: datetime) -> bool:
        return self.not_before <= now <= self.not_after

    def names_host(self, host: str) -> bool:
        """Whether the daemon's host-name check would accept this certificate for `host`."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is not None:
            return f"IP:{address}" in self.sans
        dns_names = [san.removeprefix("DNS:") for san in self.sans if san.startswith("DNS:")]
        return any(_dns_name_matches(pattern, host) for pattern in dns_names)

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "subjectAltNames": list(self.sans),
            "notBefore": self.not_before.isoformat(),
            "notAfter": self.not_after.isoformat(),
            "sha256": self.fingerprint,
        }


def _dns_name_matches(pattern: str, host: str) -> bool:
    """RFC 6125: case-insensitive; a wildcard only as the whole left-most label."""
    pattern_labels = pattern.lower().rstrip(".").split(".")
    host_labels = host.lower().rstrip(".").split(".")
    if len(pattern_labels) != len(host_labels):
        return False
    if pattern_labels[0] == "*" and len(pattern_labels) > 2:
        return pattern_labels[1:] == host_labels[1:]
    return pattern_labels == host_labels


def _san_text(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    return f"{type(name).__name__}:{name.value}"


def certificate_info(der: bytes) -> CertificateInfo:
    """Parse a DER certificate; a server sending garbage is 'no certificate'."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise TrustError(f"{MSG_NO_SSL}: the server's certificate cannot be parsed") from None
    try:
        san_extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        sans = tuple(_san_text(name) for name in san_extension.value)
    except x509.ExtensionNotFound:
        sans = ()
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=sans,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint=fingerprint(der),
        der=der,
    )


def _inspection_context() -> ssl.SSLContext:
    # Deliberately unverified: we only look at what the server presents; the admin decides,
    # and from then on the daemon trusts exactly that certificate (`pinned_context`).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def fetch_certificate(
    host: str, port: int, timeout_s: float, proxy: Proxy | None = None
) -> CertificateInfo:
    """Connect to `host:port` (through `proxy`'s CONNECT tunnel when given), complete a
    TLS handshake, and return the server certificate.

    The TCP connect and the handshake are timed separately so the error says which failed:
    no connection is the guide's "Unable to establish connection", a peer that does not
    complete TLS (not a TLS server, or silent) is "Failed to set up SSL security".
    """
    if proxy is None:
        try:
            async with asyncio.timeout(timeout_s):
                _reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            raise TrustError(f"{unable_to_connect(host)} (port {port}: {_os_reason(exc)})") \
                from None
    else:
        writer = await _open_tunnel(proxy, host, port, timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            await writer.start_tls(_inspection_context(), server_hostname=host)
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    except (OSError, TimeoutError, EOFError) as exc:
        writer.transport.abort()  # nothing worth a polite close: the handshake failed
        reason = "timed out" if isinstance(exc, TimeoutError) else _ssl_reason(exc)
        raise TrustError(
            f"{MSG_NO_SSL}: TLS handshake with {host}:{port} failed ({reason})"
        ) from None
    await _close_quietly(writer)
    if not der:
        raise TrustError(f"{MSG_NO_SSL}: {host}:{port} presented no certificate")
    return certificate_info(der)


async def _open_tunnel(
    proxy: Proxy, host: str, port: int, timeout_s: float
) -> asyncio.StreamWriter:
    """A CONNECT tunnel to `host:port` through `proxy`; the proxy's refusal in one line.

    aiohttp makes the daemon's tunnels; this one is made by hand because `validate` looks
    at the TLS handshake alone, before any HTTP request could be sent."""
    where = unable_to_connect(host)
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    except (OSError, TimeoutError) as exc:
        raise TrustError(f"{where}: {outbound.unreachable(proxy, exc)}") from None
    try:
        async with asyncio.timeout(timeout_s):
            writer.write(outbound.connect_request(proxy, host, port))
            head = await reader.readuntil(b"\r\n\r\n")
        status, reason = outbound.parse_connect_reply(head)
    except (asyncio.IncompleteReadError, ConnectionError):
        why = outbound.no_answer(proxy)
    except TimeoutError:
        why = f"proxy {proxy.url} did not answer CONNECT in {timeout_s:g} s"
    except (ValueError, asyncio.LimitOverrunError) as exc:
        why = f"proxy {proxy.url} answered CONNECT with something other than HTTP ({exc})"
    else:
        if 200 <= status < 300:  # RFC 9110 9.3.6: any 2xx switches to the tunnel
            return writer
        why = outbound.refused(proxy, status, reason)
    writer.transport.abort()
    raise TrustError(f"{where}: {why}")


def _os_reason(exc: OSError | TimeoutError) -> str:
    return "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__


async def _close_quietly(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
