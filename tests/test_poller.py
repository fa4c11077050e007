"""The REST poller against the stand-in NetBackup API over real loopback HTTPS.

The stand-in imitates NetBackup 10.5 (API 9.0 to 12.0: cursor paging of jobs) and 8.1.1
(API 1.0: offset paging) and refuses what those refuse; it plays the guide's scenarios
in the API's real record shapes. The assertions are on the outbox (a real SQLite
store), which is what the delivery side sends on, and on what the stand-in received.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import structlog

from nbwss import pollerstore
from nbwss.errors import ConfigError
from nbwss.metrics import REGISTRY
from nbwss.properties import Settings
from nbwss.sources.poller import Poller
from nbwss.standin import restapi
from nbwss.standin.model import SeenRequest
from nbwss.standin.restapi import RELEASES, StandinApi
from nbwss.standin.scenarios import GuideScenarios, Step, comparable, outbox_rows
from nbwss.store import Store
from nbwss.wake import Waker
from tests.conftest import TlsMaterial, timeout

RATE_S = 0.05
# Polls to wait after a step: enough that one poll started after the step, and that a
# deletion is confirmed (two listings without the image).
POLLS_PER_STEP = 3
JOBS_PATH = "/netbackup/admin/jobs"
IMAGES_PATH = "/netbackup/catalog/images"
FIXTURES = Path(__file__).parent / "fixtures" / "netbackup-api"


@pytest.fixture(params=["10.5", "8.1.1"])
async def standin(request: pytest.FixtureRequest, tls: TlsMaterial
                  ) -> AsyncIterator[tuple[StandinApi, str]]:
    """The stand-in as NetBackup 10.5 and as 8.1.1, the guide's catalog prepared."""
    api = StandinApi(release=RELEASES[request.param])
    GuideScenarios().prepare(api)
    async with restapi.serving(api, tls.server_context()) as base_url:
        yield api, base_url


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


def to(api: StandinApi, path: str) -> list[SeenRequest]:
    return [r for r in api.requests if r.path == path]


def accept_versions(requests: list[SeenRequest]) -> list[str]:
    return [r.headers.get("Accept", "").rpartition("version=")[2] for r in requests]


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
    # The API said FULL_BACKUP and VMware; the notifications say what the guide shows.
    assert {api.jobs[144]["scheduleType"], api.images[GuideScenarios().backup_id(
        "DummyTestVM", 1459811698)]["policyType"]} == {"FULL_BACKUP", "VMware"}
    assert {n["scheduleType"] for _, n in outbox_rows(store, ["JOB"])} == {"ST_FULL"}
    assert {n["clientType"] for _, n in outbox_rows(store, ["IMAGE"])} == {"VMWARE"}


async def test_each_release_is_paged_its_own_way_with_encoded_queries(
    settings: Settings, store: Store, standin: tuple[StandinApi, str]
) -> None:
    api, _ = standin
    cursor = api.release.name == "10.5"
    async with polling(settings, store) as poller:
        await play(poller, api, GuideScenarios().vmware_backup()[:3])
    jobs = [r.raw_path for r in to(api, JOBS_PATH)]
    later_pages = [p for p in jobs if "page%5Bafter%5D=" in p or "page%5Boffset%5D=" in p]
    assert later_pages, "three jobs in pages of 2: a second page was asked for"
    assert all(("page%5Bafter%5D=" in p) == cursor for p in later_pages)
    assert all(("page%5Boffset%5D=" in p) == (not cursor) for p in later_pages)
    for raw in jobs:
        assert "filter=lastUpdateTime%20gt%20" in raw
        assert "+" not in raw
        assert "sort=-lastUpdateTime" in raw
        assert "page%5Blimit%5D=2" in raw
    for raw in (r.raw_path for r in to(api, IMAGES_PATH)):
        assert "filter=backupTime%20ge%20" in raw
        assert "%20and%20backupTime%20le%20" in raw
        assert "sort" not in raw


async def test_api_version_is_negotiated_once_logged_and_shown(
    settings: Settings, store: Store, standin: tuple[StandinApi, str]
) -> None:
    api, _ = standin
    with structlog.testing.capture_logs() as events:
        async with polling(settings, store) as poller:
            await settle(poller)
            view = poller.status_view()
    logins = to(api, "/netbackup/login")
    newest = api.release.newest
    # 14.0 down to the release's newest, each refused with 406 but the last.
    assert accept_versions(logins) == [f"{v}.0" for v in range(14, int(float(newest)) - 1, -1)]
    assert json.loads(logins[-1].body)["userName"] == "admin"
    assert set(accept_versions(to(api, JOBS_PATH) + to(api, IMAGES_PATH))) == {newest}
    assert [e["version"] for e in events if e["event"] == "poller.api_version"] == [newest]
    assert view["api_version"] == newest
    assert view["api_version_setting"] == "auto"


