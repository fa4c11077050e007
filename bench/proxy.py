"""Benchmark: what the COMMAND proxy adds over calling the REST API directly.

Runs the stand-in REST API over HTTPS on 127.0.0.1 (trustme certificate) in a child
process, as NetBackup's API is another process, then makes the same GET (the guide's
vmserver example) directly with aiohttp and through `CommandProxy`, at 1 and 64 calls
in flight, and prints calls/s and latency percentiles. Added latency = proxy percentile
- direct percentile. The proxy logs each command (JSON, to /dev/null) as it would in the
daemon. `--api-in-process` serves the API from this process and event loop instead (the
first release's set-up: then at 64 in flight the proxy's CPU and the API's queue up
behind each other, and the added latency is mostly that).

    .venv/bin/python -m bench proxy [--calls 2000] [--rounds 3] [--api-in-process]
                                    [--profile 25]

`--profile N` then profiles proxied calls at 64 in flight (cProfile, CPU time) and
prints the top N functions by their own time: where the proxy's CPU per call goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import ssl
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import aiohttp
import trustme

from nbwss import logs
from nbwss.messages import Message, MessageType, request
from nbwss.properties import Settings
from nbwss.proxy import CommandProxy
from nbwss.standin.restapi import StandinApi, serving

BENCHMARK = True  # run by `python -m bench`

URI = "/netbackup/config/servers/vmservers/vCenter2.domain.com"
GOAL_ADDED_MS = 5.0  # issue 14, item 7: added p50 at 64 in flight
Call = Callable[[], Awaitable[None]]


@dataclass
class Figures:
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # this process's CPU per call: the client's alone when the API is a child


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(call: Call, calls: int, in_flight: int) -> Figures:
    latencies: list[float] = []
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            began = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - began)

    began, cpu = time.perf_counter(), time.process_time()
    async with asyncio.TaskGroup() as group:
        for _ in range(in_flight):
            group.create_task(worker())
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    return Figures(
        calls / wall, percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000,
        cpu / calls * 1e6,
    )  # fmt: skip


def best(runs: list[Figures]) -> Figures:
    """The median of the rounds, figure by figure (a loaded machine makes outliers)."""
    return Figures(
        statistics.median(r.calls_per_s for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        statistics.median(r.cpu_us for r in runs),
    )


def _standin(directory: Path) -> tuple[StandinApi, ssl.SSLContext]:
    """The stand-in with the guide's vmserver; its CA written to `directory`/ca.pem."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    api = StandinApi()
    api.add_vmserver({"serverName": "vCenter2.domain.com", "userId": "root"})
    return api, server_context


def _serve(directory: str, conn: multiprocessing.connection.Connection) -> None:
    """Child process: serve the stand-in until told to stop; send (base URL, token)."""
    api, context = _standin(Path(directory))

    async def serve() -> None:
        async with serving(api, context) as base_url:
            conn.send((base_url, api.login()))
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told

    asyncio.run(serve())


@contextlib.asynccontextmanager
async def api_serving(directory: Path, in_process: bool) -> AsyncIterator[tuple[str, str]]:
    """(base URL, token) of a stand-in in a child process, or in this one's event loop."""
    if in_process:
        api, context = _standin(directory)
        async with serving(api, context) as base_url:
            yield base_url, api.login()
        return
    parent_end, child_end = multiprocessing.Pipe()
    child = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(str(directory), child_end)
    )
    child.start()
    try:
        yield await asyncio.to_thread(parent_end.recv)
    finally:
        parent_end.send("stop")
        await asyncio.to_thread(child.join, 30)


async def run(
    calls: int, rounds: int, directory: Path, log_stream: TextIO, in_process: bool,
    profile_top: int = 0,
) -> bool:
    async with api_serving(directory, in_process) as (base_url, token):
        met = await compare(calls, rounds, directory / "ca.pem", base_url, token, log_stream)
        if profile_top:
            await profile(calls, directory / "ca.pem", base_url, token, profile_top)
        return met


