"""The physical limit beside every figure: baselines measured in the same run as nbwss.

A figure alone says little on a shared 2-core machine; a ratio to what the least code
doing the same work achieves, measured minutes apart on the same machine, says how much
nbwss costs. Each benchmark calls the baseline it needs from here and prints one line:

    name: nbwss X, limit Y, ratio R (goal G): met|not met

The baselines:
- intake: `bench/limit_intake.py`, a separate script run as its own process (parse,
  check the fields, one transaction, the wake datagram), against `nbwss notify`;
- delivery: a bare aiohttp client against the same `websockets` peer and batch size as
  the daemon, durable (events read from SQLite by seq range, the cursor committed per
  ack, WAL, synchronous=NORMAL) and in memory (frames built before the clock starts);
- connect: bare aiohttp WebSocket connections, each sending CONNECT and reading the
  answer, as many at once as the daemon dials.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import ssl
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
INTAKE_SCRIPT = HERE / "limit_intake.py"


# -- the figure line ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Goal:
    """`ratio >= value` for rates (nbwss / limit), `ratio <= value` for costs (times)."""

    value: float | None  # None: shown for information, no goal set
    higher_is_better: bool

    def met(self, ratio: float) -> bool:
        if self.value is None:
            return True
        return ratio >= self.value if self.higher_is_better else ratio <= self.value

    def __str__(self) -> str:
        return f">= {self.value:g}" if self.higher_is_better else f"<= {self.value:g}x"


RATE = Goal(None, higher_is_better=True)
COST = Goal(None, higher_is_better=False)


def figure(name: str, nbwss: float, limit: float, unit: str, goal: Goal) -> bool:
    """Print the figure line; whether its goal is met (True when it has none)."""
    ratio = nbwss / limit if limit else float("inf")
    shown = f"{ratio:.2f}" if goal.higher_is_better else f"{ratio:.2f}x"
    verdict = "" if goal.value is None else (": met" if goal.met(ratio) else ": not met")
    print(
        f"{name}: nbwss {_number(nbwss)} {unit}, limit {_number(limit)} {unit}, "
        f"ratio {shown} ({'no goal' if goal.value is None else f'goal {goal}'}){verdict}",
        flush=True,
    )
    return goal.met(ratio)


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


# -- process costs --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessCost:
    """One process run: wall seconds from start to exit, its CPU seconds, its peak RSS."""

    wall_s: float
    cpu_s: float
    max_rss_kib: int


# Starts the measured process and reports its figures as one line on stdout. The peak RSS
# of a child counts from the memory of the process it was forked from (Linux carries the
# high-water mark across fork and exec), so the benchmark, which holds the input, must
# not be that process: this small one is.
_LAUNCHER = """
import os, sys, time
null = os.open(os.devnull, os.O_WRONLY)
started = time.perf_counter()
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ,
                     file_actions=[(os.POSIX_SPAWN_DUP2, null, 1)])
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - started, os.waitstatus_to_exitcode(status),
      usage.ru_utime + usage.ru_stime, usage.ru_maxrss)
