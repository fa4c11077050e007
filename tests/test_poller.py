"""The REST poller against the stand-in NetBackup API over real loopback HTTPS.

The stand-in plays the guide's scenarios; the assertions are on the outbox (a real
SQLite store), which is what the delivery side sends on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import structlog

from nbwss.errors import ConfigError
from nbwss.properties import Settings
from nbwss.sources.poller import Poller
from nbwss.sources.restclient import ApiUnavailableError, parse_page
from nbwss.standin.restapi import StandinApi
from nbwss.standin.scenarios import GuideScenarios, Step, comparable, outbox_rows
from nbwss.store import Store
from nbwss.wake import Waker
from tests.conftest import TlsMaterial, timeout

RATE_S = 0.05
# Polls to wait after a step: enough that one poll started after the step, and that a
# deletion is confirmed (two listings without the image).
POLLS_PER_STEP = 3
JOBS_PATH = "/netbackup/admin/jobs"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "nbwss.db", tmp_path / "nbwss.key")
    yield store
    store.close()


@pytest.fixture
def settings(tmp_path: Path, tls: TlsMaterial, standin: tuple[StandinApi, str]) -> Settings:
    password_file = tmp_path / "password"
    password_file.write_text("secret\n")
    return Settings(
        store_path=tmp_path / "nbwss.db", rest_api_base_url=standin[1],
        rest_api_ca_file=tls.ca_file, rest_api_user_name="admin",
        rest_api_password_file=password_file, poller_jobs_rate_s=RATE_S,
        poller_images_rate_s=RATE_S, poller_image_window_days=36500,
        poller_page_size=2,  # several pages even for this small catalog
    )


@asynccontextmanager
async def polling(settings: Settings, store: Store, waker: Waker | None = None,
                  clock: Callable[[], float] = time.time) -> AsyncIterator[Poller]:
    poller = Poller(settings, store, waker=waker, env={}, clock=clock)
    task = asyncio.create_task(poller.run())
    try:
        async with asyncio.timeout(timeout(10)):
            await poller.wait_polls(jobs=1, images=1)
        yield poller
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def settle(poller: Poller) -> None:
    """Wait until both lists were polled again after whatever just changed."""
    async with asyncio.timeout(timeout(10)):
        await poller.wait_polls(jobs=poller.counts.jobs + POLLS_PER_STEP,
                                images=poller.counts.images + POLLS_PER_STEP)


async def play(poller: Poller, api: StandinApi, steps: list[Step]) -> None:
    for step in steps:
        step.apply(api)
        await settle(poller)


def queued(store: Store) -> list[tuple[str, Any]]:
    return [comparable(n) for n in outbox_rows(store)]


def expected(steps: list[Step]) -> list[tuple[str, Any]]:
    return [comparable(n) for step in steps for n in step.expected]


async def test_guide_scenarios_queue_the_guides_notifications_in_order(
    settings: Settings, store: Store, standin: tuple[StandinApi, str]
) -> None:
    api, _ = standin
    steps = GuideScenarios().all_steps()
    waker = Waker()
    woken = asyncio.Event()
    waker.register(woken)
    async with polling(settings, store, waker) as poller:
        assert outbox_rows(store) == []  # the catalog's older images are a baseline
        await play(poller, api, steps)
        await settle(poller)  # the overlap re-reads recent jobs: nothing may repeat
    assert queued(store) == expected(steps)
    assert woken.is_set()
    assert [n[1]["operationId"] for n in outbox_rows(store, ["IMAGE"])] == [
        "CREATE", "UPDATE", "DELETE"]


async def test_restart_mid_poll_neither_repeats_nor_skips(
    settings: Settings, store: Store, standin: tuple[StandinApi, str]
) -> None:
    api, _ = standin
    steps = GuideScenarios().all_steps()
    async with polling(settings, store) as poller:
        await play(poller, api, steps[:3])  # A, B, C
    async with polling(settings, store) as poller:
        await play(poller, api, steps[3:5])  # D, E by a new poller on the same database
        gate = api.hold(JOBS_PATH)
        seen = len(api.requests)
        steps[5].apply(api)  # F happens while a jobs poll is stuck mid-listing ...
        async with asyncio.timeout(timeout(10)):
            while not any(r.path == JOBS_PATH for r in api.requests[seen:]):
                await api.wait_for_requests(len(api.requests) + 1)
    gate.set()  # ... and that poller is stopped there, before it could commit
    async with polling(settings, store) as poller:
        await settle(poller)
        await play(poller, api, steps[6:])
    assert queued(store) == expected(steps)


@pytest.mark.parametrize("fault", ["down", "503", "token_revoked"])
async def test_outage_mid_scenario_loses_nothing_and_logs_once(
    settings: Settings, store: Store, standin: tuple[StandinApi, str], fault: str
) -> None:
    api, _ = standin
    steps = GuideScenarios().all_steps()
    with structlog.testing.capture_logs() as events:
        async with polling(settings, store) as poller:
            await play(poller, api, steps[:1])
            if fault == "down":
                api.down = True
            elif fault == "503":
                api.fail_status = 503
            else:
                api.tokens.clear()  # the JWT expired: a new login must cure it silently
            steps[1].apply(api)
            steps[2].apply(api)
            async with asyncio.timeout(timeout(10)):
                await api.wait_for_requests(len(api.requests) + 6)  # retries, all failing
            if fault != "token_revoked":
                assert len(outbox_rows(store)) == 1
            api.down, api.fail_status = False, None
            await settle(poller)
            await play(poller, api, steps[3:])
    assert queued(store) == expected(steps)
    names = [e["event"] for e in events if e["event"].startswith("poller.api_")]
    if fault == "token_revoked":
        assert names == []
        assert sum(e["event"] == "poller.logged_in" for e in events) == 2
    else:
        assert names == ["poller.api_down", "poller.api_recovered"]


async def test_first_start_fixes_a_watermark_so_a_quiet_start_misses_nothing(
    settings: Settings, store: Store, standin: tuple[StandinApi, str]
) -> None:
    api, _ = standin
    steps = GuideScenarios().vmware_backup()
    now = [time.time()]
    async with polling(settings, store, clock=lambda: now[0]) as poller:
        await settle(poller)  # nothing happens for a while ...
        now[0] += 3600  # ... an hour, say, between two polls (a long poller.jobsRate)
        await play(poller, api, steps[:1])
    assert queued(store) == expected(steps[:1])


async def test_api_key_is_sent_as_authorization_and_never_logged(
    settings: Settings, store: Store, standin: tuple[StandinApi, str], tmp_path: Path
) -> None:
    api, _ = standin
    api.api_keys.add("k3y-0123456789")
    key_file = tmp_path / "api.key"
    key_file.write_text("k3y-0123456789\n")
    keyed = replace(settings, rest_api_key_file=key_file, rest_api_user_name=None)
    with structlog.testing.capture_logs() as events:
        async with polling(keyed, store):
            pass
    polls = [r for r in api.requests if r.path == JOBS_PATH]
    assert polls
    assert {r.headers["Authorization"] for r in polls} == {"k3y-0123456789"}
    assert not any(r.path.endswith("/login") for r in api.requests)
    assert "k3y-0123456789" not in repr(events)


def test_missing_secret_file_fails_at_construction(settings: Settings, store: Store) -> None:
    gone = replace(settings, rest_api_password_file=settings.database.with_name("nope"))
    with pytest.raises(ConfigError, match=r"^restApi.passwordFile: cannot read .*nope"):
        Poller(gone, store, env={})
    with pytest.raises(ConfigError, match=r"needs restApi\.apiKeyFile"):
        Poller(replace(settings, rest_api_user_name=None), store, env={})


def test_pages_that_are_not_the_documented_shape_are_refused() -> None:
    assert parse_page({"data": [], "meta": {"pagination": {"offset": 0}}}, 0, 10).next_offset \
        is None
    assert parse_page({"data": [{"attributes": {}}] * 2}, 4, 2).next_offset == 6
    assert parse_page({"data": [{"attributes": {}}]}, 4, 2).next_offset is None
    bodies: list[Any] = [{"errors": []}, [], {"data": [1]},
              {"data": [], "meta": {"pagination": {"next": 0}}}]
    for body in bodies:
        with pytest.raises(ApiUnavailableError, match="malformed"):
            parse_page(body, 0, 10)
