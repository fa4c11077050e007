"""Throw-away TLS for a development endpoint: a private CA and one server certificate.

The daemon pins the endpoint's certificate (`nbwss endpoint add` shows its SHA-256
fingerprint), so a self-signed set-up is as safe as a CA-issued one for development;
production endpoints use their real certificate with `--cert` and `--key`, which needs
nothing beyond a base install; throw-away certificates need the demo extra (`trustme`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from nbwss.errors import NbwssError
from nbwss.extras import require_demo_extra
from nbwss.trust import fingerprint


@dataclass(frozen=True, slots=True)
class SelfSigned:
    """A server context, the CA that issued it, and the certificate's fingerprint."""

    server_context: ssl.SSLContext
    ca_pem: bytes
    certificate_der: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate_der)

    def client_context(self) -> ssl.SSLContext:
        """A client context trusting the throw-away CA (for tests and tools, not the daemon)."""
        return ssl.create_default_context(cadata=self.ca_pem.decode())


def self_signed(*names: str) -> SelfSigned:
    """A fresh CA and a certificate for `names` (default: localhost and 127.0.0.1)."""
    require_demo_extra("--self-signed")
    import trustme  # the demo extra, loaded only here: `--cert`/`--key` do without it

    ca = trustme.CA()
    leaf = ca.issue_cert(*(names or ("localhost", "127.0.0.1")))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    leaf.configure_cert(context)
    leaf_pem: bytes = leaf.cert_chain_pems[0].bytes()
    return SelfSigned(
        server_context=context,
        ca_pem=ca.cert_pem.bytes(),
        certificate_der=ssl.PEM_cert_to_DER_cert(leaf_pem.decode()),
    )


def load_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context from a PEM certificate chain and its key; `NbwssError`
    naming both files when they do not load (one error line, not a traceback)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise NbwssError(f"cannot load {cert} / {key}: {exc}") from None
    return context
