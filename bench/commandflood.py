"""A COMMAND flood against the real daemon: what `command.maxQueued` saves in memory.

    .venv/bin/python -m bench commandflood [--commands 300] [--size-kib 1024]

Loopback only. `nbwss run` runs as a subprocess; its one endpoint (`tests.peers.Peer`,
the `websockets` library, trustme certificate pinned in a real store) sends
`--commands` COMMANDs of `--size-kib` KiB each (a POST whose `parameters` is that big)
as fast as it can, at a REST API (aiohttp, HTTPS, in this process) that holds every
call until the flood is over. A last COMMAND outside the allowed prefixes is the marker:
the daemon reads frames in order, so once its 403 is back, every COMMAND has been read
and is queued, at the API or answered. Then the daemon's peak RSS (`VmHWM`) is read
from /proc, against its RSS before the flood.

Twice: with the default bound (`command.maxQueued=64`: 16 at the API, 48 waiting, the
rest answered 503 at once) and with an effectively unbounded one (1,000,000), as
before the bound existed. Exit 1 if the bounded daemon grew by more than half what the
unbounded one did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `tests` is a package at the repository root
    sys.path.insert(0, str(REPO))

import trustme  # noqa: E402
from aiohttp import web  # noqa: E402
from tests.peers import Peer, add_endpoint  # noqa: E402

from bench.limits import COST, Goal, figure  # noqa: E402
from nbwss.store import Store  # noqa: E402

BENCHMARK = True
UNBOUNDED = 1_000_000
MARKER_URI = "/outside/the/allowed/prefixes"


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


class HeldApi:
    """A REST API that holds every call until `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.calls += 1
        await self.release.wait()
        return web.json_response({"ok": True})


def command(index: int, body: str, uri: str = "/netbackup/flood") -> dict[str, Any]:
    return {
        "version": "1.0", "id": f"FLOOD-{index:06d}", "type": "COMMAND", "subType": "REQUEST",
        "timeStamp": int(time.time()),
        "payload": {"uri": uri, "method": "POST", "parameters": body,
                    "headers": {"Content-Type": "application/json"}},
    }  # fmt: skip


def responses(peer: Peer) -> list[dict[str, Any]]:
    return peer.received("COMMAND", "RESPONSE")


async def flood(workdir: Path, max_queued: int, commands: int, size_kib: int) -> dict[str, Any]:
    """One daemon, one flood; its figures."""
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    ca_file = workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    api = HeldApi()
    app = web.Application(client_max_size=(size_kib + 64) * 1024)
    app.router.add_route("*", "/{tail:.*}", api.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(server_context)
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context).start()
    api_port = runner.addresses[0][1]
    config = workdir / "nbwss.properties"
    config.write_text(
        f"store.path={workdir / 'nbwss.db'}\nconnectionInfo.period=0.3\nlog.level=error\n"
        f"restApi.baseUrl=https://127.0.0.1:{api_port}\nrestApi.caFile={ca_file}\n"
        f"command.timeout=600\ncommand.maxQueued={max_queued}\n"
        f"status.listen={workdir / 's.sock'}\n"
    )
    body = "x" * (size_kib * 1024)
    try:
        async with Peer(leaf) as peer:
            store = Store(workdir / "nbwss.db", workdir / "nbwss.key")
            try:
                add_endpoint(store, peer, "flood.bench")
            finally:
                store.close()
            daemon = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "nbwss", "-c", str(config), "run",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                await peer.wait_for(lambda: peer.connected, 30)
                before = memory_kib(daemon.pid, "VmRSS")
                began = time.perf_counter()
                for index in range(commands):
                    await peer.send(command(index, body))
                await peer.send(command(commands, "", MARKER_URI))
                await peer.wait_for(
                    lambda: any(r["id"] == f"FLOOD-{commands:06d}" for r in responses(peer)), 120
                )
                read_s = time.perf_counter() - began
                peak = memory_kib(daemon.pid, "VmHWM")
                refused = sum(r["payload"]["responseCode"] == 503 for r in responses(peer))
                api.release.set()
                await peer.wait_for(lambda: len(responses(peer)) == commands + 1, 300)
                statuses = sorted({r["payload"]["responseCode"] for r in responses(peer)})
            finally:
                daemon.terminate()
                await daemon.wait()
    finally:
        await runner.cleanup()
    return {
        "max_queued": max_queued, "rss_before_mib": before / 1024, "rss_peak_mib": peak / 1024,
        "grown_mib": (peak - before) / 1024, "answered_503_at_once": refused,
        "reached_api": api.calls, "read_s": read_s, "statuses": statuses,
    }  # fmt: skip


def show(figures: dict[str, Any]) -> None:
    bound = "unbounded" if figures["max_queued"] == UNBOUNDED else figures["max_queued"]
    print(
        f"command.maxQueued={bound}: rss_before={figures['rss_before_mib']:.0f}MiB "
        f"rss_peak={figures['rss_peak_mib']:.0f}MiB grown={figures['grown_mib']:.0f}MiB "
        f"answered_503_at_once={figures['answered_503_at_once']} "
        f"reached_api={figures['reached_api']} flood_read_in={figures['read_s']:.2f}s "
        f"statuses={','.join(map(str, figures['statuses']))}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench commandflood", description=__doc__)
    parser.add_argument("--commands", type=int, default=300)
    parser.add_argument("--size-kib", type=int, default=1024)
    parser.add_argument("--max-queued", type=int, default=64, help="the bounded run's bound")
    args = parser.parse_args(argv)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "src")])
    results = []
    for bound in (args.max_queued, UNBOUNDED):
        with tempfile.TemporaryDirectory(prefix="nbw") as tmp:
            figures = asyncio.run(flood(Path(tmp), bound, args.commands, args.size_kib))
        show(figures)
        results.append(figures)
    bounded, unbounded = results
    # The bound's own size, Q bodies, beside what the bounded run grew: how many bytes
    # each queued COMMAND costs per byte of body (for information, no goal).
    figure("commandflood growth vs Q bodies", bounded["grown_mib"],
           args.max_queued * args.size_kib / 1024, "MiB", COST)
    held = figure("commandflood growth vs unbounded", bounded["grown_mib"],
                  max(unbounded["grown_mib"], 1.0), "MiB", Goal(0.5, higher_is_better=False))
    print(json.dumps({"bounded": bounded, "unbounded": unbounded}), flush=True)
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
