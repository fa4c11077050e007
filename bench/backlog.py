"""Flat cost as the backlog grows: one group drains a small and a large backlog.

    .venv/bin/python -m bench backlog                  # 10,000 (median of 5) vs 300,000
    .venv/bin/python -m bench backlog --large          # 10,000 vs 1,000,000 (issue 14)
    .venv/bin/python -m bench backlog --small 10000 --big 500000 --repeat 5

The daemon is the real thing in this process (`daemon.build_service`, no status
server) over a real SQLite store, dialling wss:// with a pinned trustme certificate;
the endpoint is bench/delivery.py's `websockets` peer in a child process (acks at
once, stamps arrivals with CLOCK_MONOTONIC, which both processes share).

For each size: the daemon connects with an empty outbox and drains 2,000 events (not
counted: both sizes are measured warm), the backlog is committed in transactions of
100,000 rows (no wake-up, and the fallback poll is an hour away, so the pump stays
idle) and checkpointed (the intake's cost: see `drain_once`), then the clock starts
with the wake datagram and stops at the last arrival. Printed:
the drain rate and this process's CPU per notification, the large backlog against the
small one (goal: within 15%), how long `outbox.backlog` (what `nbwss status` and
/metrics run) takes at the peak, and the database's size (main file plus WAL) at each
step: before intake, at the peak, after the drain, after the janitor's sweep, and after
a second backlog of the same size (whether the freed pages were reused rather than the
file grown).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.delivery import ENV, SCRIPT, job, setup_state  # noqa: E402
from bench.limits import cpu_s  # noqa: E402
from bench.tlsfiles import write_server_cert  # noqa: E402
from nbwss import logs, outbox  # noqa: E402
from nbwss.daemon import build_service  # noqa: E402
from nbwss.notifications import encode_data  # noqa: E402
from nbwss.properties import Settings  # noqa: E402
from nbwss.sdnotify import Notifier  # noqa: E402
from nbwss.store import Store  # noqa: E402
from nbwss.wake import send_wake  # noqa: E402

BENCHMARK = True
GOAL_LOW, GOAL_HIGH = 0.85, 1.15  # large / small, for the rate and the CPU alike
CHUNK = 100_000
WARM_UP = 2_000
MIB = 1 << 20


@dataclass
class Drain:
    """The endpoint's report for the one group: arrivals counted, order checked."""

    started: float = 0.0
    first_at: float | None = None
    last_at: float = 0.0
    last_id: int = -1
    out_of_order: int = 0
    connected: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def feed(self, line: str) -> None:
        parts = line.split()
        if parts[0] == "C":
            self.connected = True
        else:
            at, first, last = float(parts[1]), int(parts[4]), int(parts[5])
            if first != self.last_id + 1 and first > self.last_id:
                self.out_of_order += 1
            self.last_id = max(self.last_id, last)
            self.first_at = self.first_at or at
            self.last_at = at
        self.changed.set()

    async def until(self, predicate: Callable[[], bool], seconds: float = 900) -> None:
        async with asyncio.timeout(seconds):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@dataclass(frozen=True)
class Sizes:
    """Bytes of the main file and the WAL, and pages on the freelist (reusable)."""

    main: int
    wal: int
    free: int

    def __str__(self) -> str:
        return (
            f"{(self.main + self.wal) / MIB:.1f} MiB (file {self.main / MIB:.1f}, "
            f"WAL {self.wal / MIB:.1f}, free pages {self.free / MIB:.1f})"
        )


def sizes(store: Store) -> Sizes:
    with store.reading() as conn:
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        (page,) = conn.execute("PRAGMA page_size").fetchone()
    wal = store.path.with_name(store.path.name + "-wal")
    return Sizes(
        store.path.stat().st_size, wal.stat().st_size if wal.exists() else 0, free * page
    )


