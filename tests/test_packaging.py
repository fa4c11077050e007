"""What a base install carries: the daemon and the admin commands, no demo code.

`pip install nbwss` must not bring `trustme` (the demo's throw-away CA), and neither the
daemon (`nbwss run`) nor any admin command may load `nbwss.demo`, `nbwss.standin`,
`nbwss.reference` or `trustme`; those come with `pip install 'nbwss[demo]'`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from nbwss import extras
from nbwss.store import Store
from tests.conftest import TlsMaterial, timeout
from tests.peers import Peer, add_endpoint

ROOT = Path(__file__).resolve().parent.parent
DEV_MODULES = ("trustme", "nbwss.demo", "nbwss.standin", "nbwss.reference", "nbwss.devtools")
MISSING_EXTRA = "needs the demo extra, which is not installed: pip install 'nbwss[demo]'\n"

# `nbwss ARGS...` that writes, when it exits, which of DEV_MODULES it had loaded.
PROBE = f"""
import atexit, os, sys
def loaded():
    names = sorted(m for m in sys.modules for d in {DEV_MODULES!r}
                   if m == d or m.startswith(d + "."))
    with open(os.environ["PROBE_OUT"], "a") as out:
        out.write(" ".join(["nbwss", *sys.argv[1:]]) + " => " + repr(names) + "\\n")
atexit.register(loaded)
from nbwss.cli import main
sys.exit(main(sys.argv[1:]))
"""

# `python -m MODULE ARGS...` as on a base install: `import trustme` fails.
WITHOUT_TRUSTME = """
import runpy, sys
sys.modules["trustme"] = None
module = sys.argv.pop(1)
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


# -- the daemon and the admin commands -----------------------------------------------------


async def probe(out: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", PROBE, *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PROBE_OUT": str(out), "NOTIFY_SOCKET": ""},
    )  # fmt: skip


async def finished(process: asyncio.subprocess.Process) -> int:
    async with asyncio.timeout(timeout(30)):
        return await process.wait()


@asynccontextmanager
async def running_daemon(out: Path, config: Path) -> AsyncIterator[None]:
    """`nbwss run` under the probe, stopped with SIGTERM as systemd stops it."""
    process = await probe(out, "-c", str(config), "run")
    try:
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        assert await finished(process) == 0


async def test_the_daemon_and_every_admin_command_load_no_demo_code(
    tls: TlsMaterial, short_dir: Path
) -> None:
    out = short_dir / "loaded.txt"
    config = short_dir / "nbwss.properties"
    config.write_text(f"store.path={short_dir / 'nbwss.db'}\nconnectionInfo.period=0.5\n")
    store = Store(short_dir / "nbwss.db", short_dir / "nbwss.key")
    job = json.dumps({
        "jobId": 146, "parentJobId": 145, "jobType": "BACKUP", "state": "DONE", "status": 0,
        "startTime": 1459829674, "clientName": "vm", "policyName": "p", "policyType": "VMWARE",
        "scheduleType": "ST_FULL",
    })  # fmt: skip
    admin = [
        ["--help"],  # builds the whole parser: every command's module, `demo`'s too
        ["endpoint", "list"], ["endpoint", "show", "ep1.test"], ["status"],
        ["notify", "--object", "JOB", "--data", job], ["doctor"],
        ["service", "install", "--dry-run", "--root", str(short_dir / "root")],
    ]
    try:
        async with Peer(tls.server_cert) as peer:
            add_endpoint(store, peer, "ep1.test")
            async with running_daemon(out, config):
                await peer.wait_for(lambda: peer.connected, seconds=timeout(20))
                for args in admin:
                    await finished(await probe(out, "-c", str(config), *args))
                await peer.wait_for(lambda: bool(peer.received("NOTIFICATION")),
                                    seconds=timeout(20))
    finally:
        store.close()
    lines = out.read_text().splitlines()
    assert len(lines) == len(admin) + 1  # each command and the daemon reported
    assert all(line.endswith(" => []") for line in lines), "\n".join(lines)


# -- without the extra: one line saying what to install ------------------------------------


def without_trustme(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TRUSTME, module, *args],
        capture_output=True, text=True, timeout=timeout(30), check=False,
    )  # fmt: skip


def test_nbwss_demo_without_the_extra_says_what_to_install() -> None:
    result = without_trustme("nbwss", "demo")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"nbwss: error: nbwss demo {MISSING_EXTRA}"


