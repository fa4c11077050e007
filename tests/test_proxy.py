"""The COMMAND proxy against the stand-in NetBackup REST API, over real loopback HTTPS.

The first part checks the stand-in itself (other tests rely on its shapes); the second
drives the proxy with Message objects and a tiny Link, as the session will.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from nbwss.standin.restapi import MEDIA_TYPE, StandinApi, iso, serving
from tests.conftest import TlsMaterial, timeout


@dataclass
class Standin:
    api: StandinApi
    base_url: str


@pytest.fixture
async def standin(tls: TlsMaterial) -> AsyncIterator[Standin]:
    api = StandinApi()
    async with serving(api, tls.server_context()) as base_url:
        yield Standin(api, base_url)


@pytest.fixture
async def http(tls: TlsMaterial) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=tls.client_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


# -- the stand-in ------------------------------------------------------------------------


async def _login(http: aiohttp.ClientSession, base_url: str) -> str:
    credentials = {"userName": "admin", "password": "secret"}
    async with http.post(f"{base_url}/netbackup/login", json=credentials) as response:
        assert response.status == 201
        assert response.content_type == "application/vnd.netbackup+json"
        token: str = (await response.json(content_type=None))["token"]
    return token


async def test_standin_login_issues_a_token_that_authorizes_calls(
    standin: Standin, http: aiohttp.ClientSession
) -> None:
    token = await _login(http, standin.base_url)
    assert token.count(".") == 2
    jobs_url = f"{standin.base_url}/netbackup/admin/jobs"
    async with http.get(jobs_url) as response:
        assert response.status == 401
    async with http.get(jobs_url, headers={"Authorization": "not-a-token"}) as response:
        assert response.status == 401
    async with http.get(jobs_url, headers={"Authorization": token}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == MEDIA_TYPE


async def test_standin_refuses_a_wrong_password(
    standin: Standin, http: aiohttp.ClientSession
) -> None:
    credentials = {"userName": "admin", "password": "wrong"}
    async with http.post(f"{standin.base_url}/netbackup/login", json=credentials) as response:
        assert response.status == 401
    assert standin.api.tokens == set()


async def test_standin_accepts_an_api_key(standin: Standin, http: aiohttp.ClientSession) -> None:
    standin.api.api_keys.add("A1B2C3")
    url = f"{standin.base_url}/netbackup/catalog/images"
    async with http.get(url, headers={"Authorization": "A1B2C3"}) as response:
        assert response.status == 200


async def _get_json(
    http: aiohttp.ClientSession, url: str, token: str, **params: str
) -> dict[str, Any]:
    async with http.get(url, params=params, headers={"Authorization": token}) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json(content_type=None)
    return body


async def test_standin_jobs_filter_on_last_update_time_and_page(
    standin: Standin, http: aiohttp.ClientSession
) -> None:
    api = standin.api
    api.upsert_job(144, policyType="VMWARE", state="ACTIVE", lastUpdateTime=iso(1000))
    cutoff = iso(1500)
    for job_id in (145, 146, 147):
        api.upsert_job(job_id, parentJobId=144, lastUpdateTime=iso(2000 + job_id))
    token = api.login()
    url = f"{standin.base_url}/netbackup/admin/jobs"
    first = await _get_json(
        http, url, token, filter=f"lastUpdateTime gt {cutoff}", **{"page[limit]": "2"}
    )
    assert [d["id"] for d in first["data"]] == ["145", "146"]
    assert first["data"][0]["type"] == "job"
    assert first["data"][0]["attributes"]["parentJobId"] == 144
    assert first["meta"]["pagination"] == {
        "count": 3, "offset": 0, "limit": 2, "first": 0, "last": 2, "page": 0, "pages": 2,
        "next": 2,
    }
    second = await _get_json(
        http, url, token, filter=f"lastUpdateTime gt {cutoff}",
        **{"page[limit]": "2", "page[offset]": "2"},
    )
    assert [d["id"] for d in second["data"]] == ["147"]
    assert "next" not in second["meta"]["pagination"]


async def test_standin_stamps_strictly_increasing_update_times() -> None:
    api = StandinApi(clock=lambda: 1_000_000.0)
    first = api.upsert_job(1)["lastUpdateTime"]
    second = api.upsert_job(1, state="DONE")["lastUpdateTime"]
    assert second > first
    assert api.jobs[1]["state"] == "DONE"


async def test_standin_images_filter_on_backup_time_and_deletion(
    standin: Standin, http: aiohttp.ClientSession
) -> None:
    api = standin.api
    api.upsert_image("DummyTestVM_1459829698", clientType="VMWARE", policyName="vmware2")
    api.upsert_image("localhost_1458601200")
    token = api.login()
    url = f"{standin.base_url}/netbackup/catalog/images"
    recent = await _get_json(http, url, token, filter=f"backupTime ge {iso(1459000000)}")
    assert [d["id"] for d in recent["data"]] == ["DummyTestVM_1459829698"]
    assert recent["data"][0]["attributes"]["backupTime"] == iso(1459829698)
    api.delete_image("localhost_1458601200")
    everything = await _get_json(http, url, token)
    assert [d["id"] for d in everything["data"]] == ["DummyTestVM_1459829698"]


async def test_standin_answers_400_to_a_filter_it_cannot_read(
    standin: Standin, http: aiohttp.ClientSession
) -> None:
    url = f"{standin.base_url}/netbackup/admin/jobs"
    headers = {"Authorization": standin.api.login()}
    async with http.get(url, params={"filter": "lastUpdateTime"}, headers=headers) as response:
        assert response.status == 400


async def test_standin_fail_and_down_hooks(standin: Standin, http: aiohttp.ClientSession) -> None:
    url = f"{standin.base_url}/netbackup/admin/jobs"
    standin.api.fail_status = 503
    async with http.get(url) as response:
        assert response.status == 503
    standin.api.fail_status = None
    standin.api.down = True
    with pytest.raises(aiohttp.ClientError):
        async with http.get(url) as response:
            await response.read()
    # aiohttp retries an idempotent call once when a reused connection drops: 2 or 3.
    assert len(standin.api.requests) >= 2


async def test_standin_hold_gates_a_path_until_released(
    standin: Standin, http: aiohttp.ClientSession
) -> None:
    gate = standin.api.hold("/netbackup/admin/jobs")
    call = asyncio.create_task(http.get(f"{standin.base_url}/netbackup/admin/jobs"))
    async with asyncio.timeout(timeout(5)):
        await standin.api.wait_for_requests(1)
        assert not call.done()
        gate.set()
        response = await call
    response.release()
    assert response.status == 401