def queue_backlog(store: Store, first: int, count: int) -> int:
    """`count` events committed in transactions of CHUNK rows; the last seq."""
    last_seq = 0
    for start in range(first, first + count, CHUNK):
        end = min(start + CHUNK, first + count)
        rows = (("JOB", encode_data(job(n))) for n in range(start, end))
        with store.transaction() as conn:
            _, last_seq = outbox.enqueue_encoded(conn, rows, time.time())
    return last_seq


@dataclass(frozen=True)
class Result:
    events: int
    rate: float
    cpu_us: float
    status_ms: float
    steps: dict[str, Sizes]


async def drain_once(
    store: Store, settings: Settings, drain: Drain, first: int, events: int
) -> tuple[float, float, float, Sizes]:
    """Queue `events` (ids from `first`), wake, wait for the last arrival and its ack.

    Returns the drain rate, CPU µs per notification, `outbox.backlog`'s ms at the
    peak, and the sizes at the peak."""
    last_seq = await asyncio.to_thread(queue_backlog, store, first, events)
    peak = sizes(store)
    # The intake's pages are copied from the WAL to the file by whichever commit comes
    # next past 1,000 pages: without this, the drain's first ack pays for the intake,
    # which weighs more on a short drain than on a long one.
    await asyncio.to_thread(_checkpoint, store, "PASSIVE")
    took = time.perf_counter()
    await asyncio.to_thread(outbox.backlog, store, time.time())
    status_ms = (time.perf_counter() - took) * 1000
    cpu_before, started = cpu_s(), time.monotonic()
    send_wake(settings.wake_socket)
    await drain.until(lambda: drain.last_id >= first + events - 1)
    cpu = cpu_s() - cpu_before
    rate = events / (drain.last_at - started)
    # The last ack commits just after the last arrival: wait for it (and its purge). The
    # commit is the pump's, with no event for a benchmark to wait on: poll the cursor.
    async with asyncio.timeout(60):
        while await asyncio.to_thread(_acked_seq, store) < last_seq:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    return rate, cpu / events * 1e6, status_ms, peak


def _checkpoint(store: Store, mode: str) -> None:
    with store.reading() as conn:
        conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()


def _acked_seq(store: Store) -> int:
    with store.reading() as conn:
        (acked,) = conn.execute("SELECT MIN(acked_seq) FROM group_cursors").fetchone()
    return int(acked)


async def measure(
    workdir: Path, name: str, events: int, port: int, leaf_der: bytes,
    endpoint: asyncio.subprocess.Process,
) -> Result:  # fmt: skip
    _, store = setup_state(workdir / name, 1, port, leaf_der)
    drain = Drain()
    assert endpoint.stdout is not None
    reader = asyncio.create_task(_read(endpoint.stdout, drain))
    settings = Settings(
        store_path=store.path, connection_period_s=5.0, notification_rate_s=3600.0,
        send_timeout_s=30.0,
    )  # fmt: skip
    service = build_service(settings, store, status=False, notifier=Notifier(None))
    task = asyncio.create_task(service.async_run(handle_signals=False))
    steps: dict[str, Sizes] = {}
    try:
        await drain.until(lambda: drain.connected, seconds=60)
        await asyncio.wait_for(service.ready.wait(), 10)
        steps["before intake"] = sizes(store)
        # A first small drain, not counted, so both sizes are measured warm (the
        # worker threads started, the statements prepared, the endpoint's first batches).
        await drain_once(store, settings, drain, 0, WARM_UP)
        rate, cpu_us, status_ms, steps["at the peak"] = await drain_once(
            store, settings, drain, WARM_UP, events
        )
        steps["after the drain"] = sizes(store)
        # What the janitor's sweep does (`OutboxJanitor.sweep`), then SQLite's own
        # checkpoint as the next write would run it.
        swept = time.perf_counter()
        await asyncio.to_thread(outbox.expire, store, time.time(), 30.0)
        await asyncio.to_thread(outbox.purge, store)
        swept = time.perf_counter() - swept
        steps[f"after the janitor's sweep ({swept:.2f} s)"] = sizes(store)
        _checkpoint(store, "TRUNCATE")
        steps["after a checkpoint (TRUNCATE)"] = sizes(store)
        await drain_once(store, settings, drain, WARM_UP + events, events)
        steps["after a second backlog, drained"] = sizes(store)
    finally:
        service.handle_exit()
        await asyncio.wait_for(task, 60)
        reader.cancel()
        store.close()
    if drain.out_of_order:
        raise RuntimeError(f"{name}: {drain.out_of_order} batches arrived out of order")
    print(
        f"{name}: events={events} notifications_per_s={rate:,.0f} "
        f"daemon_cpu_us_per_notification={cpu_us:.1f} status_query_ms={status_ms:.1f}",
        flush=True,
    )
    return Result(events, rate, cpu_us, status_ms, steps)


