"""The REST poller end to end: NetBackup's API to the cloud endpoint, through the daemon.

The stand-in API, as NetBackup 10.5 (serving only API 9.0 to 12.0, cursor paging) and
as 8.1.1 (API 1.0, offset paging), with pages of 2 rows, plays the guide's scenarios in
the API's real shapes (scheduleType FULL_BACKUP, policyType VMware) while the daemon,
assembled as `nbwss run` assembles it (`build_service`), polls it and delivers to a
`websockets` endpoint. The daemon is restarted and the API goes down, or refuses every
poll with a NetBackup error, mid-scenario; the endpoint must still see exactly the
guide's notifications (ST_FULL, VMWARE), in order, each once (a resend repeats a whole
message with its id, which an app drops by id).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog

from nbwss.daemon import build_service
from nbwss.properties import Settings
from nbwss.standin import restapi
from nbwss.standin.restapi import RELEASES, StandinApi
from nbwss.standin.scenarios import GuideScenarios, Step, comparable
from nbwss.store import Store
from tests.conftest import TlsMaterial, timeout
from tests.peers import Peer, add_endpoint

RATE_S = 0.05


@pytest.fixture(params=["10.5", "8.1.1"])
async def standin(request: pytest.FixtureRequest, tls: TlsMaterial
                  ) -> AsyncIterator[tuple[StandinApi, str]]:
    """NetBackup 10.5 serving only API 9.0-12.0, and 8.1.1 (API 1.0)."""
    api = StandinApi(release=RELEASES[request.param])
    assert (api.release.oldest, api.release.newest) in {("9.0", "12.0"), ("1.0", "1.0")}
    GuideScenarios().prepare(api)
    async with restapi.serving(api, tls.server_context()) as base_url:
        yield api, base_url


@pytest.fixture
def store(short_dir: Path) -> Iterator[Store]:
    db = Store(short_dir / "nbwss.db", short_dir / "nbwss.key")
    yield db
    db.close()


@pytest.fixture
def settings(short_dir: Path, tls: TlsMaterial, standin: tuple[StandinApi, str]) -> Settings:
    password_file = short_dir / "password"
    password_file.write_text("secret\n")
    return Settings(
        store_path=short_dir / "nbwss.db", connection_period_s=0.5,
        notification_rate_s=30.0, keepalive_rate_s=30.0,
        rest_api_base_url=standin[1], rest_api_ca_file=tls.ca_file,
        rest_api_user_name="admin", rest_api_password_file=password_file,
        poller_jobs_rate_s=RATE_S, poller_images_rate_s=RATE_S,
        poller_image_window_days=36500,  # the guide's 2016 images are in the window
        poller_page_size=2,
    )  # fmt: skip


@asynccontextmanager
async def daemon(settings: Settings, store: Store) -> AsyncIterator[None]:
    service = build_service(settings, store)
    task = asyncio.create_task(service.async_run(handle_signals=False))
    try:
        async with asyncio.timeout(timeout(5)):
            await service.ready.wait()
        yield
    finally:
        service.handle_exit()
        async with asyncio.timeout(timeout(10)):
            await task


def first_arrivals(peer: Peer) -> list[tuple[str, Any]]:
    """Each notification as first received: messages seen again by id must be identical."""
    seen: dict[str, dict[str, Any]] = {}
    arrivals: list[tuple[str, Any]] = []
    for message in peer.received("NOTIFICATION"):
        if message["id"] in seen:
            assert message == seen[message["id"]], "a resend must repeat the message whole"
            continue
        seen[message["id"]] = message
        for element in message["payload"]:
            arrivals += [comparable((element["object"], data)) for data in element["data"]]
    return arrivals


def expected(steps: list[Step]) -> list[tuple[str, Any]]:
    return [comparable(item) for step in steps for item in step.expected]


async def play(steps: list[Step], api: StandinApi, peer: Peer, done: list[Step]) -> None:
    """Apply each step and wait until its notifications reached the endpoint."""
    for step in steps:
        step.apply(api)
        done.append(step)
        await peer.wait_for(lambda: len(first_arrivals(peer)) >= len(expected(done)),
                            seconds=15)


async def test_the_guides_scenarios_reach_the_endpoint_across_a_restart_and_an_outage(
    tls: TlsMaterial, store: Store, settings: Settings, standin: tuple[StandinApi, str]
) -> None:
    api, _ = standin
    scenarios = GuideScenarios()
    backup = scenarios.vmware_backup()  # A, B, C, D (images), E, F, G
    done: list[Step] = []
    with structlog.testing.capture_logs() as events:
        async with Peer(tls.server_cert) as peer:
            add_endpoint(store, peer, "ep1.test")
            async with daemon(settings, store):
                await play(backup[:4], api, peer, done)
            # The daemon is down while NetBackup goes on: E happens unseen.
            backup[4].apply(api)
            done.append(backup[4])
            async with daemon(settings, store):
                await peer.wait_for(lambda: len(first_arrivals(peer)) >= len(expected(done)),
                                    seconds=15)
                await outage(api, backup[5:], done)  # F and G happen meanwhile
                await peer.wait_for(lambda: len(first_arrivals(peer)) >= len(expected(done)),
                                    seconds=15)
                await play(scenarios.restore() + scenarios.image_deletion(), api, peer, done)
            arrivals = first_arrivals(peer)
            assert arrivals == expected(done)
            assert len(peer.connections) == 2  # one connection per daemon run
    backups = [n for obj, n in arrivals if obj == "JOB" and n["jobType"] == "BACKUP"]
    assert {n["scheduleType"] for n in backups} == {"ST_FULL"}  # from FULL_BACKUP
    assert {n["clientType"] for obj, n in arrivals if obj == "IMAGE"} == {"VMWARE"}  # VMware
    assert {job["scheduleType"] for job in api.jobs.values()} == {"FULL_BACKUP"}
    assert {image["policyType"] for image in api.images.values()} == {"VMware"}
    downs = [e["reason"] for e in events if e["event"] == "poller.api_down"]
    assert len(downs) == 1  # one event per outage, whichever poll met it first
    if api.release.name == "8.1.1":  # the refusal is logged with NetBackup's own words
        assert all("NetBackup error 8961: the stand-in is told to fail" in r for r in downs)


async def outage(api: StandinApi, steps: list[Step], done: list[Step]) -> None:
    """The API goes away (10.5) or refuses every call with an error body (8.1.1) while
    `steps` happen; then it is back."""
    if api.release.name == "8.1.1":
        api.fail_status = 500
    else:
        api.down = True
    for step in steps:
        step.apply(api)
        done.append(step)
    async with asyncio.timeout(timeout(10)):  # polls hit the outage
        await api.wait_for_requests(len(api.requests) + 4)
    api.down, api.fail_status = False, None
