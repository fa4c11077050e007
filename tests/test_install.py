"""`nbwss service install|uninstall` into a tree, as a packager (or a careful admin) runs
it, checked file by file; systemd's own `systemd-analyze verify` judges the unit it lays
down; and the package builds as a wheel that carries the unit and the sample file."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from nbwss.properties import settings_from_text
from tests.conftest import timeout
from tests.test_systemd_unit import systemd_analyze

ROOT = Path(__file__).resolve().parent.parent


def nbwss(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nbwss", *argv], capture_output=True,
                          text=True, timeout=timeout(60), check=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    result = nbwss("service", "install", "--root", str(root))
    assert result.returncode == 0, result.stderr
    return root


def test_install_lays_out_the_tree(tree: Path) -> None:
    assert mode(tree / "etc/nbwss") == 0o755
    assert mode(tree / "etc/nbwss/nbwss.key") == 0o640
    assert len((tree / "etc/nbwss/nbwss.key").read_bytes()) == 32
    assert mode(tree / "var/lib/nbwss") == 0o700
    assert mode(tree / "etc/systemd/system/nbwss.service") == 0o644
    assert (tree / "usr/lib/sysusers.d/nbwss.conf").read_text().startswith("u nbwss - ")
    properties = tree / "etc/nbwss/nbwss.properties"
    settings = settings_from_text(properties.read_text())
    # The admin commands and the daemon agree on the database and the key.
    assert settings.store_path == Path("/var/lib/nbwss/nbwss.db")
    assert settings.key_path == Path("/etc/nbwss/nbwss.key")
    unit = (tree / "etc/systemd/system/nbwss.service").read_text()
    assert f"\nExecStart={Path(sys.executable).with_name('nbwss')} run\n" in unit
    assert "\nLoadCredential=nbwss.key:/etc/nbwss/nbwss.key\n" in unit


def test_systemd_analyze_verify_accepts_the_installed_unit(tree: Path) -> None:
    result = subprocess.run(
        [systemd_analyze(), "verify", str(tree / "etc/systemd/system/nbwss.service")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_a_changed_unit_is_not_overwritten_without_force_and_the_key_never(tree: Path) -> None:
    unit = tree / "etc/systemd/system/nbwss.service"
    key = (tree / "etc/nbwss/nbwss.key").read_bytes()
    again = nbwss("service", "install", "--root", str(tree))
    assert again.returncode == 0
    changes = [line for line in again.stdout.splitlines() if line.startswith(("wrote", "created"))]
    assert changes == [], again.stdout

    unit.write_text(unit.read_text() + "Nice=5\n")
    refused = nbwss("service", "install", "--root", str(tree))
    assert refused.returncode == 1
    assert refused.stderr == (
        f"nbwss: error: {unit} changed since it was installed; not overwriting it without "
        "--force (use a drop-in, 'systemctl edit nbwss', to change the unit)\n")
    assert unit.read_text().endswith("Nice=5\n")

    forced = nbwss("service", "install", "--root", str(tree), "--force")
    assert forced.returncode == 0
    assert f"wrote {unit} (mode 0644, root:root)" in forced.stdout
    assert not unit.read_text().endswith("Nice=5\n")
    assert (tree / "etc/nbwss/nbwss.key").read_bytes() == key


def test_dry_run_shows_the_plan_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = nbwss("service", "install", "--root", str(root), "--dry-run")
    assert result.returncode == 0
    assert f"would write {root}/etc/systemd/system/nbwss.service" in result.stdout
    assert f"would create {root}/var/lib/nbwss (mode 0700, nbwss)" in result.stdout
    assert not root.exists()


def test_uninstall_keeps_the_data_unless_purged(tree: Path) -> None:
    kept = nbwss("service", "uninstall", "--root", str(tree))
    assert kept.returncode == 0
    assert not (tree / "etc/systemd/system/nbwss.service").exists()
    assert (tree / "etc/nbwss/nbwss.key").exists()
    assert (tree / "var/lib/nbwss").is_dir()
    assert "(--purge removes them)" in kept.stdout
    purged = nbwss("service", "uninstall", "--root", str(tree), "--purge")
    assert purged.returncode == 0
    assert not (tree / "etc/nbwss").exists()
    assert not (tree / "var/lib/nbwss").exists()


def test_the_wheel_carries_the_unit_and_the_sample_as_files(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info
    for name in ("src", "config", "systemd"):
        shutil.copytree(ROOT / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
         str(source)],
        capture_output=True, text=True, timeout=timeout(300), check=True,
    )
    [wheel] = (tmp_path / "dist").glob("nbwss-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        unit = archive.read("nbwss/data/nbwss.service").decode()
        sample = archive.read("nbwss/data/nbwss.properties").decode()
    assert unit == (ROOT / "systemd/nbwss.service").read_text()
    assert sample == (ROOT / "config/nbwss.properties").read_text()
