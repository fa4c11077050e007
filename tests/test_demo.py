"""`nbwss demo` as a newcomer runs it: one command, exit 0, a summary that adds up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import timeout


def test_demo_runs_the_whole_flow_and_loses_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nbwss", "demo", "--keep"],
        capture_output=True, text=True, timeout=timeout(120), check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "notifications delivered: 13 of 13, in " in out
    assert "at most one element per object type" in out
    assert "result: OK, nothing lost" in out
    # The story's key moments were on the wire, in this order.
    moments = [
        "[endpoint-1] CONNECT accepted",
        "step A: job 144 BACKUP ACTIVE",
        "step G: job 144 BACKUP DONE",
        ": JOB x1, IMAGE x2",  # the notify script's job and images: one message, two elements
        "COMMAND POST /netbackup/login -> local REST API 201",
        "COMMAND GET /netbackup/config/servers/vmservers/vcenterServer1 -> local REST API 200",
        "CONNECT accepted by endpoint-2.demo",
        "AGAIN, same id",
        "IMAGE DELETE",
    ]
    positions = [out.find(moment) for moment in moments]
    assert -1 not in positions, dict(zip(moments, positions, strict=True))
    assert positions == sorted(positions)
    assert "failovers: 1" in out
    assert "commands answered: 3" in out
    # --keep keeps the state; the token never reaches the output.
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("nbwss-demo-")]
    assert len(kept) == 1
    assert (kept[0] / "state" / "nbwss.db").exists()
    assert "demo-token-" not in out + result.stderr
    assert result.stderr == ""
