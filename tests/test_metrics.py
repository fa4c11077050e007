"""/metrics as Prometheus users expect: build info, process figures, no `_created`
series, and per group the last ack time and the backlog's age, scraped from a real
status server over its Unix socket."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from nbwss import __version__
from nbwss.status import StatusServer
from nbwss.store import Store
from tests.test_status import queue, serving, stop


@pytest.fixture
async def metrics_text(state_dir: Path, short_store: Store) -> AsyncIterator[str]:
    with short_store.transaction() as conn:  # a group that acknowledged up to seq 1, long ago
        conn.execute("INSERT INTO group_cursors VALUES ('G1', 1, 1700000000.0)")
    queue(short_store, "JOB", "JOB", queued_at=time.time() - 90)
    server = StatusServer(str(state_dir / "nbwss.sock"), short_store)
    task = await serving(server)
    connector = aiohttp.UnixConnector(path=str(state_dir / "nbwss.sock"))
    async with aiohttp.ClientSession(connector=connector) as session, session.get(
        "http://localhost/metrics"
    ) as response:
        yield await response.text()
    await stop(task)


def sample(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " ")
                or line.startswith(name + "{"))
    return float(line.rsplit(" ", 1)[1])


async def test_build_info_and_process_figures_are_exported(metrics_text: str) -> None:
    assert f'nbwss_build_info{{version="{__version__}"}} 1.0' in metrics_text
    assert sample(metrics_text, "process_resident_memory_bytes") > 0
    assert sample(metrics_text, "process_open_fds") > 0


async def test_no_created_series(metrics_text: str) -> None:
    assert "_created" not in metrics_text


async def test_last_ack_time_and_backlog_age_per_group(metrics_text: str) -> None:
    assert sample(metrics_text, 'nbwss_last_ack_timestamp_seconds{group="G1"}') == 1.7e9
    assert sample(metrics_text, 'nbwss_oldest_unacked_age_seconds{group="G1"}') >= 90
    assert sample(metrics_text, 'nbwss_backlog{group="G1"}') == 1  # seq 2 only


def test_poller_up_follows_the_api() -> None:
    from nbwss.metrics import REGISTRY
    from nbwss.sources.poller import ApiHealth

    health = ApiHealth(time.monotonic)
    health.failed("jobs", "connection refused")
    assert REGISTRY.get_sample_value("nbwss_poller_up", {"poll": "jobs"}) == 0
    health.succeeded("jobs")
    assert REGISTRY.get_sample_value("nbwss_poller_up", {"poll": "jobs"}) == 1
