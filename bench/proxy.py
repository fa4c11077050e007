"""Benchmark: what the COMMAND proxy adds over calling the REST API directly.

Runs the stand-in REST API over HTTPS on 127.0.0.1 (trustme certificate), then makes
the same GET (the guide's vmserver example) directly with aiohttp and through
`CommandProxy`, at 1 and 64 calls in flight, and prints calls/s and latency
percentiles. Added latency = proxy percentile - direct percentile. The proxy logs each
command (JSON, to /dev/null) as it would in the daemon. Both sides share one process
and event loop with the stand-in, so absolute figures are pessimistic; the difference
is what matters.

    .venv/bin/python bench/proxy.py [--calls 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import aiohttp
import trustme

from nbwss import logs
from nbwss.messages import MessageType, request
from nbwss.properties import Settings
from nbwss.proxy import CommandProxy
from nbwss.standin.restapi import StandinApi, start

BENCHMARK = True  # run by `python -m bench`

URI = "/netbackup/config/servers/vmservers/vCenter2.domain.com"
Call = Callable[[], Awaitable[None]]


@dataclass
class Figures:
    calls_per_s: float
    p50_ms: float
    p99_ms: float


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

    began = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(in_flight):
            group.create_task(worker())
    wall = time.perf_counter() - began
    return Figures(
        calls / wall, percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
    )


def best(runs: list[Figures]) -> Figures:
    """The median of the rounds, figure by figure (a loaded machine makes outliers)."""
    return Figures(
        statistics.median(r.calls_per_s for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
    )


async def run(calls: int, rounds: int, directory: Path, log_stream: TextIO) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client_context = ssl.create_default_context(cafile=str(ca_file))

    api = StandinApi()
    api.add_vmserver({"serverName": "vCenter2.domain.com", "userId": "root"})
    token = api.login()
    standin = await start(api, server_context)
    settings = Settings(
        rest_api_base_url=standin.base_url, rest_api_ca_file=ca_file, command_max_concurrent=64
    )
    message = request(
        MessageType.COMMAND,
        {"uri": URI, "method": "GET",
         "headers": {"Content-Type": "application/json", "Authorization": token}},
        now=time.time(),
    )
    link = _BenchLink()
    headers = {"Content-Type": "application/json", "Authorization": token}

    if True:
        logs.configure(level="info", fmt="json", stream=log_stream)
        connector = aiohttp.TCPConnector(ssl=client_context, limit=0)
        async with aiohttp.ClientSession(connector=connector) as direct, CommandProxy(
            settings
        ) as proxy:

            async def direct_call() -> None:
                async with direct.get(standin.base_url + URI, headers=headers) as response:
                    await response.read()
                    assert response.status == 200

            async def proxy_call() -> None:
                response = await proxy(message, link)
                assert isinstance(response.payload, dict)
                assert response.payload["responseCode"] == 200

            print(f"{calls} calls per round, median of {rounds} rounds; stand-in on loopback TLS")
            print(f"{'in flight':>9} {'path':>7} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
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
                          f"{f.p50_ms:>8.3f} {f.p99_ms:>8.3f}")
                print(f"{in_flight:>9} {'added':>7} {'':>9} {p.p50_ms - d.p50_ms:>8.3f} "
                      f"{p.p99_ms - d.p99_ms:>8.3f}")
    await standin.stop()


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
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory, open(os.devnull, "w") as devnull:
        asyncio.run(run(args.calls, args.rounds, Path(directory), devnull))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
