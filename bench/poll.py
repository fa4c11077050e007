"""Poll cost of the REST poller with 10,000 and 100,000 jobs in the catalog.

    .venv/bin/python bench/poll.py [--jobs 10000 100000] [--idle-polls 20]

The stand-in API runs in a child process (HTTPS on 127.0.0.1, trustme certificate), so
the CPU figures are the poller's own (process_time of this process: HTTP client, JSON,
mapping, SQLite). For each catalog size it prints:

- catch-up (sizes up to --catch-up-max, default 10,000: the stand-in filters and sorts
  its whole list for every page, which makes a 100,000-job catch-up take many minutes
  of *its* time): one poll that lists every job (a watermark older than all of them, as
  after a long outage) and queues one DONE per job: pages/s, wall and CPU seconds;
- idle: polls when nothing changed (the watermark is current, the filter matches
  nothing): wall and CPU per poll. The stand-in's own filtering is in the wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.connection
import ssl
import tempfile
import time
from pathlib import Path

import aiohttp
import trustme

from nbwss import logs, pollerstore
from nbwss.properties import Settings
from nbwss.sources.poller import Poller
from nbwss.sources.restclient import Credentials
from nbwss.standin import restapi
from nbwss.standin.restapi import StandinApi, iso
from nbwss.store import Store

BENCHMARK = True  # run by `python -m bench`

API_KEY = "bench-api-key-0123456789"
PAGE_SIZE = 100  # the stand-in's (and NetBackup's) largest page


def _serve(jobs: int, cert_dir: str, conn: multiprocessing.connection.Connection) -> None:
    """Child process: a stand-in with `jobs` finished jobs, one a second up to an hour ago."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(Path(cert_dir) / "ca.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    api = StandinApi(api_keys={API_KEY})
    first = time.time() - 3600 - jobs
    for job_id in range(1, jobs + 1):
        api.upsert_job(job_id, clientName=f"client{job_id % 97}", policyName="bench",
                       state="DONE", status=0, startTime=iso(first + job_id - 60),
                       lastUpdateTime=iso(first + job_id))

    async def serve() -> None:
        async with restapi.serving(api, context) as base_url:
            conn.send(base_url)
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told

    asyncio.run(serve())


async def measure(jobs: int, idle_polls: int, catch_up: bool) -> None:
    with tempfile.TemporaryDirectory() as directory:
        parent_end, child_end = multiprocessing.Pipe()
        child = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(jobs, directory, child_end))
        child.start()
        try:
            base_url = await asyncio.to_thread(parent_end.recv)
            await _measure_against(base_url, Path(directory), jobs, idle_polls, catch_up)
        finally:
            parent_end.send("stop")
            child.join(timeout=30)


async def _measure_against(
    base_url: str, directory: Path, jobs: int, idle_polls: int, catch_up: bool
) -> None:
    store = Store(directory / "nbwss.db", directory / "nbwss.key")
    settings = Settings(store_path=directory / "nbwss.db", rest_api_base_url=base_url,
                        poller_page_size=PAGE_SIZE)
    context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            credentials = Credentials(api_key=API_KEY)
            poller = Poller(settings, store, credentials=credentials)
            client = poller.client = poller.make_client(session)
            since = time.time() - (7200 + jobs if catch_up else 3660)
            pollerstore.write_watermark(store, since)  # older than every job: list them all
            wall, cpu = time.perf_counter(), time.process_time()
            queued = await poller.poll_jobs()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            pages = client.pages_read
            if catch_up:
                print(f"{jobs:>7} jobs  catch-up: {pages} pages, {queued} queued, "
                      f"{pages / wall:7.1f} pages/s, {wall:6.2f} s wall, {cpu:6.2f} s CPU")
            expected = queued
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(idle_polls):
                queued += await poller.poll_jobs()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            assert queued == expected, "an idle poll queued something"
            idle_pages = client.pages_read - pages
            print(f"{jobs:>7} jobs  idle poll: {1000 * wall / idle_polls:7.2f} ms wall, "
                  f"{1000 * cpu / idle_polls:7.2f} ms CPU per poll, "
                  f"{idle_pages / wall:7.1f} pages/s ({idle_pages} pages in {idle_polls} polls)")
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--idle-polls", type=int, default=20)
    parser.add_argument("--catch-up-max", type=int, default=10_000)
    args = parser.parse_args(argv)
    logs.configure("warning", "console")
    for jobs in args.jobs:
        asyncio.run(measure(jobs, args.idle_polls, jobs <= args.catch_up_max))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
