"""The stand-in NetBackup REST API: shaped after Veritas's documents, refusing what they
refuse (other tests rely on it being as strict as a real primary server).

Real HTTPS on loopback; queries are sent exactly as written (an encoded URL), so the
tests can send what a careless client would (`+` for a space, a `sort` on images).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl

from nbwss.sources.restclient import encode_query
from nbwss.standin.restapi import MEDIA_TYPE, RELEASES, StandinApi, iso, serving
from tests.conftest import TlsMaterial, timeout

FIXTURES = Path(__file__).parent / "fixtures" / "netbackup-api"
ERROR_KEYS = {"errorCode", "errorMessage", "attributeErrors", "errorDetails"}


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@dataclass
class Standin:
    api: StandinApi
    base_url: str
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, query: str = "", version: str | None = None,
                   token: str | None = None, **kwargs: Any) -> tuple[int, str, Any]:
        """(status, Content-Type, JSON body) of one call, the query sent as written."""
        url = yarl.URL(f"{self.base_url}/netbackup{path}{'?' + query if query else ''}",
                       encoded=True)
        headers = dict(kwargs.pop("headers", {}))
        if version is not None:
            headers["Accept"] = f"application/vnd.netbackup+json;version={version}"
        if token is not None:
            headers["Authorization"] = token
        async with self.http.request(method, url, headers=headers, **kwargs) as response:
            return response.status, response.headers["Content-Type"], await response.json(
                content_type=None)

    async def get(self, path: str, query: Any = (), version: str | None = None) -> Any:
        text = query if isinstance(query, str) else encode_query(query)
        status, _, body = await self.call("GET", path, text, version, self.api.login())
        assert status == 200, body
        return body


@pytest.fixture(params=["10.5"])
async def standin(request: pytest.FixtureRequest, tls: TlsMaterial
                  ) -> AsyncIterator[Standin]:
    api = StandinApi(release=RELEASES[request.param])
    connector = aiohttp.TCPConnector(ssl=tls.client_context())
    async with serving(api, tls.server_context()) as base_url, aiohttp.ClientSession(
            connector=connector) as http:
        yield Standin(api, base_url, http)


def ids(body: Any) -> list[str]:
    return [record["id"] for record in body["data"]]


# -- login and versions ----------------------------------------------------------------------


async def test_login_answers_201_with_token_type_and_validity(standin: Standin) -> None:
    credentials = {"userName": "admin", "password": "secret", "domainName": "ACME",
                   "domainType": "NT"}
    status, content_type, body = await standin.call("POST", "/login", json=credentials)
    assert status == 201
    assert content_type == MEDIA_TYPE == "application/vnd.netbackup+json;version=12.0"
    assert set(body) == set(fixture("login-201.json"))  # gateway.yaml: token, tokenType, validity
    assert (body["tokenType"], body["validity"]) == ("BEARER", 86400)
    assert body["token"].count(".") == 2
    for token in (None, "not-a-token"):
        status, _, error = await standin.call("GET", "/admin/jobs", token=token)
        assert (status, set(error)) == (401, ERROR_KEYS)
    status, _, _ = await standin.call("GET", "/admin/jobs", token=body["token"])
    assert status == 200


@pytest.mark.parametrize(("changes", "status"), [({"password": "wrong"}, 401),
                                                 ({"domainType": "windows"}, 400)])
async def test_login_refuses_a_wrong_password_or_domain_type(
    standin: Standin, changes: dict[str, str], status: int
) -> None:
    credentials = {"userName": "admin", "password": "secret", **changes}
    answer, _, body = await standin.call("POST", "/login", json=credentials)
    assert (answer, set(body)) == (status, ERROR_KEYS)
    assert standin.api.tokens == set()


async def test_a_token_is_refused_once_its_validity_has_passed(standin: Standin) -> None:
    now = [1_000_000.0]
    standin.api.clock = lambda: now[0]
    standin.api.token_validity_s = 60
    token = standin.api.login()
    assert (await standin.call("GET", "/admin/jobs", token=token))[0] == 200
    now[0] += 60
    assert (await standin.call("GET", "/admin/jobs", token=token))[0] == 401


async def test_an_api_key_is_accepted(standin: Standin) -> None:
    standin.api.api_keys.add("A1B2C3")
    assert (await standin.call("GET", "/catalog/images", token="A1B2C3"))[0] == 200


@pytest.mark.parametrize(
    ("release", "version", "status"),
    [("10.5", "14.0", 406), ("10.5", "13.0", 406), ("10.5", "12.0", 200),
     ("10.5", "9.0", 200), ("10.5", "8.0", 406), ("8.1.1", "1.0", 200),
     ("8.1.1", "2.0", 406), ("8.1.1", "12.0", 406)],
)
async def test_versions_outside_the_release_window_are_refused_with_406(
    standin: Standin, release: str, version: str, status: int
) -> None:
    standin.api.release = RELEASES[release]
    answer, content_type, body = await standin.call(
        "GET", "/admin/jobs", version=version, token=standin.api.login())
    assert answer == status
    if status == 200:
        assert content_type == f"application/vnd.netbackup+json;version={version}"
    else:
        assert set(body) == ERROR_KEYS
        assert body["errorCode"] == 8961


async def test_a_login_body_in_a_version_not_served_is_refused_with_415(
    standin: Standin,
) -> None:
    headers = {"Content-Type": "application/vnd.netbackup+json;version=14.0"}
    answer, _, _ = await standin.call("POST", "/login", version="12.0", headers=headers,
                                      data=json.dumps({"userName": "admin",
                                                       "password": "secret"}))
    assert answer == 415


# -- records in Veritas's shapes ---------------------------------------------------------------


async def test_jobs_have_the_attributes_of_veritas_example(standin: Standin) -> None:
    standin.api.upsert_job(144, state="ACTIVE", clientName="c")
    [record] = (await standin.get("/admin/jobs"))["data"]
    example = fixture("admin-jobs-example.json")["data"][0]
    assert set(record) == set(example)  # links, type, id, meta, attributes
    assert set(record["attributes"]) == set(example["attributes"]) | {"policyType"}
    assert (record["id"], record["type"]) == ("144", "job")


async def test_images_have_the_documented_attributes_and_nothing_else(
    standin: Standin,
) -> None:
    standin.api.upsert_image("DummyTestVM_1459811698", policyType="VMware")
    body = await standin.get("/catalog/images", [("filter", f"backupTime ge {iso(0)}")])
    [record] = body["data"]
    page = fixture("catalog-images-page.json")
    assert set(record) == set(page["data"][0]) == {"links", "type", "id", "attributes"}
    assert set(record["attributes"]) == set(page["data"][0]["attributes"])
    assert record["id"] == "DummyTestVM_1459811698"
    assert set(body["meta"]["pagination"]) <= {"prev", "next", "first", "last", "count",
                                               "offset", "limit"}
    with pytest.raises(ValueError, match="images have no clientType"):
        standin.api.upsert_image("c_5", clientType="VMWARE")


async def test_images_cover_the_last_24_hours_unless_filtered(standin: Standin) -> None:
    now = 1_700_000_000
    standin.api.clock = lambda: now
    standin.api.upsert_image(f"new_{now - 3600}")
    standin.api.upsert_image(f"old_{now - 2 * 86400}")
    standin.api.upsert_image(f"ahead_{now + 60}")
    assert ids(await standin.get("/catalog/images")) == [f"new_{now - 3600}"]
    everything = [("filter", f"backupTime ge {iso(0)} and backupTime le {iso(now + 3600)}")]
    assert len(ids(await standin.get("/catalog/images", everything))) == 3
    standin.api.delete_image(f"new_{now - 3600}")
    assert ids(await standin.get("/catalog/images")) == []


# -- what a real server refuses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "detail"),
    [("/catalog/images", "filter=backupTime%20gt%202016-04-05T00%3A00%3A00Z",
      "operator 'gt' is not supported for backupTime"),
     ("/catalog/images", "filter=lastUpdateTime%20ge%202016-04-05T00%3A00%3A00Z",
      "'lastUpdateTime' cannot be filtered on"),
     ("/catalog/images", "sort=-backupTime", "no sort parameter"),
     ("/admin/jobs", "filter=lastUpdateTime+gt+2016-04-05T00%3A00%3A00Z", "'+' is not a space"),
     ("/admin/jobs", "filter=state%20gt%20'DONE'", "operator 'gt' is not supported for state"),
     ("/admin/jobs", "filter=lastUpdateTime", "cannot read clause"),
     ("/admin/jobs", "sort=-colour", "'colour' cannot be sorted on"),
     ("/admin/jobs", "page%5Boffset%5D=2", "page[offset] is not a parameter"),
     ("/admin/jobs", "page%5Bafter%5D=nonsense", "is not one this list gave"),
     ("/catalog/images", "page%5Blimit%5D=0", "page[limit] must be an integer >= 1")],
)
async def test_what_the_api_refuses_is_a_400_with_a_netbackup_error(
    standin: Standin, path: str, query: str, detail: str
) -> None:
    status, _, body = await standin.call("GET", path, query, token=standin.api.login())
    assert status == 400
    assert set(body) == ERROR_KEYS
    assert body["errorCode"] == 8961
    assert detail in " ".join(body["errorDetails"])


async def test_pages_are_capped_at_100(standin: Standin) -> None:
    for job_id in range(1, 131):
        standin.api.upsert_job(job_id)
    body = await standin.get("/admin/jobs", [("page[limit]", "500")])
    assert len(body["data"]) == 100
    assert body["meta"]["pagination"]["limit"] == 100


# -- paging ------------------------------------------------------------------------------------


async def all_by_cursor(standin: Standin, query: list[tuple[str, str]]) -> list[str]:
    seen: list[str] = []
    body = await standin.get("/admin/jobs", query)
    while True:
        seen += ids(body)
        assert all(isinstance(r["meta"]["page"]["cursor"], str) for r in body["data"])
        following = body["meta"]["pagination"].get("next")
        if not following:
            return seen
        assert isinstance(following, str)
        body = await standin.get("/admin/jobs", [*query, ("page[after]", following)])


async def test_jobs_page_by_cursor_from_api_9(standin: Standin) -> None:
    for job_id in range(1, 6):
        standin.api.upsert_job(job_id, startTime=iso(1000 + job_id))
    query = [("page[limit]", "2")]
    assert await all_by_cursor(standin, query) == ["5", "4", "3", "2", "1"]  # -startTime
    assert await all_by_cursor(standin, [*query, ("sort", "jobId")]) == ["1", "2", "3", "4", "5"]
    first = await standin.get("/admin/jobs", [("sort", "jobId"), ("page[limit]", "1")])
    last = await standin.get("/admin/jobs", [("sort", "jobId"), ("page[limit]", "1"),
                                             ("page[after]", first["data"][0]["meta"]["page"]
                                              ["cursor"])])
    ranged = await standin.get("/admin/jobs", [
        ("sort", "jobId"), ("page[limit]", "2"),
        ("page[after]", first["meta"]["pagination"]["next"]),
        ("page[before]", (await standin.get("/admin/jobs", [("sort", "-jobId"),
                                                            ("page[limit]", "1")]))
         ["data"][0]["meta"]["page"]["cursor"])])
    assert ids(last) == ["2"]
    assert ids(ranged) == ["2", "3"]  # 2, 3, 4 lie between 1 and 5: cut at the page size
    assert ranged["meta"]["pagination"]["rangeTruncated"] is True


async def test_a_cursor_still_leads_on_after_its_record_changed(standin: Standin) -> None:
    for job_id in range(1, 5):
        standin.api.upsert_job(job_id)
    query = [("sort", "-lastUpdateTime"), ("page[limit]", "2")]
    first = await standin.get("/admin/jobs", query)
    assert ids(first) == ["4", "3"]
    standin.api.upsert_job(3, state="DONE")  # moves to the front, past the cursor
    rest = await standin.get("/admin/jobs", [*query, ("page[after]",
                                                      first["meta"]["pagination"]["next"])])
    assert ids(rest) == ["2", "1"]


@pytest.mark.parametrize("standin", ["8.1.1"], indirect=True)
async def test_api_1_pages_jobs_by_offset(standin: Standin) -> None:
    for job_id in (145, 146, 147):
        standin.api.upsert_job(job_id, parentJobId=144, lastUpdateTime=iso(2000 + job_id))
    standin.api.upsert_job(144, lastUpdateTime=iso(1000))
    query = [("filter", f"lastUpdateTime gt {iso(1500)}"), ("sort", "jobId"),
             ("page[limit]", "2")]
    first = await standin.get("/admin/jobs", query)
    assert ids(first) == ["145", "146"]
    assert first["meta"]["pagination"] == {"first": 0, "last": 2, "count": 3, "offset": 0,
                                           "limit": 2, "next": 2}
    second = await standin.get("/admin/jobs", [*query, ("page[offset]", "2")])
    assert ids(second) == ["147"]
    assert "next" not in second["meta"]["pagination"]
    status, _, _ = await standin.call("GET", "/admin/jobs", "page%5Bafter%5D=x",
                                      token=standin.api.login())
    assert status == 400


async def test_filters_read_quoted_values_and_times_as_the_samples_write_them(
    standin: Standin,
) -> None:
    standin.api.upsert_job(1, state="DONE", lastUpdateTime=iso(1000))
    standin.api.upsert_job(2, state="ACTIVE", lastUpdateTime=iso(3000))
    done = await standin.get("/admin/jobs", [("filter", "state eq 'DONE'")])
    assert ids(done) == ["1"]
    recent = await standin.get("/admin/jobs", [("filter", f"lastUpdateTime gt '{iso(2000)}'")])
    assert ids(recent) == ["2"]


# -- hooks -------------------------------------------------------------------------------------


async def test_stamps_are_strictly_increasing() -> None:
    api = StandinApi(clock=lambda: 1_000_000.0)
    first = api.upsert_job(1)["lastUpdateTime"]
    second = api.upsert_job(1, state="DONE")["lastUpdateTime"]
    assert second > first
    assert api.jobs[1]["state"] == "DONE"


async def test_fail_and_down_hooks(standin: Standin) -> None:
    standin.api.fail_status = 503
    status, _, body = await standin.call("GET", "/admin/jobs")
    assert (status, set(body)) == (503, ERROR_KEYS)
    standin.api.fail_status = None
    standin.api.down = True
    with pytest.raises(aiohttp.ClientError):
        await standin.call("GET", "/admin/jobs")
    # aiohttp retries an idempotent call once when a reused connection drops: 2 or 3.
    assert len(standin.api.requests) >= 2


async def test_hold_gates_a_path_until_released(standin: Standin) -> None:
    gate = standin.api.hold("/netbackup/admin/jobs")
    call = asyncio.create_task(standin.call("GET", "/admin/jobs"))
    async with asyncio.timeout(timeout(5)):
        await standin.api.wait_for_requests(1)
        assert not call.done()
        gate.set()
        status, _, _ = await call
    assert status == 401
