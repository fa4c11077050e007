"""`python -m nbwss.standin`, run as a developer runs it: a process, its output, HTTPS."""

from __future__ import annotations

import asyncio
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.conftest import timeout


def test_help_lists_the_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nbwss.standin", "--help"],
        capture_output=True, text=True, timeout=timeout(30), check=False,
    )  # fmt: skip
    assert result.returncode == 0
    for option in ("--self-signed", "--cert", "--ca-out", "--user", "--api-key", "--port"):
        assert option in result.stdout


def test_a_bad_user_is_one_error_line_before_serving() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nbwss.standin", "--self-signed", "--user", "admin"],
        capture_output=True, text=True, timeout=timeout(30), check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == "nbwss.standin: error: --user 'admin' is not 'NAME:PASSWORD'\n"


async def test_it_serves_login_over_https_with_the_ca_it_wrote_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    ca_file = tmp_path / "ca.pem"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nbwss.standin", "--self-signed", "--ca-out", str(ca_file),
        "--user", "dev:pw1", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(timeout(30)):
            while not (line := (await process.stdout.readline()).decode()).strip().startswith(
                "restApi.baseUrl="
            ):
                assert line, "the stand-in exited early"
        base_url = line.strip().removeprefix("restApi.baseUrl=")
        assert base_url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(ca_file))
        async with aiohttp.ClientSession() as http:
            login = {"userName": "dev", "password": "pw1"}
            async with http.post(f"{base_url}/netbackup/login", json=login, ssl=context) as r:
                assert r.status == 201
            wrong = {"userName": "admin", "password": "secret"}  # not a user any more
            async with http.post(f"{base_url}/netbackup/login", json=wrong, ssl=context) as r:
                assert r.status == 401
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout(30)):
            rest, _ = await process.communicate()
    assert process.returncode == 0
    assert rest.decode().endswith("stopped\n")
