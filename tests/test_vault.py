"""Token sealing: AES-GCM with a private key file, bound to the endpoint's host name."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from nbwss.errors import MSG_KEYSTORE, StoreError
from nbwss.vault import TokenVault, create_private_file

TOKEN = "MIID4TCC-the-endpoints-secret-token=="


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_key_is_made_on_first_use_private_and_reused(tmp_path: Path) -> None:
    key_path = tmp_path / "new" / "nbwss.key"
    sealed = TokenVault(key_path).encrypt(TOKEN, "h1")
    assert mode(key_path) == 0o600
    assert mode(key_path.parent) == 0o700
    assert len(key_path.read_bytes()) == 32
    assert TokenVault(key_path).decrypt(sealed, "h1") == TOKEN  # a second process, same key


def test_sealing_hides_the_token_and_is_randomised(tmp_path: Path) -> None:
    vault = TokenVault(tmp_path / "k")
    first, second = vault.encrypt(TOKEN, "h1"), vault.encrypt(TOKEN, "h1")
    assert first != second
    assert TOKEN.encode() not in first
    assert vault.decrypt(second, "h1") == TOKEN


def test_non_ascii_tokens_survive(tmp_path: Path) -> None:
    vault = TokenVault(tmp_path / "k")
    assert vault.decrypt(vault.encrypt("jéton-ü-\U0001f600", "hé"), "hé") == "jéton-ü-\U0001f600"


def test_a_sealed_token_is_bound_to_its_host(tmp_path: Path) -> None:
    vault = TokenVault(tmp_path / "k")
    sealed = vault.encrypt(TOKEN, "h1")
    with pytest.raises(StoreError, match=f"^{MSG_KEYSTORE}: the token of h2 cannot be decrypted"):
        vault.decrypt(sealed, "h2")


@pytest.mark.parametrize(
    "damage",
    [
        lambda sealed: sealed[:-1] + bytes([sealed[-1] ^ 1]),
        lambda sealed: sealed[:11],
        lambda sealed: b"",
        lambda sealed: bytes([sealed[0] ^ 1]) + sealed[1:],
    ],
    ids=["flipped-tag", "shorter-than-a-nonce", "empty", "flipped-nonce"],
)
def test_damaged_ciphertext_is_a_store_error(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    vault = TokenVault(tmp_path / "k")
    sealed = vault.encrypt(TOKEN, "h1")
    with pytest.raises(StoreError, match=MSG_KEYSTORE):
        vault.decrypt(damage(sealed), "h1")


def test_another_key_cannot_open_the_token(tmp_path: Path) -> None:
    sealed = TokenVault(tmp_path / "a.key").encrypt(TOKEN, "h1")
    with pytest.raises(StoreError, match="cannot be decrypted with this key"):
        TokenVault(tmp_path / "b.key").decrypt(sealed, "h1")


def test_a_key_file_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    key_path = tmp_path / "nbwss.key"
    key_path.write_bytes(b"short")
    with pytest.raises(StoreError, match=f"^{MSG_KEYSTORE}: .* is not a 32-byte key$"):
        TokenVault(key_path)


def test_an_unreadable_key_is_a_store_error(tmp_path: Path) -> None:
    key_path = tmp_path / "nbwss.key"
    key_path.mkdir()
    with pytest.raises(StoreError, match=f"^{MSG_KEYSTORE}: cannot read "):
        TokenVault(key_path)


def test_a_key_that_cannot_be_created_is_a_store_error() -> None:
    # /proc refuses new directories even to root, where permission bits would not.
    with pytest.raises(StoreError, match=f"^{MSG_KEYSTORE}: cannot create /proc/"):
        TokenVault(Path("/proc/nbwss-no-such-dir/nbwss.key"))


def test_private_files_are_never_overwritten_or_widened(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    create_private_file(path, b"one")
    assert mode(path) == 0o600
    with pytest.raises(FileExistsError):
        create_private_file(path, b"two")
    assert path.read_bytes() == b"one"
