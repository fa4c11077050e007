"""Notification delivery: intake rate, end-to-end throughput and latency.

    .venv/bin/python -m bench delivery                 # every figure, default sizes
    .venv/bin/python bench/delivery.py --events 100000 --groups 100 --group-events 5000

The daemon side is the real thing in this process: the daemon as `nbwss run` builds it
(`daemon.build_service`, without the status server) over a real SQLite store, dialling
wss:// with pinned trustme certificates. The endpoint is a `websockets` server in a
child process that answers CONNECT valid and acknowledges every NOTIFICATION at once;
it stamps each arrival with CLOCK_MONOTONIC (shared by both processes) and checks that
each endpoint's job ids arrive contiguous and in order.

Figures:
- intake: `nbwss notify -` as a process, fed N JSON lines, to exit (daemon not involved);
- one group: from the start of a `nbwss notify -` of N events to the last one arriving
  (events count only once committed, since only committed rows can be sent);
- 100 groups: the same with M events each delivered to every group (M x groups);
- latency: for single events, from `notify` returning (commit, then the wake datagram)
  to arrival; measured in-process (P events) and with the `nbwss notify` command.
Goals (issue 4): >= 20,000 notifications/s for one group; p50 latency < 20 ms.
Goals (issue 14): one group >= 0.7 of the durable bare client's rate (`bench/limits.py`);
all groups together >= 0.7 of the measured limit of the same work: the bare durable
client doing it (G connections, each draining the M events), the better of one process
and one process per core this process may use. Beside it, each of the two, the issue's
own line (one group's limit times the cores, which the bare client itself does not reach
on a 2-core machine: for information) and the peer's CPU per notification (a peer near a
core's worth is the limit).

`--profile FILE` runs the one-group drain alone under cProfile (the event loop's thread;
the SQLite calls in worker threads show as the waits for them) and prints the top 20
functions by cumulative and by own time: where the daemon's time goes. `--profile-many
FILE` does the same for the many-groups drain; `--many-only` runs only the many-groups
drain and its limits (and one group's durable limit, for the issue's line).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


from bench import limits  # noqa: E402
from bench.tlsfiles import write_server_cert  # noqa: E402
from nbwss import logs, outbox  # noqa: E402
from nbwss.daemon import build_service  # noqa: E402
from nbwss.endpoints import EndpointDetails  # noqa: E402
from nbwss.notifications import encode_data  # noqa: E402
from nbwss.properties import Settings  # noqa: E402
from nbwss.sdnotify import Notifier  # noqa: E402
from nbwss.store import Store  # noqa: E402
from nbwss.trust import fingerprint  # noqa: E402
from nbwss.wake import send_wake  # noqa: E402

BENCHMARK = True
GOAL_RATE = 20_000.0
GOAL_P50_MS = 20.0
SCRIPT = str(Path(__file__).resolve())
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])}


def job(job_id: int) -> dict[str, Any]:
    return {
        "scheduleType": "ST_FULL", "clientName": "DummyTestVM", "status": 0,
        "startTime": 1459829698, "state": "ACTIVE", "policyName": "vmware2",
        "parentJobId": 145, "jobId": job_id, "policyType": "VMWARE", "jobType": "BACKUP",
    }  # fmt: skip


def json_lines(first: int, count: int) -> bytes:
    return "".join(
        json.dumps({"object": "JOB", "data": job(n)}) + "\n" for n in range(first, first + count)
    ).encode()


# -- the endpoint (child process) ----------------------------------------------------------


async def serve_endpoints(cert_file: str, key_file: str) -> None:
    """Ack at once; one stdout line per arrival: `N time path count first last` / `C path`."""
    from websockets.asyncio.server import ServerConnection, serve

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    out = sys.stdout

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else "?"
        async for frame in ws:
            request = json.loads(frame)
            if request.get("subType") != "REQUEST":
                continue
            if request["type"] == "CONNECT":
                await ws.send(json.dumps({**request, "subType": "RESPONSE",
                                          "payload": {"valid": True}}))  # fmt: skip
                out.write(f"C {path}\n")
                out.flush()
                continue
            await ws.send(json.dumps({**request, "subType": "RESPONSE", "payload": []}))
            ids = [d["jobId"] for e in request["payload"] for d in e["data"]]
            out.write(f"N {time.monotonic():.6f} {path} {len(ids)} {ids[0]} {ids[-1]}\n")
            out.flush()

    async with serve(
        handler, "127.0.0.1", 0, ssl=context, ping_interval=None, compression=None,
        backlog=1024, max_size=None,
    ) as server:  # fmt: skip
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()


# -- the daemon side ----------------------------------------------------------------------


@dataclass
class Arrivals:
    """What the endpoint reported, per path; wakes waiters on each line."""

    connected: set[str] = field(default_factory=set)
    last_id: dict[str, int] = field(default_factory=dict)
    arrived_at: dict[int, float] = field(default_factory=dict)  # a batch's last id, /g0
    out_of_order: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def feed(self, line: str) -> None:
        parts = line.split()
        if parts[0] == "C":
            self.connected.add(parts[1])
        else:
            at, path, first, last = float(parts[1]), parts[2], int(parts[4]), int(parts[5])
            previous = self.last_id.get(path)
            if previous is not None and first != previous + 1 and first > previous:
                self.out_of_order += 1
            self.last_id[path] = max(last, previous or last)
            if path == "/g0":  # per batch, not per id: this process is the daemon's too
                self.arrived_at.setdefault(last, at)
        self.changed.set()

    async def until(self, predicate: Callable[[], bool], seconds: float = 300) -> None:
        async with asyncio.timeout(seconds):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


async def read_arrivals(stream: asyncio.StreamReader, arrivals: Arrivals) -> None:
    while line := await stream.readline():
        arrivals.feed(line.decode())


async def notify_process(config: Path, stdin: bytes) -> float:
    """Run `nbwss notify -`; the monotonic time it exited."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nbwss", "-c", str(config), "notify", "-",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=ENV,
    )  # fmt: skip
    _, err = await process.communicate(stdin)
    if process.returncode != 0:
        raise RuntimeError(f"nbwss notify failed: {err.decode().strip()}")
    return time.monotonic()


