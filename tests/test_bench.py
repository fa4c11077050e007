"""The benchmarks stay runnable: each one, tiny, through `python -m bench NAME`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import timeout

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("argv", "figure"),
    [
        (["proxy", "--calls", "20", "--rounds", "1"], "added"),
        (["poll", "--jobs", "300", "--idle-polls", "2"], "idle poll"),
        # Exit 1 says a goal was missed, which 5 groups must (fixed overhead): not a crash.
        (["connect", "--groups", "5"], "connect 5 groups vs bare connections: nbwss "),
        (["commandflood", "--commands", "12", "--size-kib", "16", "--max-queued", "4"],
         "commandflood growth vs unbounded: nbwss "),
        # Each figure beside its limit, measured in the same run, with its goal.
        (["delivery", "--events", "2000", "--groups", "2", "--group-events", "100",
          "--samples", "5", "--cli-samples", "1"], "backlog drained vs bare client, durable: "),
        (["delivery", "--events", "2000", "--profile", "/dev/null"], "top 20 by tottime"),
        # The many-groups figure beside the bare client in one process and in several,
        # its goal held to the better of the two.
        (["delivery", "--many-only", "--events", "2000", "--groups", "3", "--group-events",
          "100"], "groups, backlog drained vs the bare client's best, 1 or "),
        (["delivery", "--groups", "3", "--group-events", "100", "--profile-many", "/dev/null"],
         "top 20 by tottime"),
        (["intake", "--quick"], "notify one event, wall (median of 3): nbwss "),
        (["backlog", "--small", "500", "--repeat", "1", "--big", "2000"],
         "drain rate, backlog 2,000: nbwss "),
        (["idle", "--groups", "5", "--seconds", "1"], "5 groups idle, "),
    ],
    ids=lambda value: value[0] if isinstance(value, list) else "",
)
def test_benchmark_runs_and_prints_figures(argv: list[str], figure: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", *argv], cwd=REPO, capture_output=True, text=True,
        timeout=timeout(120), check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (0, 1)
    assert figure in result.stdout, result.stdout
