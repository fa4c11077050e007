"""`nbwss notify -` streams: its memory does not grow with the number of lines (issue 14,
item 4) nor with their size. Peak RSS of the real command, read by the benchmarks'
launcher (a child's high-water mark must not start from this test process's), and
peak traced memory of `queue_lines`, the command's path."""

from __future__ import annotations

import json
import os
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.limits import run_process

from nbwss.commands.notify import queue_lines
from nbwss.store import Store

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


@pytest.mark.parametrize("character", ["x", "é", "\U0001f600"], ids=["ascii", "latin", "emoji"])
def test_notify_stdin_memory_is_flat_in_the_size_of_the_lines(
    character: str, tmp_path: Path
) -> None:
    """200 lines of 256 Ki characters: the spool's batches end at 1 MiB of memory, not
    only at 1,000 rows (which held all 200 lines, more than 50 MiB traced), counted in
    bytes (a str of emoji takes 4 a character), and the previous batch is let go of
    while the next is built."""
    store = Store(tmp_path / "nbwss.db", tmp_path / "nbwss.key")
    data = {**JOB, "jobId": 1, "note": character * (256 << 10)}
    line = json.dumps({"object": "JOB", "data": data}, ensure_ascii=False)

    def lines() -> Iterator[str]:
        for _ in range(200):
            yield line

    tracemalloc.start()
    try:
        queued = queue_lines(store, lines(), 16 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        store.close()
    assert queued.count == 200
    assert peak < 8 << 20, f"peak traced {peak / 2**20:.1f} MiB"