def setup_state(directory: Path, groups: int, port: int, leaf_der: bytes) -> tuple[Path, Store]:
    directory.mkdir()
    config = directory / "nbwss.properties"
    config.write_text(f"store.path={directory / 'nbwss.db'}\nlog.level=error\n")
    store = Store(directory / "nbwss.db", directory / "nbwss.key")
    for index in range(groups):
        details = EndpointDetails(
            token=f"bench-token-{index:06d}", priority=1, group_id=f"GROUP{index:06d}",
            host_name=f"ep{index:06d}.bench", url=f"wss://127.0.0.1:{port}/g{index}",
        )  # fmt: skip
        store.add_endpoint(details, leaf_der, fingerprint(leaf_der))
    return config, store


async def with_daemon(
    store: Store, groups: int, arrivals: Arrivals, work: Callable[[Settings], Any]
) -> Any:
    settings = Settings(
        store_path=store.path, connection_period_s=5.0, notification_rate_s=5.0,
        send_timeout_s=10.0,
    )  # fmt: skip
    service = build_service(settings, store, status=False, notifier=Notifier(None))
    task = asyncio.create_task(service.async_run(handle_signals=False))
    try:
        await arrivals.until(lambda: len(arrivals.connected) >= groups, seconds=120)
        await asyncio.wait_for(service.ready.wait(), 10)  # the wake socket is bound
        return await work(settings)
    finally:
        service.handle_exit()
        await asyncio.wait_for(task, 30)


