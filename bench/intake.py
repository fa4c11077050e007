"""`nbwss notify` against the least a correct intake must do, in the same run.

    .venv/bin/python -m bench intake                    # 100,000 lines; one event x 15
    .venv/bin/python -m bench intake --lines 1000000 --calls 30
    .venv/bin/python -m bench intake --quick            # tiny sizes (tests)

Two figures, each beside its limit (`bench/limit_intake.py`, a separate script run as a
process with the same interpreter: parse, check the fields, one transaction, the wake
datagram):
- one event: `nbwss notify --object JOB --data JSON`, what NetBackup's scripts run once
  per event; whole-process wall and CPU, median of `--calls` runs (interleaved with the
  limit's, so load hits both alike). The store exists already, as in production.
- stream: `nbwss notify -` of `--lines` JSON lines, process start to exit, median of
  `--runs`; and the peak RSS of one run at `--memory-lines` (flat in the number of lines
  is the goal: the input is streamed, not held).
Goals (issue 14): one event <= 2x the limit's wall time; stream <= 1.2x.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.delivery import job  # noqa: E402
from bench.limits import (  # noqa: E402
    COST,
    Goal,
    ProcessCost,
    figure,
    intake_limit_argv,
    median_cost,
    run_process,
)

BENCHMARK = True
GOAL_ONE_EVENT = Goal(2.0, higher_is_better=False)
GOAL_STREAM = Goal(1.2, higher_is_better=False)
GOAL_FLAT = Goal(1.5, higher_is_better=False)  # issue 14, item 4: memory flat in the lines
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])}
ENV.pop("NBWSS_CONFIG", None)
# Bytecode caches as an installed package has them (pip writes them): the warm-up run
# writes them, so no timed run compiles nbwss from source.
ENV.pop("PYTHONDONTWRITEBYTECODE", None)
# The console script, as NetBackup's scripts run it (`python -m` would add runpy's imports).
_SCRIPT = Path(sys.executable).with_name("nbwss")
NBWSS = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "nbwss"]


def json_lines(count: int) -> bytes:
    return "".join(
        json.dumps({"object": "JOB", "data": job(n)}) + "\n" for n in range(count)
    ).encode()


class Sides:
    """A fresh state directory for nbwss and a fresh database for the limit, both warm:
    the store exists (one event queued) and the bytecode caches are written."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.config = directory / "nbwss.properties"
        self.config.write_text(f"store.path={directory / 'nbwss.db'}\nlog.level=error\n")
        self.limit_db = directory / "limit.db"
        self.one_event(0, limit=False)
        self.one_event(0, limit=True)

    def nbwss(self, *args: str) -> list[str]:
        return [*NBWSS, "-c", str(self.config), "notify", *args]

    def one_event(self, job_id: int, *, limit: bool) -> ProcessCost:
        data = json.dumps(job(job_id))
        if limit:
            return run_process(intake_limit_argv(self.limit_db, data), b"", ENV)
        return run_process(self.nbwss("--object", "JOB", "--data", data), b"", ENV)

    def stream(self, lines: bytes, *, limit: bool) -> ProcessCost:
        argv = intake_limit_argv(self.limit_db) if limit else self.nbwss("-")
        return run_process(argv, lines, ENV)


def one_event(workdir: Path, calls: int) -> bool:
    sides = Sides(workdir / "one")
    ours, limit = [], []
    for n in range(1, calls + 1):
        ours.append(sides.one_event(n, limit=False))
        limit.append(sides.one_event(n, limit=True))
    o, m = median_cost(ours), median_cost(limit)
    met = figure(f"notify one event, wall (median of {calls})", o.wall_s * 1000,
                 m.wall_s * 1000, "ms", GOAL_ONE_EVENT)  # fmt: skip
    figure(f"notify one event, CPU (median of {calls})", o.cpu_s * 1000, m.cpu_s * 1000, "ms",
           COST)  # fmt: skip
    return met


def stream(workdir: Path, lines: int, runs: int) -> bool:
    text = json_lines(lines)
    ours, limit = [], []
    for run in range(runs):
        sides = Sides(workdir / f"stream-{run}")
        ours.append(sides.stream(text, limit=False))
        limit.append(sides.stream(text, limit=True))
    o, m = median_cost(ours), median_cost(limit)
    met = figure(f"notify - of {lines:,} lines, wall (median of {runs})", o.wall_s, m.wall_s,
                 "s", GOAL_STREAM)  # fmt: skip
    figure(f"notify - of {lines:,} lines, CPU (median of {runs})", o.cpu_s, m.cpu_s, "s", COST)
    figure(f"notify - of {lines:,} lines, peak RSS", o.max_rss_kib / 1024,
           m.max_rss_kib / 1024, "MiB", COST)  # fmt: skip
    return met


def memory(workdir: Path, lines: int, small: int) -> bool:
    """Peak RSS at two sizes: flat when the input is streamed. Its limit is nbwss's own
    figure at the small size (the minimal script holds every row: no limit for this)."""
    costs = []
    for count in (small, lines):
        sides = Sides(workdir / f"memory-{count}")
        costs.append(sides.stream(json_lines(count), limit=False))
    return figure(f"notify - peak RSS, {lines:,} lines against {small:,} (flat)",
                  costs[1].max_rss_kib / 1024, costs[0].max_rss_kib / 1024, "MiB",
                  GOAL_FLAT)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench intake", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--lines", type=int, default=100_000, help="JSON lines per stream")
    parser.add_argument("--runs", type=int, default=3, help="stream runs (median)")
    parser.add_argument("--calls", type=int, default=15, help="single-event calls (median)")
    parser.add_argument("--memory-lines", type=int, default=1_000_000,
                        help="the large size of the peak-RSS check (0: skip it)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to see it run")
    args = parser.parse_args(argv)
    if args.quick:
        args.lines, args.runs, args.calls, args.memory_lines = 2_000, 1, 3, 0
    with tempfile.TemporaryDirectory(prefix="nbwss-intake-") as tmp:
        workdir = Path(tmp)
        met = [one_event(workdir, args.calls), stream(workdir, args.lines, args.runs)]
        if args.memory_lines:
            met.append(memory(workdir, args.memory_lines, args.lines))
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
