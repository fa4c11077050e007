"""`nbwss doctor` and the key check at `nbwss run`'s start, through the real command.

The set-up is real: a SQLite store with an endpoint whose token is sealed with one key,
a unit file as `nbwss service install` writes it, the stand-in NetBackup REST API over
HTTPS, and an endpoint server (`tests.peers`) presenting its certificate.
"""

from __future__ import annotations

import os
from pathlib import Path

from nbwss.standin.restapi import StandinApi
from nbwss.store import Store
from tests.conftest import TlsMaterial, make_tls
from tests.peers import Peer, add_endpoint
from tests.test_admin import nbwss


def write_config(short_dir: Path, base_url: str, tls: TlsMaterial, *, key: str = "nbwss.key",
                 password: str = "secret") -> Path:  # noqa: S107 - the stand-in's
    (short_dir / "password").write_text(password)
    (short_dir / "password").chmod(0o600)
    config = short_dir / "nbwss.properties"
    config.write_text(
        f"store.path={short_dir / 'nbwss.db'}\nstore.keyFile={short_dir / key}\n"
        f"restApi.baseUrl={base_url}\nrestApi.caFile={tls.ca_file}\n"
        f"restApi.userName=admin\nrestApi.passwordFile={short_dir / 'password'}\n"
    )
    config.chmod(0o644)
    return config


def write_unit(short_dir: Path, config: Path, key: Path) -> Path:
    unit = short_dir / "nbwss.service"
    unit.write_text(
        "[Service]\nType=notify\nExecStart=/usr/bin/nbwss run\nUser=root\n"
        f"Environment=NBWSS_CONFIG={config}\nStateDirectory=nbwss\n"
        f"LoadCredential=nbwss.key:{key}\n"
    )
    return unit


async def test_doctor_passes_a_sound_set_up_and_names_each_fault(
    tls: TlsMaterial, short_store: Store, short_dir: Path, standin: tuple[StandinApi, str]
) -> None:
    _, base_url = standin
    config = write_config(short_dir, base_url, tls)
    async with Peer(tls.server_cert) as peer:
        add_endpoint(short_store, peer, "ep1.test")
        unit = write_unit(short_dir, config, short_dir / "nbwss.key")
        sound = await nbwss(config, "doctor", "--unit", str(unit))
        assert sound.code == 0, sound.out + sound.err
        assert sound.out.endswith("nothing to fix\n")
        assert "ok       REST API credentials: accepted\n" in sound.out
        assert "ok       endpoint ep1.test: presents its pinned certificate" in sound.out
        assert "ok       tokens: 1 endpoint token(s) open with the key" in sound.out

        other = short_dir / "other.key"
        other.write_bytes(os.urandom(32))
        unit = write_unit(short_dir, config, other)
        write_config(short_dir, base_url, tls, password="wrong")
        await peer.stop()
        await peer.start(make_tls(short_dir).server_cert)  # a renewed certificate
        faulty = await nbwss(config, "doctor", "--unit", str(unit))
    assert faulty.code == 1
    lines = faulty.out.splitlines()
    assert f"FAIL     key: the daemon gets the key {other} (LoadCredential=), the admin " \
           f"commands read {short_dir / 'nbwss.key'}" in lines
    assert f"         fix: set store.keyFile={other} in {config}" in lines
    assert "FAIL     REST API credentials: POST /login: login refused (HTTP 401, NetBackup " \
           "error 8961: The user name, password or API Key is wrong.)" in lines
    assert any(line.startswith("FAIL     endpoint ep1.test: presents ") for line in lines)
    assert lines[-1] == "3 problem(s) to fix"


async def test_nbwss_run_stops_at_once_when_a_token_does_not_open_with_its_key(
    tls: TlsMaterial, short_store: Store, short_dir: Path
) -> None:
    add_endpoint(short_store, Peer(tls.server_cert), "ep1.test")
    (short_dir / "other.key").write_bytes(os.urandom(32))
    config = short_dir / "run.properties"
    config.write_text(f"store.path={short_dir / 'nbwss.db'}\n"
                      f"store.keyFile={short_dir / 'other.key'}\n")
    result = await nbwss(config, "run")
    assert result.code == 1
    assert result.err == (
        f"nbwss: error: the token of ep1.test in the store {short_dir / 'nbwss.db'} cannot be "
        f"decrypted with the key {short_dir / 'other.key'}: the admin commands and the "
        "daemon use different keys; point store.keyFile (or LoadCredential=) at the key the "
        "tokens were sealed with ('nbwss doctor' compares them)\n"
    )

    config.write_text(f"store.path={short_dir / 'nbwss.db'}\n"
                      f"store.keyFile={short_dir / 'missing.key'}\n")
    missing = await nbwss(config, "run")
    assert missing.code == 1
    assert missing.err.startswith(f"nbwss: error: the key {short_dir / 'missing.key'} does not "
                                  "exist, but the store")
    assert not (short_dir / "missing.key").exists()
