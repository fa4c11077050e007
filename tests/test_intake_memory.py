"""`nbwss notify -` streams: its memory does not grow with the number of lines (issue 14,
item 4). Peak RSS of the real command, read by the benchmarks' launcher (a child's
high-water mark must not start from this test process's)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from bench.limits import run_process

JOB = {
    "scheduleType": "ST_FULL", "clientName": "c1", "status": 0, "startTime": 1459829698,
    "state": "DONE", "policyName": "p", "parentJobId": 1, "policyType": "VMWARE",
    "jobType": "BACKUP", "note": "x" * 200,
}  # fmt: skip


def peak_rss_kib(directory: Path, count: int) -> int:
    directory.mkdir()
    config = directory / "nbwss.properties"
    config.write_text(f"store.path={directory / 'nbwss.db'}\nlog.level=warning\n")
    stdin = "".join(
        json.dumps({"object": "JOB", "data": {**JOB, "jobId": n}}) + "\n" for n in range(count)
    ).encode()
    argv = [sys.executable, "-m", "nbwss", "-c", str(config), "notify", "-"]
    return run_process(argv, stdin, dict(os.environ)).max_rss_kib


def test_notify_stdin_memory_is_flat_in_the_number_of_lines(tmp_path: Path) -> None:
    small = peak_rss_kib(tmp_path / "small", 2_000)
    large = peak_rss_kib(tmp_path / "large", 40_000)  # about 20 MiB of rows if held
    assert large - small < 6 * 1024, (small, large)
