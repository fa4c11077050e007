"""Tokens encrypted at rest: AES-256-GCM with a key kept in its own 0600 file.

The key lives apart from the database (beside it, or in systemd's credentials
directory), so a copy of the database alone reveals no token. Each ciphertext is bound
to its endpoint's host name (associated data), so rows cannot be swapped.

`cryptography` is imported when a vault is first made, not with this module: `nbwss
notify`, started once per event, opens the store but never a token.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path

from nbwss.errors import MSG_KEYSTORE, StoreError

_KEY_BYTES = 32
_NONCE_BYTES = 12


def make_private_dirs(directory: Path) -> None:
    """Create `directory` and its missing parents, each 0700 whatever the umask (under
    `umask 000`, `mkdir(parents=True)` would leave the parents world-writable). A
    directory that exists already is left as its admin made it."""
    missing = []
    current = directory
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue  # another process made it at the same moment
        os.chmod(path, 0o700)


def create_private_file(path: Path, data: bytes) -> None:
    """Write a new file readable by its owner only; never widen or replace an existing one.

    The file appears whole or not at all: the data is written and synced under a
    temporary name, then hard-linked to `path`. Two processes creating it at once both
    succeed in writing; the link of one fails with FileExistsError, and that one reads the
    winner's complete file (with O_EXCL on `path` itself it could read it empty).
    """
    import tempfile  # only to create a file: `nbwss notify` opens existing ones

    make_private_dirs(path.parent)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, path)
    finally:
        os.unlink(temporary)
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Make the new name durable; a file system that cannot sync a directory is let be."""
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class TokenVault:
    """Encrypts and decrypts endpoint tokens with the key at `key_path` (made on first use)."""

    def __init__(self, key_path: Path) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(self._load_or_create(key_path))

    @staticmethod
    def _load_or_create(key_path: Path) -> bytes:
        try:
            key = key_path.read_bytes()
        except FileNotFoundError:
            key = os.urandom(_KEY_BYTES)  # what AESGCM.generate_key does
            try:
                create_private_file(key_path, key)
            except FileExistsError:
                key = key_path.read_bytes()  # another process made it first: use theirs
            except OSError as exc:
                raise StoreError(
                    f"{MSG_KEYSTORE}: cannot create {key_path}: {exc.strerror}"
                ) from None
        except OSError as exc:
            raise StoreError(f"{MSG_KEYSTORE}: cannot read {key_path}: {exc.strerror}") from None
        if len(key) != _KEY_BYTES:
            raise StoreError(f"{MSG_KEYSTORE}: {key_path} is not a {_KEY_BYTES}-byte key")
        return key

    def encrypt(self, token: str, host_name: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, token.encode(), host_name.encode())

    def decrypt(self, sealed: bytes, host_name: str) -> str:
        from cryptography.exceptions import InvalidTag

        try:
            plain = self._aead.decrypt(
                sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], host_name.encode()
            )
        except (InvalidTag, ValueError):
            raise StoreError(
                f"{MSG_KEYSTORE}: the token of {host_name} cannot be decrypted with this key"
            ) from None
        return plain.decode()