def proxied_call(
    base_url: str, ca_file: Path, token: str
) -> tuple[Settings, dict[str, str], Message]:
    """The proxy's settings (64 in flight), the call's headers and the guide's vmserver
    GET as a COMMAND."""
    settings = Settings(
        rest_api_base_url=base_url, rest_api_ca_file=ca_file, command_max_concurrent=64
    )
    headers = {"Content-Type": "application/json", "Authorization": token}
    message = request(MessageType.COMMAND, {"uri": URI, "method": "GET", "headers": headers},
                      now=time.time())  # fmt: skip
    return settings, headers, message


async def profile(calls: int, ca_file: Path, base_url: str, token: str, top: int) -> None:
    """Print the top `top` functions by own CPU time over `calls` proxied calls at 64."""
    import cProfile
    import pstats

    settings, _, message = proxied_call(base_url, ca_file, token)
    link = _BenchLink()
    async with CommandProxy(settings) as proxy:

        async def proxy_call() -> None:
            await proxy(message, link)

        await measure(proxy_call, 200, 64)
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        await measure(proxy_call, calls, 64)
        profiler.disable()
    print(f"cProfile of {calls} proxied calls at 64 in flight (CPU time, own time first):")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


async def compare(
    calls: int, rounds: int, ca_file: Path, base_url: str, token: str, log_stream: TextIO
) -> bool:
    """Direct and proxied calls, round after round; whether the goal at 64 is met."""
    settings, headers, message = proxied_call(base_url, ca_file, token)
    link = _BenchLink()
    logs.configure(level="info", fmt="json", stream=log_stream)
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(ca_file)), limit=0)
    async with aiohttp.ClientSession(connector=connector) as direct, CommandProxy(
        settings
    ) as proxy:

        async def direct_call() -> None:
            async with direct.get(base_url + URI, headers=headers) as response:
                await response.read()
                assert response.status == 200

        async def proxy_call() -> None:
            response = await proxy(message, link)
            assert isinstance(response.payload, dict)
            assert response.payload["responseCode"] == 200

        print(f"{calls} calls per round, median of {rounds} rounds; stand-in on loopback TLS")
        print(f"{'in flight':>9} {'path':>7} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'CPU us':>8}")
        for in_flight in (1, 64):
            await measure(direct_call, 200, in_flight)  # warm up both pools
            await measure(proxy_call, 200, in_flight)
            direct_runs, proxy_runs = [], []
            for _ in range(rounds):
                direct_runs.append(await measure(direct_call, calls, in_flight))
                proxy_runs.append(await measure(proxy_call, calls, in_flight))
            d, p = best(direct_runs), best(proxy_runs)
            for name, f in (("direct", d), ("proxy", p)):
                print(f"{in_flight:>9} {name:>7} {f.calls_per_s:>9.0f} "
                      f"{f.p50_ms:>8.3f} {f.p99_ms:>8.3f} {f.cpu_us:>8.0f}")
            print(f"{in_flight:>9} {'added':>7} {'':>9} {p.p50_ms - d.p50_ms:>8.3f} "
                  f"{p.p99_ms - d.p99_ms:>8.3f} {p.cpu_us - d.cpu_us:>8.0f}")
    added = p.p50_ms - d.p50_ms
    met = added <= GOAL_ADDED_MS
    print(
        f"COMMAND at 64 in flight, p50: nbwss {p.p50_ms:.2f} ms, limit (direct) {d.p50_ms:.2f} ms, "
        f"ratio {p.p50_ms / d.p50_ms:.2f}x; added {added:.2f} ms "
        f"(goal <= {GOAL_ADDED_MS:g} ms): {'met' if met else 'not met'}",
        flush=True,
    )
    print(
        f"COMMAND CPU per call in this process: nbwss {p.cpu_us:.0f} us, limit (direct) "
        f"{d.cpu_us:.0f} us, ratio {p.cpu_us / d.cpu_us:.2f}x (no goal; load does not skew it)",
        flush=True,
    )
    return met


class _BenchLink:
    group_id = "BENCH"
    host_name = "bench.example"

    async def send(self, message: object) -> None:
        raise NotImplementedError  # the proxy never sends; the session does

    def command_reached_api(self, request: object) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000, help="calls per round and mode")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--api-in-process", action="store_true",
                        help="serve the API from this process and event loop")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="then profile proxied calls at 64 in flight: the top N functions")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory, open(os.devnull, "w") as devnull:
        met = asyncio.run(
            run(args.calls, args.rounds, Path(directory), devnull, args.api_in_process,
                args.profile)
        )
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
