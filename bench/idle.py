"""1,000 server groups connected and idle: the daemon's CPU and its RSS per connection.

    .venv/bin/python -m bench idle                        # 1,000 groups, 60 s
    .venv/bin/python -m bench idle --seconds 300          # the issue 14 figure
    .venv/bin/python -m bench idle --loop uvloop          # the same on uvloop (nbwss[speed])

As `bench connect`: one endpoint per group, served on loopback by a `websockets` peer in
a child process (its memory and CPU are not the daemon's), trustme certificates pinned in
a real store, the daemon as `nbwss run` builds it (`daemon.build_service`, no status
server) in this process, with the properties' defaults (`keepAlive.scheduledRate=30`,
`notification.scheduledRate=5`) unless given. Once every group is CONNECTED and the
dials have settled, the daemon's CPU (this process, all threads) is read over S
seconds of nothing to deliver; the RSS growth from the daemon's start to the end of
those S seconds, divided by the groups, is the RSS per connection (the growth once
every group is up is printed beside it: what idle time adds is the difference).
Goals (issue 14): CPU <= 1% of one core; RSS <= 50 KiB per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.connect import rss_kib  # noqa: E402
from bench.limits import cpu_s  # noqa: E402
from bench.tlsfiles import write_server_cert  # noqa: E402
from nbwss import logs  # noqa: E402
from nbwss.daemon import build_service  # noqa: E402
from nbwss.endpoints import EndpointDetails  # noqa: E402
from nbwss.properties import Settings  # noqa: E402
from nbwss.sdnotify import Notifier  # noqa: E402
from nbwss.store import Store  # noqa: E402
from nbwss.trust import fingerprint  # noqa: E402

BENCHMARK = True
GOAL_CPU_PERCENT = 1.0
GOAL_KIB = 50.0
SETTLE_S = 5.0


async def idle(
    store: Store, groups: int, seconds: float, settings: Settings
) -> tuple[float, int, int]:
    """CPU percent of one core over `seconds` idle, and the RSS growth (KiB) once every
    group is up and at the end of the idle time."""
    service = build_service(settings, store, status=False, notifier=Notifier(None))
    supervisor = service.supervisor
    task = asyncio.create_task(service.async_run(handle_signals=False))
    try:
        async with asyncio.timeout(180):
            await service.ready.wait()
            before = rss_kib()
            await supervisor.wait_for(lambda: supervisor.connected_count == groups)
        await asyncio.sleep(SETTLE_S)  # the last dials' status writes, the first polls
        connected = rss_kib() - before
        cpu_before, started = cpu_s(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu = cpu_s() - cpu_before
        took = time.monotonic() - started
        grown = rss_kib() - before
        if supervisor.connected_count != groups:
            raise RuntimeError(f"{groups - supervisor.connected_count} groups dropped while idle")
    finally:
        service.handle_exit()
        await asyncio.wait_for(task, 60)
    return cpu / took * 100, connected, grown


def run(args: argparse.Namespace, workdir: Path, port: int, leaf_der: bytes) -> bool:
    state = workdir / "state"
    state.mkdir()
    store = Store(state / "nbwss.db", state / "nbwss.key")
    settings = Settings(
        store_path=store.path, connection_period_s=60.0, send_timeout_s=10.0,
        keepalive_rate_s=args.keepalive, notification_rate_s=args.notification_rate,
    )  # fmt: skip
    try:
        for index in range(args.groups):
            details = EndpointDetails(
                token=f"bench-token-{index:06d}", priority=1, group_id=f"GROUP{index:06d}",
                host_name=f"ep{index:06d}.bench", url=f"wss://127.0.0.1:{port}/g{index}",
            )  # fmt: skip
            store.add_endpoint(details, leaf_der, fingerprint(leaf_der))
        if args.loop == "uvloop":
            import uvloop

            percent, connected, grown = uvloop.run(
                idle(store, args.groups, args.seconds, settings)
            )
        else:
            percent, connected, grown = asyncio.run(
                idle(store, args.groups, args.seconds, settings)
            )
    finally:
        store.close()
    per_connection = grown / args.groups
    what = (
        f"{args.groups:,} groups idle, keepAlive.scheduledRate={args.keepalive:g}, "
        f"notification.scheduledRate={args.notification_rate:g}, loop {args.loop}"
    )
    cpu_met = percent <= GOAL_CPU_PERCENT
    rss_met = per_connection <= GOAL_KIB
    print(
        f"{what}, CPU over {args.seconds:g} s: nbwss {percent:.2f}% of one core, "
        f"limit {GOAL_CPU_PERCENT:g}%, ratio {percent / GOAL_CPU_PERCENT:.2f}x "
        f"(goal <= 1x): {'met' if cpu_met else 'not met'}",
        flush=True,
    )
    print(
        f"{what}, RSS per connection after {args.seconds:g} s idle: nbwss "
        f"{per_connection:.1f} KiB (once all connected: {connected / args.groups:.1f}), "
        f"limit {GOAL_KIB:g} KiB, ratio {per_connection / GOAL_KIB:.2f}x (goal <= 1x): "
        f"{'met' if rss_met else 'not met'}",
        flush=True,
    )
    return cpu_met and rss_met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench idle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0, help="idle time measured")
    parser.add_argument("--keepalive", type=float, default=30.0, help="keepAlive.scheduledRate")
    parser.add_argument(
        "--notification-rate", type=float, default=5.0, help="notification.scheduledRate"
    )
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)
    logs.configure("error", "json")
    with tempfile.TemporaryDirectory(prefix="nbwss-idle-") as tmp:
        workdir = Path(tmp)
        tls = write_server_cert(workdir)
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.connect", "--serve", str(tls.cert_file),
             str(tls.key_file)],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])},
        )  # fmt: skip
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            ok = run(args, workdir, port, tls.der)
        finally:
            server.terminate()
            server.wait(10)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