"""


def run_process(argv: Sequence[str], stdin: bytes, env: dict[str, str]) -> ProcessCost:
    """Run `argv` to its exit, feeding `stdin`; raise with its stderr if it fails."""
    result = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *argv], input=stdin, capture_output=True,
        env=env, check=False,
    )  # fmt: skip
    figures = result.stdout.split()
    if result.returncode != 0 or len(figures) != 4 or figures[1] != b"0":
        raise RuntimeError(f"{argv[0]} ... failed: {result.stderr.decode(errors='replace')}")
    return ProcessCost(float(figures[0]), float(figures[2]), int(figures[3]))


def median_cost(costs: Sequence[ProcessCost]) -> ProcessCost:
    """Figure by figure, the median of several runs (a loaded machine makes outliers)."""
    return ProcessCost(
        statistics.median(c.wall_s for c in costs),
        statistics.median(c.cpu_s for c in costs),
        int(statistics.median(c.max_rss_kib for c in costs)),
    )


def intake_limit_argv(db: Path, data: str | None = None) -> list[str]:
    """The minimal intake script's command line: JSON lines on stdin, or one JOB's data."""
    return [sys.executable, str(INTAKE_SCRIPT), str(db), *([data] if data is not None else [])]


# -- delivery: the bare client ---------------------------------------------------------------


def write_events(db: Path, texts: Sequence[str]) -> None:
    """An outbox of JOB events (`texts`: each one's compact JSON) and a cursor at 0."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, object TEXT, data TEXT)")
        conn.execute("CREATE TABLE cursor (group_id TEXT PRIMARY KEY, acked_seq INTEGER)")
        with conn:
            conn.executemany(
                "INSERT INTO outbox VALUES (?, 'JOB', ?)", enumerate(texts, start=1)
            )
            conn.execute("INSERT INTO cursor VALUES ('LIMIT', 0)")
    finally:
        conn.close()


def _frame(texts: Sequence[str]) -> str:
    """A NOTIFICATION request carrying `texts` (JOB data, compact JSON) in one element."""
    head = json.dumps(
        {"id": str(uuid.uuid4()), "type": "NOTIFICATION", "subType": "REQUEST",
         "timeStamp": int(time.time())}, separators=(",", ":"),
    )  # fmt: skip
    return (
        head[:-1] + ',"payload":[{"notificationType":"INFO","object":"JOB","data":['
        + ",".join(texts) + "]}]}"
    )


def pinned_context() -> ssl.SSLContext:
    """No CA check (the daemon pins too): the certificate itself is compared instead."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True, slots=True)
class Peer:
    """Where the bare client dials: the peer's port and its certificate (pinned)."""

    port: int
    der: bytes

    def url(self, path: str) -> str:
        return f"wss://127.0.0.1:{self.port}{path}"


@contextlib.asynccontextmanager
async def _client(peer: Peer) -> AsyncIterator[tuple[aiohttp.ClientSession, ssl.SSLContext]]:
    context = pinned_context()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        yield http, context


@contextlib.asynccontextmanager
async def _connected(
    http: aiohttp.ClientSession, context: ssl.SSLContext, peer: Peer, path: str
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A WebSocket to `path` whose certificate is the pinned one, after CONNECT's answer."""
    async with http.ws_connect(
        peer.url(path), ssl=context, autoping=False, compress=0, max_msg_size=0
    ) as ws:
        tls = ws.get_extra_info("ssl_object")
        presented = tls.getpeercert(binary_form=True) if tls is not None else None
        if presented != peer.der:
            raise RuntimeError("limit client: the peer's certificate is not the pinned one")
        connect = {"id": str(uuid.uuid4()), "type": "CONNECT", "subType": "REQUEST",
                   "timeStamp": int(time.time()), "payload": {"token": "limit"}}  # fmt: skip
        await ws.send_str(json.dumps(connect))
        await ws.receive_str()
        yield ws


async def _round_trip(ws: aiohttp.ClientWebSocketResponse, frame: str) -> None:
    await ws.send_str(frame)
    answer = await ws.receive_str()
    if '"payload":[]' not in answer.replace(" ", ""):
        raise RuntimeError(f"limit client: not an ack: {answer[:200]}")


async def deliver_durable(peer: Peer, db: Path, batch: int) -> tuple[int, float]:
    """Drain the outbox at `db`: read a batch by seq range, send, await the ack, commit the
    cursor; one batch in flight. Returns (events, seconds from the first read to the last
    ack)."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    acked = sent = 0
    try:
        async with _client(peer) as (http, context), _connected(
            http, context, peer, "/limit-durable"
        ) as ws:
            started = time.perf_counter()
            while True:
                rows = conn.execute(
                    "SELECT seq, data FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                    (acked, batch),
                ).fetchall()
                if not rows:
                    break
                await _round_trip(ws, _frame([text for _, text in rows]))
                acked = rows[-1][0]
                conn.execute("UPDATE cursor SET acked_seq = ? WHERE group_id = 'LIMIT'", (acked,))
                sent += len(rows)
            return sent, time.perf_counter() - started
    finally:
        conn.close()


async def deliver_in_memory(peer: Peer, texts: Sequence[str], batch: int) -> tuple[int, float]:
    """The same with every frame built before the clock starts: no SQLite at all."""
    frames = [_frame(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    async with _client(peer) as (http, context), _connected(
        http, context, peer, "/limit-memory"
    ) as ws:
        started = time.perf_counter()
        for frame in frames:
            await _round_trip(ws, frame)
        return len(texts), time.perf_counter() - started


@contextlib.asynccontextmanager
async def draining(stream: asyncio.StreamReader | None) -> AsyncIterator[None]:
    """Read and drop a peer's stdout while a baseline runs, so the peer never blocks on it."""

    async def drain() -> None:
        assert stream is not None
        while await stream.readline():
            pass

    task = asyncio.create_task(drain()) if stream is not None else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


# -- connect: bare connections ---------------------------------------------------------------


async def connect_bare(peer: Peer, paths: Sequence[str], at_once: int) -> float:
    """Open one WebSocket per path (CONNECT sent, answer read), `at_once` dialling at a
    time as the daemon does; seconds until all are open. They are closed after."""
    slots = asyncio.Semaphore(at_once)
    async with _client(peer) as (http, context), contextlib.AsyncExitStack() as opened:

        async def one(path: str) -> None:
            async with slots:
                await opened.enter_async_context(_connected(http, context, peer, path))

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for path in paths:
                group.create_task(one(path))
        return time.perf_counter() - started


# -- what the benchmarks call ----------------------------------------------------------------

DELIVERY_GOAL = Goal(0.7, higher_is_better=True)  # issue 14, item 2: of the durable limit


async def delivery_against_limits(
    name: str, nbwss_rate: float, peer: Peer, texts: Sequence[str], batch: int,
    workdir: Path, peer_stdout: asyncio.StreamReader | None, nbwss_cpu_us: float | None = None,
) -> tuple[bool, float]:  # fmt: skip
    """The bare client's rates over the same events, and nbwss's rate beside each;
    whether the goal is met, and the durable limit (notifications/s).

    With `nbwss_cpu_us` (the daemon's CPU per notification), the bare durable client's
    CPU per notification is beside it: CPU is the figure other load on the machine
    skews least (this process runs nothing else meanwhile)."""
    db = workdir / f"limit-{len(texts)}.db"
    write_events(db, texts)
    async with draining(peer_stdout):
        cpu_before = cpu_s()
        durable_count, durable_s = await deliver_durable(peer, db, batch)
        durable_cpu_us = (cpu_s() - cpu_before) / durable_count * 1e6
        memory_count, memory_s = await deliver_in_memory(peer, texts, batch)
    unit = "notifications/s"
    met = figure(f"{name} vs bare client, durable", nbwss_rate, durable_count / durable_s, unit,
                 DELIVERY_GOAL)  # fmt: skip
    figure(f"{name} vs bare client, in memory", nbwss_rate, memory_count / memory_s, unit, RATE)
    if nbwss_cpu_us is not None:
        figure(f"{name}, CPU per notification vs bare client, durable", nbwss_cpu_us,
               durable_cpu_us, "us", COST)  # fmt: skip
    return met, durable_count / durable_s


def cpu_s() -> float:
    """This process's CPU seconds, all threads (the daemon's, when it runs in this
    process: a figure load does not skew). `process_time` rather than `os.times`, whose
    10 ms ticks are too coarse for a small backlog's 100 ms of CPU."""
    return time.process_time()


def connect_against_limit(groups: int, nbwss_s: float, peer: Peer, at_once: int) -> None:
    """Bare connections to the same paths, and nbwss's time beside theirs."""
    bare_s = asyncio.run(connect_bare(peer, [f"/g{n}" for n in range(groups)], at_once))
    figure(f"connect {groups:,} groups vs bare connections", nbwss_s, bare_s, "s", COST)