def test_throw_away_certificates_without_the_extra_say_what_to_install(tmp_path: Path) -> None:
    reference = without_trustme("nbwss.reference", "--token", "t0ken", "--self-signed")
    standin = without_trustme("nbwss.standin", "--self-signed",
                              "--ca-out", str(tmp_path / "ca.pem"))
    assert (reference.returncode, standin.returncode) == (1, 1)
    assert reference.stderr == f"nbwss.reference: error: --self-signed {MISSING_EXTRA}"
    assert standin.stderr == f"nbwss.standin: error: --self-signed {MISSING_EXTRA}"


@pytest.mark.parametrize(
    ("tool", "announced"),
    [
        (["nbwss.reference", "--token", "t0ken"], "listening on wss://127.0.0.1:"),
        (["nbwss.standin"], "stand-in NetBackup REST API on https://127.0.0.1:"),
    ],
)
async def test_the_tools_with_their_own_certificate_need_no_extra(
    tls: TlsMaterial, tmp_path: Path, tool: list[str], announced: str
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    tls.server_cert.cert_chain_pems[0].write_to_path(str(cert))
    tls.server_cert.private_key_pem.write_to_path(str(key))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WITHOUT_TRUSTME, *tool, "--cert", str(cert), "--key", str(key),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(timeout(30)):
            line = (await process.stdout.readline()).decode()
        assert announced in line
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout(30)):
            _, stderr = await process.communicate()
    assert (process.returncode, stderr) == (0, b"")


def test_the_demo_extra_is_what_the_code_asks_for() -> None:
    """`extras.DEMO_PACKAGES` (what the one-line error checks) and pyproject agree."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[^A-Za-z0-9_.-]", r, maxsplit=1)[0].lower()
             for r in project["optional-dependencies"]["demo"]}
    assert names == extras.DEMO_PACKAGES
    assert not any(r.lower().startswith(tuple(names)) for r in project["dependencies"])


# -- `pip install .` into a fresh virtualenv --------------------------------------------------


def _source_copy(into: Path) -> Path:
    """The project as a clone has it (no .venv, no build output), so the build is clean."""
    source = into / "nbwss-src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return source


def _installed_without(into: Path, excluded: Sequence[str]) -> Path:
    """A folder of links to this environment's packages, less `excluded` and nbwss itself:
    what PyPI would serve, offline. pip sees them as installed, so nothing is downloaded;
    a requirement that is not among them fails the install (`--no-index`)."""
    packages = into / "packages"
    packages.mkdir()
    skip = tuple(name.lower() for name in (*excluded, "nbwss", "__editable__"))
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(skip) and entry.suffix != ".pth":
            (packages / entry.name).symlink_to(entry)
    return packages


def _fresh_venv(into: Path, packages: Path) -> Path:
    venv = into / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=timeout(60))
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    (site / "packages.pth").write_text(f"{packages}\n")
    return venv


def test_pip_install_in_a_fresh_venv_brings_no_trustme(tmp_path: Path) -> None:
    source = _source_copy(tmp_path)
    venv = _fresh_venv(tmp_path, _installed_without(tmp_path, sorted(extras.DEMO_PACKAGES)))
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no index, no find-links from this machine's config
    install = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "--no-index", "--no-build-isolation",
         "--no-cache-dir", "--report", str(report), str(source)],
        capture_output=True, text=True, timeout=timeout(120), check=False, env=env,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    [installed] = json.loads(report.read_text())["install"]  # nbwss, and nothing else
    assert installed["metadata"]["name"] == "nbwss"
    # The wheel's Requires-Dist: each demo package is there, and only for the demo extra.
    demo_only = {r.split(";")[0]: r.partition(";")[2].strip()
                 for r in installed["metadata"]["requires_dist"]
                 if r.lower().startswith(tuple(extras.DEMO_PACKAGES))}
    assert len(demo_only) == len(extras.DEMO_PACKAGES)
    assert set(demo_only.values()) == {'extra == "demo"'}, demo_only
    demo = subprocess.run([venv / "bin" / "nbwss", "demo"], capture_output=True, text=True,
                          timeout=timeout(30), check=False)
    assert (demo.returncode, demo.stderr) == (1, f"nbwss: error: nbwss demo {MISSING_EXTRA}")