async def _read(stream: asyncio.StreamReader, drain: Drain) -> None:
    while line := await stream.readline():
        drain.feed(line.decode())


@contextlib.contextmanager
def endpoint_files() -> Iterator[tuple[Path, Path, Path, bytes]]:
    with tempfile.TemporaryDirectory(prefix="nbwbl") as tmp:
        workdir = Path(tmp)
        tls = write_server_cert(workdir)
        yield workdir, tls.cert_file, tls.key_file, tls.der


async def run(args: argparse.Namespace) -> bool:
    big_events = 1_000_000 if args.large else args.big
    with endpoint_files() as (workdir, cert_file, key_file, leaf_der):
        endpoint = await asyncio.create_subprocess_exec(
            sys.executable, SCRIPT, "--serve", str(cert_file), str(key_file),
            stdout=asyncio.subprocess.PIPE, env=ENV, limit=1 << 20,
        )  # fmt: skip
        try:
            assert endpoint.stdout is not None
            port = int(await endpoint.stdout.readline())
            smalls = [
                await measure(workdir, f"small-{n}", args.small, port, leaf_der, endpoint)
                for n in range(args.repeat)
            ]
            big = await measure(workdir, "large", big_events, port, leaf_der, endpoint)
        finally:
            endpoint.terminate()
            await endpoint.wait()
    rate = statistics.median(r.rate for r in smalls)
    cpu = statistics.median(r.cpu_us for r in smalls)
    small_name = f"backlog {args.small:,} (median of {args.repeat})"
    print(f"-- against the {small_name}", flush=True)
    ok = _within(f"drain rate, backlog {big_events:,}", big.rate, rate, "/s")
    ok &= _within(f"CPU per notification, backlog {big_events:,}", big.cpu_us, cpu, "µs")
    print(
        f"status query (outbox.backlog) at the peak: {smalls[0].status_ms:.1f} ms at "
        f"{args.small:,}, {big.status_ms:.1f} ms at {big_events:,} (no goal)",
        flush=True,
    )
    for result in (smalls[0], big):
        print(f"-- database size, backlog {result.events:,}", flush=True)
        for step, size in result.steps.items():
            print(f"   {step}: {size}", flush=True)
    return ok


def _within(name: str, nbwss: float, reference: float, unit: str) -> bool:
    """The house figure line, the small backlog's figure as the "limit"."""
    ratio = nbwss / reference
    met = GOAL_LOW <= ratio <= GOAL_HIGH
    print(
        f"{name}: nbwss {nbwss:,.1f} {unit}, limit {reference:,.1f} {unit}, ratio {ratio:.2f} "
        f"(goal {GOAL_LOW:g}..{GOAL_HIGH:g}): {'met' if met else 'not met'}",
        flush=True,
    )
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench backlog",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--small", type=int, default=10_000, help="the small backlog")
    parser.add_argument("--repeat", type=int, default=5, help="runs of the small backlog")
    parser.add_argument("--big", type=int, default=300_000, help="the large backlog")
    parser.add_argument("--large", action="store_true", help="the large backlog is 1,000,000")
    args = parser.parse_args(argv)
    logs.configure("error", "json")
    return 0 if asyncio.run(run(args)) else 1


if __name__ == "__main__":
    sys.exit(main())
