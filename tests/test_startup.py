"""What `nbwss notify` loads: NetBackup's scripts start it once per event, so every module
it imports is paid for on every job state change. The daemon's libraries stay out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import timeout

HEAVY = ("asyncio", "aiohttp", "structlog", "cryptography", "ssl", "prometheus_client",
         "tenacity", "logging",
         "dataclasses")  # with `inspect`, a tenth of a notify's wall time (issue 14)  # fmt: skip

# Runs `nbwss ARGS...` in a fresh interpreter, then prints which heavy packages it loaded.
PROBE = f"""
import json, sys
from nbwss.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
loaded = sorted({{name.split(".")[0] for name in sys.modules}} & {set(HEAVY)!r})
print(json.dumps({{"code": code, "loaded": loaded}}))
"""

JOB = {
    "scheduleType": "ST_FULL", "clientName": "c1", "status": 0, "startTime": 1459829698,
    "state": "DONE", "policyName": "p", "parentJobId": 1, "jobId": 7, "policyType": "VMWARE",
    "jobType": "BACKUP",
}  # fmt: skip


def loaded_by(tmp_path: Path, *args: str, stdin: str = "") -> dict[str, object]:
    config = tmp_path / "nbwss.properties"
    config.write_text(f"store.path={tmp_path / 'nbwss.db'}\n")
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "-c", str(config), *args], input=stdin,
        capture_output=True, text=True, timeout=timeout(60), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return report


@pytest.mark.parametrize("source", ["--data", "stdin"])
def test_notify_imports_no_daemon_library(tmp_path: Path, source: str) -> None:
    if source == "--data":
        report = loaded_by(tmp_path, "notify", "--object", "JOB", "--data", json.dumps(JOB))
    else:
        line = json.dumps({"object": "JOB", "data": JOB}) + "\n"
        report = loaded_by(tmp_path, "notify", "-", stdin=line * 3)
    assert report == {"code": 0, "loaded": []}


def test_a_refused_notification_needs_no_daemon_library_either(tmp_path: Path) -> None:
    report = loaded_by(tmp_path, "notify", "--object", "JOB", "--data", "{}")
    assert report == {"code": 1, "loaded": []}


def test_a_log_event_still_loads_the_logger(tmp_path: Path) -> None:
    """The lazy logger is real: an unknown key in the properties file is logged (structlog)."""
    config = tmp_path / "nbwss.properties"
    report = loaded_by(tmp_path, "notify", "--object", "JOB", "--data", json.dumps(JOB))
    assert report["loaded"] == []
    config.write_text(f"store.path={tmp_path / 'nbwss.db'}\nno.such.key=1\n")
    result = subprocess.run(
        [sys.executable, "-m", "nbwss", "-c", str(config), "notify", "--object", "JOB",
         "--data", json.dumps(JOB)],
        capture_output=True, text=True, timeout=timeout(60), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "config.unknown_key" in result.stderr
    assert "no.such.key" in result.stderr