async def throughput(
    workdir: Path, name: str, groups: int, events: int, port: int, leaf_der: bytes,
    endpoint: asyncio.subprocess.Process, precommitted: bool = False,
    profile: cProfile.Profile | None = None,
) -> tuple[float, float]:  # fmt: skip
    """Notifications/s and the daemon's CPU microseconds per notification."""
    config, store = setup_state(workdir / name, groups, port, leaf_der)
    arrivals = Arrivals()
    assert endpoint.stdout is not None
    reader = asyncio.create_task(read_arrivals(endpoint.stdout, arrivals))
    lines = json_lines(0, events)
    items = [("JOB", job(n)) for n in range(events)]
    paths = [f"/g{i}" for i in range(groups)]

    async def work(settings: Settings) -> tuple[float, float, float]:
        if precommitted:
            # The backlog is committed first (no wake-up: delivery idles on a 5 s poll),
            # then the clock starts with the wake-up: delivery of a durable backlog.
            with store.transaction() as conn:
                outbox.enqueue(conn, ((obj, data) for obj, data in items), time.time())
            cpu_before, started = limits.cpu_s(), time.monotonic()
            peer_before = limits.process_cpu_s(endpoint.pid)
            if profile is not None:
                profile.enable()
            send_wake(settings.wake_socket)
        else:
            cpu_before, started = limits.cpu_s(), time.monotonic()
            peer_before = limits.process_cpu_s(endpoint.pid)
            await notify_process(config, lines)
        await arrivals.until(lambda: all(arrivals.last_id.get(p) == events - 1 for p in paths))
        if profile is not None:
            profile.disable()
        ended = max(arrivals.arrived_at.values()) if groups == 1 else time.monotonic()
        peer_cpu = limits.process_cpu_s(endpoint.pid) - peer_before
        return ended - started, limits.cpu_s() - cpu_before, peer_cpu

    try:
        took, cpu, peer_cpu = await with_daemon(store, groups, arrivals, work)
    finally:
        reader.cancel()
        store.close()
    delivered = events * groups
    rate: float = delivered / took
    print(
        f"{name}: groups={groups} events={events} delivered={delivered} seconds={took:.2f} "
        f"notifications_per_s={rate:,.0f} per_group_per_s={rate / groups:,.0f} "
        f"daemon_cpu_us_per_notification={cpu / delivered * 1e6:.1f} "
        f"peer_cpu_us_per_notification={peer_cpu / delivered * 1e6:.1f} "
        f"out_of_order={arrivals.out_of_order}",
        flush=True,
    )
    if arrivals.out_of_order:
        raise OrderBroken(f"{name}: {arrivals.out_of_order} batches arrived out of order")
    return rate, cpu / delivered * 1e6


class OrderBroken(Exception):
    """A correctness failure, not a missed goal: `main` exits 2 for it (1 is a goal)."""


async def latency(
    workdir: Path, samples: int, cli_samples: int, port: int, leaf_der: bytes,
    endpoint: asyncio.subprocess.Process,
) -> float:  # fmt: skip
    config, store = setup_state(workdir / "latency", 1, port, leaf_der)
    arrivals = Arrivals()
    assert endpoint.stdout is not None
    reader = asyncio.create_task(read_arrivals(endpoint.stdout, arrivals))

    async def work(settings: Settings) -> tuple[list[float], list[float]]:
        in_process, by_command = [], []
        for n in range(samples):
            with store.transaction() as conn:  # what `nbwss notify` does, then returns
                outbox.enqueue(conn, [("JOB", job(n))], time.time())
            send_wake(settings.wake_socket)
            returned = time.monotonic()
            await arrivals.until(lambda n=n: n in arrivals.arrived_at, seconds=30)  # type: ignore[misc]
            in_process.append(arrivals.arrived_at[n] - returned)
        for n in range(samples, samples + cli_samples):
            returned = await notify_process(config, json_lines(n, 1))
            await arrivals.until(lambda n=n: n in arrivals.arrived_at, seconds=30)  # type: ignore[misc]
            by_command.append(arrivals.arrived_at[n] - returned)
        return in_process, by_command

    try:
        in_process, by_command = await with_daemon(store, 1, arrivals, work)
    finally:
        reader.cancel()
        store.close()
    p50: float = statistics.median(in_process) * 1000
    p99 = statistics.quantiles(in_process, n=100)[98] * 1000
    print(
        f"latency (in-process notify, n={samples}): p50_ms={p50:.2f} p99_ms={p99:.2f} "
        f"max_ms={max(in_process) * 1000:.2f}",
        flush=True,
    )
    cmd = sorted(by_command)
    print(
        f"latency (nbwss notify command, n={cli_samples}, from process exit): "
        f"p50_ms={statistics.median(cmd) * 1000:.2f} max_ms={cmd[-1] * 1000:.2f} "
        f"arrived_before_exit={sum(1 for x in cmd if x < 0)}",
        flush=True,
    )
    return p50


