"""Throw-away TLS files for a benchmark endpoint served from a child process."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True, slots=True)
class ServerFiles:
    cert_file: Path
    key_file: Path
    der: bytes  # the certificate the daemon pins


def write_server_cert(directory: Path) -> ServerFiles:
    """A certificate for 127.0.0.1/localhost from a fresh CA, written as PEM files."""
    leaf = trustme.CA().issue_cert("127.0.0.1", "localhost")
    files = ServerFiles(
        directory / "cert.pem",
        directory / "key.pem",
        ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode()),
    )
    leaf.cert_chain_pems[0].write_to_path(str(files.cert_file))
    leaf.private_key_pem.write_to_path(str(files.key_file))
    return files