@pytest.mark.parametrize("standin", ["8.1.1"], indirect=True)
async def test_an_upgraded_server_is_negotiated_again_and_nothing_is_lost(
    settings: Settings, store: Store, standin: tuple[StandinApi, str]
) -> None:
    api, _ = standin
    steps = GuideScenarios().vmware_backup()
    with structlog.testing.capture_logs() as events:
        async with polling(settings, store) as poller:
            await play(poller, api, steps[:2])
            api.release = RELEASES["10.5"]  # the upgrade: API 1.0 is refused from now on
            await play(poller, api, steps[2:])
            assert poller.status_view()["api_version"] == "12.0"
    assert queued(store) == expected(steps)
    assert [e["version"] for e in events if e["event"] == "poller.api_version"] == [
        "1.0", "12.0"]
    assert any("page%5Bafter%5D=" in r.raw_path for r in to(api, JOBS_PATH))


@pytest.mark.parametrize("standin", ["10.5"], indirect=True)
async def test_a_fixed_version_the_server_refuses_is_reported_with_its_error(
    settings: Settings, store: Store, standin: tuple[StandinApi, str]
) -> None:
    api, _ = standin
    fixed = replace(settings, rest_api_version="13.0")
    poller = Poller(fixed, store, env={})
    with structlog.testing.capture_logs() as events:
        task = asyncio.create_task(poller.run())
        async with asyncio.timeout(timeout(10)):
            await api.wait_for_requests(3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert set(accept_versions(api.requests)) == {"13.0"}
    [down] = [e for e in events if e["event"] == "poller.api_down"]
    assert "API version 13.0 (restApi.apiVersion) refused" in down["reason"]
    assert "HTTP 406, NetBackup error 8961" in down["reason"]


@pytest.mark.parametrize("fault", ["down", "503", "token_revoked", "refused"])
@pytest.mark.parametrize("standin", ["10.5"], indirect=True)
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
            elif fault in ("503", "refused"):
                api.fail_status = 503 if fault == "503" else 400
            else:
                api.tokens.clear()  # the JWT expired: a new login must cure it silently
            steps[1].apply(api)
            steps[2].apply(api)
            async with asyncio.timeout(timeout(10)):
                await api.wait_for_requests(len(api.requests) + 6)  # retries, all failing
            if fault != "token_revoked":
                assert len(outbox_rows(store)) == 1  # nothing committed meanwhile
            api.down, api.fail_status = False, None
            await settle(poller)
            await play(poller, api, steps[3:])
    assert queued(store) == expected(steps)
    names = [e["event"] for e in events
             if e["event"] in ("poller.api_down", "poller.api_recovered")]
    if fault == "token_revoked":
        assert names == []
        assert sum(e["event"] == "poller.logged_in" for e in events) == 2
        return
    assert names == ["poller.api_down", "poller.api_recovered"]
    if fault == "refused":  # the admin sees NetBackup's code and message, not just "400"
        [down] = [e for e in events if e["event"] == "poller.api_down"]
        assert "HTTP 400, NetBackup error 8961: the stand-in is told to fail" in down["reason"]


@pytest.mark.parametrize("standin", ["10.5"], indirect=True)
async def test_odd_records_are_set_aside_once_and_the_poll_goes_on(
    settings: Settings, store: Store, standin: tuple[StandinApi, str]
) -> None:
    """A job whose parentJobId no Java endpoint can read (outside a long) and a job in a
    state nbwss does not know are set aside; every other notification still flows
    (Veritas's own example job, IMAGEDELETE with an empty clientName, among them); the
    job that later changes into something mappable is reported then."""
    api, _ = standin
    steps = GuideScenarios().vmware_backup()
    example = json.loads((FIXTURES / "admin-jobs-example.json").read_text())["data"][0]
    before = REGISTRY.get_sample_value("nbwss_poller_records_set_aside_total",
                                       {"object": "JOB"}) or 0.0
    with structlog.testing.capture_logs() as events:
        async with polling(settings, store) as poller:
            attributes = copy.deepcopy(example["attributes"])
            del attributes["lastUpdateTime"]  # stamped now by the stand-in
            api.upsert_job(1, **attributes)
            api.upsert_job(901, clientName="c", parentJobId=2**63)
            api.upsert_job(900, state="TELEPORTING", clientName="c")
            await play(poller, api, steps[:3])
            await settle(poller)  # overlap re-reads: still logged once
            assert poller.status_view()["records_set_aside"] == 2
            api.upsert_job(900, state="DONE", status=0)  # it changed, and maps now
            await play(poller, api, steps[3:])
            assert poller.status_view()["records_set_aside"] == 1
    set_aside = [(e["id"], e["reason"]) for e in events
                 if e["event"] == "poller.record_set_aside"]
    assert sorted(set_aside) == [
        ("900", "state 'TELEPORTING' is not one nbwss maps"),
        ("901", "integer 9223372036854775808 in JOB data is outside the signed 64-bit range")]
    jobs = [n for _, n in outbox_rows(store, ["JOB"])]
    assert [n["jobId"] for n in jobs] == [1, 144, 145, 146, 900, 146, 145, 144]
    assert (jobs[0]["clientName"], jobs[0]["jobType"]) == ("", "IMAGEDELETE")
    assert [r.record_id for r in pollerstore.set_aside_rows(store)] == ["901"]
    after = REGISTRY.get_sample_value("nbwss_poller_records_set_aside_total",
                                      {"object": "JOB"})
    assert after == before + 2


@pytest.mark.parametrize("standin", ["10.5"], indirect=True)
async def test_a_time_that_is_no_number_sets_its_record_aside(
    settings: Settings, store: Store, standin: tuple[StandinApi, str]
) -> None:
    """NaN, Infinity and a 400-digit integer in a job's time (a page Python's own json
    reads) set that record aside; they used to escape the poll as ValueError or
    OverflowError."""
    api, _ = standin
    steps = GuideScenarios().vmware_backup()
    faults = {902: math.nan, 903: math.inf, 904: -math.inf, 905: 10**400, 906: 1e300}
    with structlog.testing.capture_logs() as events:
        async with polling(settings, store) as poller:
            for job_id, start_time in faults.items():
                api.upsert_job(job_id, clientName="c", startTime=start_time)
            await play(poller, api, steps)
            assert poller.status_view()["records_set_aside"] == len(faults)
    set_aside = sorted((e["id"], e["reason"]) for e in events
                       if e["event"] == "poller.record_set_aside")
    assert [record_id for record_id, _ in set_aside] == [str(j) for j in sorted(faults)]
    assert all(reason.startswith("startTime is not a time") for _, reason in set_aside)
    assert queued(store) == expected(steps)


@pytest.mark.parametrize("standin", ["10.5"], indirect=True)
async def test_an_image_set_aside_is_neither_created_nor_deleted(
    settings: Settings, store: Store, standin: tuple[StandinApi, str]
) -> None:
    api, _ = standin
    old = GuideScenarios().backup_id("DummyTestVM", 1459811686)
    async with polling(settings, store) as poller:
        api.upsert_image(old, clientName=None)  # a tracked image turns odd
        api.upsert_image("odd_1459811700", clientName="")
        await settle(poller)
        assert poller.status_view()["records_set_aside"] == 2
        api.upsert_image(old, clientName="DummyTestVM")
        await settle(poller)
        assert poller.status_view()["records_set_aside"] == 1
    assert outbox_rows(store) == []  # back as it was: no UPDATE, and never a DELETE


@pytest.mark.parametrize("standin", ["10.5"], indirect=True)
async def test_login_sends_the_domain_and_renews_before_the_token_expires(
    settings: Settings, store: Store, standin: tuple[StandinApi, str]
) -> None:
    api, _ = standin
    now = [time.time()]
    api.clock = lambda: now[0]
    api.token_validity_s = 3600
    domain = replace(settings, rest_api_domain_name="ACME", rest_api_domain_type="NT")
    with structlog.testing.capture_logs() as events:
        async with polling(domain, store, clock=lambda: now[0]) as poller:
            now[0] += 0.85 * 3600  # the token is still valid, but most of its life is gone
            await settle(poller)
    logins = [r for r in to(api, "/netbackup/login") if json.loads(r.body).get("userName")]
    accepted = [r for r in logins if r.headers["Accept"].endswith("version=12.0")]
    assert len(accepted) == 2  # renewed ahead of time, not after a 401
    body = json.loads(accepted[0].body)
    assert (body["domainName"], body["domainType"]) == ("ACME", "NT")
    assert accepted[0].headers["Content-Type"] == "application/vnd.netbackup+json;version=12.0"
    assert [e["validity_s"] for e in events if e["event"] == "poller.logged_in"] == [3600, 3600]
    assert not [e for e in events if e["event"] == "poller.api_down"]


@pytest.mark.parametrize("standin", ["10.5"], indirect=True)
async def test_a_multi_factor_login_stops_the_poller_with_a_configuration_error(
    settings: Settings, store: Store, standin: tuple[StandinApi, str]
) -> None:
    api, _ = standin
    api.token_type = "MFA"
    with structlog.testing.capture_logs() as events, pytest.raises(
            ConfigError, match="tokenType 'MFA', not BEARER"):
        async with asyncio.timeout(timeout(10)):
            await Poller(settings, store, env={}).run()
    assert [e["event"] for e in events if e["event"] == "poller.stopped"] == ["poller.stopped"]


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


@pytest.mark.parametrize("standin", ["10.5"], indirect=True)
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


@pytest.mark.parametrize("standin", ["10.5"], indirect=True)
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
    polls = to(api, JOBS_PATH)
    assert polls
    assert {r.headers["Authorization"] for r in polls} == {"k3y-0123456789"}
    assert not any(r.path.endswith("/login") for r in api.requests)
    assert "k3y-0123456789" not in repr(events)


@pytest.mark.parametrize("standin", ["10.5"], indirect=True)
def test_missing_secret_file_fails_at_construction(settings: Settings, store: Store) -> None:
    gone = replace(settings, rest_api_password_file=settings.database.with_name("nope"))
    with pytest.raises(ConfigError, match=r"^restApi.passwordFile: cannot read .*nope"):
        Poller(gone, store, env={})
    with pytest.raises(ConfigError, match=r"needs restApi\.apiKeyFile"):
        Poller(replace(settings, rest_api_user_name=None), store, env={})