async def intake(workdir: Path, events: int) -> float:
    directory = workdir / "intake"
    directory.mkdir()
    config = directory / "nbwss.properties"
    config.write_text(f"store.path={directory / 'nbwss.db'}\nlog.level=error\n")
    lines = json_lines(0, events)
    started = time.monotonic()
    ended = await notify_process(config, lines)
    took = ended - started
    print(
        f"intake: `nbwss notify -` of {events} JSON lines: seconds={took:.2f} "
        f"events_per_s={events / took:,.0f} (process start to exit, every chunk committed)",
        flush=True,
    )
    return events / took


def print_profile(profile: cProfile.Profile, path: str, top: int = 20) -> None:
    """Save the profile at `path` (pstats) and print its top functions both ways."""
    profile.dump_stats(path)
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats(order).print_stats(top)
        print(f"-- profile of the drain, top {top} by {order} (main thread; saved in {path})")
        print(out.getvalue().split("\n\n", 1)[-1].rstrip(), flush=True)


async def many_groups(
    args: argparse.Namespace, workdir: Path, port: int, leaf_der: bytes,
    endpoint: asyncio.subprocess.Process, durable_limit: float,
) -> bool:  # fmt: skip
    """The many-groups drain and its limits; whether its goal is met."""
    many, many_cpu_us = await throughput(
        workdir, "many-groups-backlog", args.groups, args.group_events, port, leaf_der,
        endpoint, precommitted=True,
    )  # fmt: skip
    return await limits.many_groups_against_limits(
        f"{args.groups} groups, backlog drained", many, limits.Peer(port, leaf_der),
        [encode_data(job(n)) for n in range(args.group_events)], args.groups,
        Settings().notification_max_batch, workdir, endpoint.stdout, durable_limit, many_cpu_us,
        endpoint.pid,
    )  # fmt: skip


@dataclass(frozen=True)
class Bed:
    """What every run drives: a work directory, the endpoint process and how to reach it."""

    workdir: Path
    endpoint: asyncio.subprocess.Process
    port: int
    leaf_der: bytes


@contextlib.asynccontextmanager
async def endpoint_bed() -> AsyncIterator[Bed]:
    """A temporary directory and the `websockets` endpoint serving in a child process,
    with a fresh trustme certificate; the endpoint is stopped on the way out."""
    with tempfile.TemporaryDirectory(prefix="nbwb") as tmp:
        workdir = Path(tmp)
        tls = write_server_cert(workdir)
        endpoint = await asyncio.create_subprocess_exec(
            sys.executable, SCRIPT, "--serve", str(tls.cert_file),
            str(tls.key_file), stdout=asyncio.subprocess.PIPE, env=ENV, limit=1 << 20,
        )  # fmt: skip
        try:
            assert endpoint.stdout is not None
            port = int(await endpoint.stdout.readline())
            yield Bed(workdir, endpoint, port, tls.der)
        finally:
            endpoint.terminate()
            await endpoint.wait()


