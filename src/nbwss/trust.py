"""Pinned TLS: fingerprints and SSL contexts that trust exactly one certificate.

The guide's trust store holds, per endpoint, the certificate the admin accepted. The
daemon trusts that certificate and nothing else: not the system CAs, not another
certificate from the same CA. The host name is still checked.
"""

from __future__ import annotations

import hashlib
import ssl

from nbwss.errors import MSG_CERT_MISMATCH, TrustError

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
