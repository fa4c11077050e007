"""The chaos soak: its accounting (pure), and a short run of the real thing for CI.

The short run is `bench/soak.py` as a person runs it, a subprocess: the real daemon
(`nbwss run`), real endpoints behind fault proxies, `nbwss notify -` for intake, and
random faults every second. It must end with nothing lost and nothing out of order.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench import soak

from tests.conftest import timeout

SOAK_PATH = Path(__file__).resolve().parents[1] / "bench" / "soak.py"


def _ledger(queued: list[int], arrivals: list[int]) -> Any:
    ledger = soak.Ledger()
    for tag in queued:
        ledger.queue(tag, now=100.0)
    for index, tag in enumerate(arrivals):
        ledger.arrive("G", tag, now=101.0 + index)
    return ledger


def test_in_order_delivery_counts_nothing_wrong() -> None:
    figures = _ledger([1, 2, 3], [1, 2, 3]).figures("G")
    assert (figures.received, figures.lost, figures.out_of_order, figures.duplicates) == (
        3, 0, 0, 0,
    )
    assert figures.delays_s == (1.0, 2.0, 3.0)


def test_a_missing_tag_is_lost_not_out_of_order() -> None:
    figures = _ledger([1, 2, 3, 4], [1, 3, 4]).figures("G")
    assert (figures.lost, figures.out_of_order) == (1, 0)


def test_a_late_first_arrival_is_out_of_order() -> None:
    figures = _ledger([1, 2, 3, 4], [1, 3, 2, 4]).figures("G")
    assert (figures.lost, figures.out_of_order) == (0, 1)


def test_resends_count_as_duplicates_and_keep_the_first_arrival_time() -> None:
    figures = _ledger([1, 2], [1, 2, 1, 2, 2]).figures("G")
    assert (figures.out_of_order, figures.duplicates) == (0, 3)
    assert figures.delays_s == (1.0, 2.0)


def test_a_tag_never_queued_is_unexpected() -> None:
    assert _ledger([1], [1, 99]).figures("G").unexpected == 1


def test_complete_needs_every_queued_tag_per_group() -> None:
    ledger = _ledger([1, 2], [1])
    assert not ledger.complete("G")
    ledger.arrive("G", 2, now=110.0)
    assert ledger.complete("G")
    assert not ledger.complete("OTHER")


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert soak.percentile(values, 0.99) == 99.0
    assert soak.percentile(values, 0.5) == 50.0
    assert soak.percentile([], 0.99) == 0.0


@pytest.mark.slow
@pytest.mark.timeout(600)  # the run is bounded by its own flags; this only catches a hang
def test_short_chaos_soak_loses_nothing(tmp_path: Path) -> None:
    """About a minute of the real daemon under random faults (the CI version of the soak)."""
    done = subprocess.run(
        [sys.executable, str(SOAK_PATH), "--seconds", "40", "--fault-every", "1",
         "--seed", "2026", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=timeout(400), check=False,
    )
    report = json.loads((tmp_path / "report.json").read_text())
    daemon_log = (tmp_path / "daemon.log").read_text().splitlines()
    shown = "\n".join([done.stdout, done.stderr[-3000:], *daemon_log[-40:]])
    assert done.returncode == 0, shown
    assert report["lost"] == 0, shown
    assert report["out_of_order"] == 0, shown
    assert report["events_queued"] >= 25, shown
    assert len(report["faults"]) == 9, shown  # every kind of fault came up
    assert report["commands_answered"] > 0, shown
    assert "events queued:" in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_soak_fails_when_an_endpoint_loses_messages(tmp_path: Path) -> None:
    """The harness is not vacuous: endpoints that ack but forget make it fail."""
    done = subprocess.run(
        [sys.executable, str(SOAK_PATH), "--seconds", "6", "--fault-every", "1000",
         "--lose-every", "3", "--drain", "3", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=timeout(200), check=False,
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert report["lost"] > 0
    assert "result:              FAIL" in done.stdout
