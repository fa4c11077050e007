"""How fast N server groups connect, and what each connection costs the daemon in RSS.

    .venv/bin/python -m bench connect                # N = 100, then N = 1,000
    .venv/bin/python -m bench connect --groups 5000

Each group has one endpoint, all served on loopback by a `websockets` server in a child
process (so its memory is not the daemon's): one port, one path per endpoint, a
trustme certificate pinned in a real store. In this process, the daemon as `nbwss run`
builds it (`daemon.build_service`, without the status server) runs the connection
process against that store. Reported: time from start to every
group CONNECTED, and the growth of this process's VmRSS divided by N.
Goal (issue 3): 1,000 groups in under 10 s and under 100 KiB per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


from bench import limits  # noqa: E402
from bench.tlsfiles import write_server_cert  # noqa: E402
from nbwss import logs  # noqa: E402
from nbwss.daemon import build_service  # noqa: E402
from nbwss.endpoints import EndpointDetails  # noqa: E402
from nbwss.properties import Settings  # noqa: E402
from nbwss.sdnotify import Notifier  # noqa: E402
from nbwss.store import Store  # noqa: E402
from nbwss.supervisor import MAX_CONCURRENT_DIALS  # noqa: E402
from nbwss.trust import fingerprint  # noqa: E402

BENCHMARK = True
DEFAULT_SIZES = (100, 1000)
GOAL_SECONDS = 10.0
GOAL_KIB = 100.0


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


# -- the endpoint side (child process) ------------------------------------------------------


async def serve_endpoints(cert_file: str, key_file: str) -> None:
    """Answer every CONNECT valid and ack every NOTIFICATION, on any path; print the port."""
    from websockets.asyncio.server import ServerConnection, serve

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)

    async def handler(ws: ServerConnection) -> None:
        async for frame in ws:
            request = json.loads(frame)
            if request.get("subType") == "REQUEST":
                payload = {"valid": True} if request["type"] == "CONNECT" else []
                response = {**request, "subType": "RESPONSE", "payload": payload}
                await ws.send(json.dumps(response))

    async with serve(
        handler, "127.0.0.1", 0, ssl=context, ping_interval=None, compression=None, backlog=1024
    ) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()


# -- the daemon side ----------------------------------------------------------------------


async def connect_groups(store: Store, groups: int) -> tuple[float, float, int]:
    """Run the connection process until all `groups` are CONNECTED.

    Returns wall seconds, this process's CPU seconds meanwhile, and its RSS growth (KiB).
    """
    settings = Settings(store_path=store.path, connection_period_s=60.0, send_timeout_s=10.0)
    service = build_service(settings, store, status=False, notifier=Notifier(None))
    supervisor = service.supervisor
    cpu_before = limits.cpu_s()
    started = time.perf_counter()
    task = asyncio.create_task(service.async_run(handle_signals=False))
    try:
        async with asyncio.timeout(120):
            await service.ready.wait()  # its parts started; the first dial is not made yet
            before = rss_kib()  # so the growth is the connections' alone
            await supervisor.wait_for(lambda: supervisor.connected_count == groups)
        took = time.perf_counter() - started
        cpu = limits.cpu_s() - cpu_before
        grown = rss_kib() - before
    finally:
        service.handle_exit()  # every connection closed with a close frame, then stopped
        await asyncio.wait_for(task, 60)
    return took, cpu, grown


def run_size(groups: int, workdir: Path, port: int, leaf_der: bytes) -> bool:
    state = workdir / f"state-{groups}"
    state.mkdir()
    store = Store(state / "nbwss.db", state / "nbwss.key")
    try:
        for index in range(groups):
            details = EndpointDetails(
                token=f"bench-token-{index:06d}", priority=1, group_id=f"GROUP{index:06d}",
                host_name=f"ep{index:06d}.bench", url=f"wss://127.0.0.1:{port}/g{index}",
            )
            store.add_endpoint(details, leaf_der, fingerprint(leaf_der))
        took, cpu, grown = asyncio.run(connect_groups(store, groups))
    finally:
        store.close()
    limits.connect_against_limit(groups, took, limits.Peer(port, leaf_der), MAX_CONCURRENT_DIALS)
    per_connection = grown / groups
    ok = took < GOAL_SECONDS and per_connection < GOAL_KIB
    print(
        f"groups={groups} all_connected_s={took:.2f} daemon_cpu_s={cpu:.2f} "
        f"rss_growth_kib={grown} "
        f"rss_per_connection_kib={per_connection:.1f} "
        f"goal=<{GOAL_SECONDS:g}s,<{GOAL_KIB:g}KiB {'met' if ok else 'MISSED'}",
        flush=True,
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench connect", description=__doc__)
    parser.add_argument("--groups", type=int, action="append", help="N (repeatable)")
    parser.add_argument("--serve", nargs=2, metavar=("CERT", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve_endpoints(*args.serve))
        return 0
    logs.configure("error", "json")
    with tempfile.TemporaryDirectory(prefix="nbwss-bench-") as tmp:
        workdir = Path(tmp)
        tls = write_server_cert(workdir)
        cert_file, key_file, leaf_der = tls.cert_file, tls.key_file, tls.der
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.connect", "--serve", str(cert_file), str(key_file)],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])},
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            results = [run_size(n, workdir, port, leaf_der) for n in args.groups or DEFAULT_SIZES]
        finally:
            server.terminate()
            server.wait(10)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