async def run_many_only(args: argparse.Namespace) -> bool:
    """`--many-only`: the one-group durable limit (for the issue's line), then the
    many-groups drain and its limits."""
    async with endpoint_bed() as bed:
        durable_limit = await limits.durable_limit(
            limits.Peer(bed.port, bed.leaf_der), [encode_data(job(n)) for n in range(args.events)],
            Settings().notification_max_batch, bed.workdir, bed.endpoint.stdout,
        )  # fmt: skip
        return await many_groups(
            args, bed.workdir, bed.port, bed.leaf_der, bed.endpoint, durable_limit
        )


async def run(args: argparse.Namespace) -> bool:
    if args.profile or args.profile_many:
        return await run_profiled(args)
    if args.many_only:
        return await run_many_only(args)
    async with endpoint_bed() as bed:
        workdir, endpoint, port, leaf_der = bed.workdir, bed.endpoint, bed.port, bed.leaf_der
        await intake(workdir, args.events)
        one, one_cpu_us = await throughput(
            workdir, "one-group-backlog", 1, args.events, port, leaf_der, endpoint,
            precommitted=True,
        )  # fmt: skip
        one_met, durable_limit = await limits.delivery_against_limits(
            "one group, backlog drained", one, limits.Peer(port, leaf_der),
            [encode_data(job(n)) for n in range(args.events)],
            Settings().notification_max_batch, workdir, endpoint.stdout, one_cpu_us,
        )  # fmt: skip
        await throughput(workdir, "one-group-notify", 1, args.events, port, leaf_der, endpoint)
        many_met = await many_groups(args, workdir, port, leaf_der, endpoint, durable_limit)
        p50 = await latency(workdir, args.samples, args.cli_samples, port, leaf_der, endpoint)
    ok = one >= GOAL_RATE and p50 < GOAL_P50_MS and one_met and many_met
    print(
        f"goals: one group >= {GOAL_RATE:,.0f}/s: {'met' if one >= GOAL_RATE else 'MISSED'}; "
        f"p50 < {GOAL_P50_MS:g} ms: {'met' if p50 < GOAL_P50_MS else 'MISSED'}; "
        f"one group >= 0.7 of the durable limit: {'met' if one_met else 'MISSED'}; "
        f"all groups >= 0.7 of the bare client's best: {'met' if many_met else 'MISSED'}",
        flush=True,
    )
    return ok


async def run_profiled(args: argparse.Namespace) -> bool:
    """The one-group backlog drain alone (or with `--profile-many`, the many-groups
    one), under cProfile (its rate is the profiled one)."""
    profile = cProfile.Profile()
    async with endpoint_bed() as bed:
        if args.profile_many:
            await throughput(
                bed.workdir, "many-groups-backlog (profiled)", args.groups, args.group_events,
                bed.port, bed.leaf_der, bed.endpoint, precommitted=True, profile=profile,
            )  # fmt: skip
        else:
            await throughput(
                bed.workdir, "one-group-backlog (profiled)", 1, args.events, bed.port,
                bed.leaf_der, bed.endpoint, precommitted=True, profile=profile,
            )  # fmt: skip
    print_profile(profile, args.profile_many or args.profile)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench delivery",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=100_000, help="events for one group")
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--group-events", type=int, default=5_000, help="events, many groups")
    parser.add_argument("--samples", type=int, default=300, help="latency samples")
    parser.add_argument("--cli-samples", type=int, default=20, help="latency via the command")
    parser.add_argument(
        "--profile", metavar="FILE",
        help="only the one-group backlog drain, under cProfile: save the stats, print the top",
    )  # fmt: skip
    parser.add_argument(
        "--profile-many", metavar="FILE",
        help="only the many-groups backlog drain, under cProfile: save the stats, print the top",
    )  # fmt: skip
    parser.add_argument(
        "--many-only", action="store_true",
        help="only the many-groups drain and its limits (and one group's durable limit)",
    )  # fmt: skip
    parser.add_argument("--serve", nargs=2, metavar=("CERT", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve_endpoints(*args.serve))
        return 0
    logs.configure("error", "json")
    try:
        return 0 if asyncio.run(run(args)) else 1
    except OrderBroken as exc:
        print(f"FAILED: {exc}", flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
