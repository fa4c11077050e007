"""The COMMAND proxy against the stand-in NetBackup REST API, over real loopback HTTPS.

The proxy is driven with Message objects and a tiny Link, as the session will (the
stand-in itself is checked in test_standin.py).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from nbwss.messages import Message, MessageType, SubType, decode, request
from nbwss.metrics import REGISTRY
from nbwss.properties import Settings
from nbwss.proxy import CommandProxy
from nbwss.standin.restapi import MEDIA_TYPE, StandinApi, serving
from tests.conftest import SPEC_EXAMPLES, TlsMaterial, make_tls, timeout


@dataclass
class Standin:
    api: StandinApi
    base_url: str


@pytest.fixture
async def standin(tls: TlsMaterial) -> AsyncIterator[Standin]:
    api = StandinApi()
    async with serving(api, tls.server_context()) as base_url:
        yield Standin(api, base_url)


# -- the proxy ---------------------------------------------------------------------------

EXAMPLES = SPEC_EXAMPLES
GUIDE_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiI"  # the Authorization of the guide's examples


def example(name: str) -> Message:
    return decode((EXAMPLES / name).read_text())


@dataclass
class FakeLink:
    """The session's side of a connection; the proxy reads its names and says when a
    COMMAND's REST call starts."""

    group_id: str = "GROUPID1"
    host_name: str = "endpoint.example"
    sent: list[Message] = field(default_factory=list)
    reached_api: list[str] = field(default_factory=list)

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def command_reached_api(self, request: Message) -> None:
        self.reached_api.append(request.id)


def command(uri: str, method: str = "GET", token: str | None = None, **payload: Any) -> Message:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = token
    body: dict[str, Any] = {"uri": uri, "method": method, "headers": headers, **payload}
    return request(MessageType.COMMAND, body, now=1444806222)


def proxy_settings(standin: Standin, tls: TlsMaterial, **changes: Any) -> Settings:
    return Settings(rest_api_base_url=standin.base_url, rest_api_ca_file=tls.ca_file, **changes)


@pytest.fixture
async def proxy(standin: Standin, tls: TlsMaterial) -> AsyncIterator[CommandProxy]:
    async with CommandProxy(proxy_settings(standin, tls)) as command_proxy:
        yield command_proxy


def answer(response: Message) -> dict[str, Any]:
    assert response.type is MessageType.COMMAND
    assert response.sub_type is SubType.RESPONSE
    assert isinstance(response.payload, dict)
    assert set(response.payload) == {"headers", "responseCode", "body"}
    assert isinstance(response.payload["body"], str)
    assert all(name == name.lower() for name in response.payload["headers"])
    return response.payload


async def test_the_guides_get_vmserver_round_trips_exactly(
    standin: Standin, proxy: CommandProxy
) -> None:
    expected = example("command-response-get-vmserver.json")
    assert isinstance(expected.payload, dict)
    record = json.loads(expected.payload["body"])["vmServer"]
    standin.api.add_vmserver(record)
    standin.api.tokens.add(GUIDE_TOKEN)
    get = example("command-request-get-vmserver.json")
    response = await proxy(get, FakeLink())
    assert response.id == get.id == expected.id
    payload = answer(response)
    assert payload["responseCode"] == expected.payload["responseCode"] == 200
    assert payload["body"] == expected.payload["body"]
    assert payload["headers"]["content-type"] == expected.payload["headers"]["content-type"]
    assert {"date", "server", "content-type"} <= set(payload["headers"])


async def test_the_guides_post_vmserver_reaches_the_api_exactly(
    standin: Standin, proxy: CommandProxy
) -> None:
    standin.api.tokens.add(GUIDE_TOKEN)
    post = example("command-request-post-vmserver.json")
    assert isinstance(post.payload, dict)
    response = await proxy(post, FakeLink())
    assert response.id == post.id
    assert answer(response)["responseCode"] == 201
    [seen] = standin.api.requests
    assert (seen.method, seen.raw_path) == ("POST", "/netbackup/config/servers/vmservers")
    assert seen.body == post.payload["parameters"].encode()
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Authorization"] == GUIDE_TOKEN
    assert standin.api.vmservers["vcenterServer1"]["userId"] == "administrator"
    get = command("/netbackup/config/servers/vmservers/vcenterServer1", token=GUIDE_TOKEN)
    server = json.loads(answer(await proxy(get, FakeLink()))["body"])["vmServer"]
    assert (server["serverName"], server["password"]) == ("vcenterServer1", "")


async def test_the_jwt_from_a_login_command_works_on_the_next_command(
    standin: Standin, proxy: CommandProxy
) -> None:
    link = FakeLink()
    jobs = "/netbackup/admin/jobs?page[limit]=5"
    assert answer(await proxy(command(jobs), link))["responseCode"] == 401
    credentials = json.dumps({"userName": "admin", "password": "secret"})
    login = answer(await proxy(command("/netbackup/login", "POST", parameters=credentials), link))
    assert login["responseCode"] == 201
    assert login["headers"]["content-type"] == MEDIA_TYPE
    token = json.loads(login["body"])["token"]
    listed = answer(await proxy(command(jobs, token=token), link))
    assert listed["responseCode"] == 200
    assert json.loads(listed["body"])["meta"]["pagination"]["limit"] == 5


async def test_slow_commands_overlap_and_queue_past_max_concurrent(
    standin: Standin, tls: TlsMaterial
) -> None:
    token = standin.api.login()
    gate = standin.api.hold("/netbackup/admin/jobs")
    busy, other = FakeLink(), FakeLink(group_id="GROUPID2")
    settings = proxy_settings(standin, tls, command_max_concurrent=2)
    async with CommandProxy(settings) as proxy, asyncio.timeout(timeout(10)):
        slow = [
            asyncio.create_task(proxy(command("/netbackup/admin/jobs", token=token), busy))
            for _ in range(3)
        ]
        await standin.api.wait_for_requests(2)  # two calls are at the API together
        # Another connection is not held up by them, and `busy`'s third call waits its turn.
        images = answer(await proxy(command("/netbackup/catalog/images", token=token), other))
        assert images["responseCode"] == 200
        assert [r.path for r in standin.api.requests].count("/netbackup/admin/jobs") == 2
        assert not any(task.done() for task in slow)
        gate.set()
        responses = await asyncio.gather(*slow)
    assert [answer(r)["responseCode"] for r in responses] == [200, 200, 200]
    assert len({r.id for r in responses}) == 3


GUARD_CASES = [
    pytest.param({"uri": "https://evil.example/netbackup/admin/jobs"}, 400, id="absolute-url"),
    pytest.param({"uri": "//evil.example/netbackup/admin/jobs"}, 400, id="network-path"),
    pytest.param({"uri": "/netbackup/../admin"}, 403, id="dot-dot"),
    pytest.param({"uri": "/netbackup/%2e%2e/admin"}, 403, id="encoded-dot-dot"),
    pytest.param({"uri": "/netbackup%2f..%2fadmin"}, 403, id="encoded-slash"),
    pytest.param({"headers": {"X-A": "1\r\nHost: evil"}}, 400, id="crlf-header"),
    pytest.param({"method": "TRACE"}, 403, id="bad-method"),
    pytest.param({"method": "POST", "parameters": "x" * 2000}, 403, id="oversized-body"),
    pytest.param({"parameters": {"serverName": "x"}}, 400, id="parameters-not-a-string"),
    pytest.param({"uri": None}, 400, id="missing-uri"),
]


@pytest.mark.parametrize(("change", "status"), GUARD_CASES)
async def test_guard_refusals_never_reach_the_api(
    standin: Standin, tls: TlsMaterial, change: dict[str, Any], status: int
) -> None:
    payload: dict[str, Any] = {
        "uri": "/netbackup/admin/jobs", "method": "GET",
        "headers": {"Authorization": standin.api.login()},
    }
    payload.update(change)
    req = request(MessageType.COMMAND, payload, now=0)
    settings = proxy_settings(standin, tls, command_max_body_bytes=1000)
    async with CommandProxy(settings) as proxy:
        payload_out = answer(await proxy(req, FakeLink()))
    assert payload_out["responseCode"] == status
    assert json.loads(payload_out["body"])["errorCode"] == status
    assert standin.api.requests == []


async def test_api_down_answers_502(tls: TlsMaterial) -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(rest_api_base_url=f"https://127.0.0.1:{port}", rest_api_ca_file=tls.ca_file)
    async with CommandProxy(settings) as proxy:
        payload = answer(await proxy(command("/netbackup/admin/jobs"), FakeLink()))
    assert payload["responseCode"] == 502
    assert "cannot be reached" in json.loads(payload["body"])["errorMessage"]


async def test_api_dropping_the_connection_answers_502(
    standin: Standin, proxy: CommandProxy
) -> None:
    standin.api.down = True
    payload = answer(await proxy(command("/netbackup/admin/jobs"), FakeLink()))
    assert payload["responseCode"] == 502
    assert standin.api.requests


async def test_an_untrusted_api_certificate_answers_502(
    standin: Standin, tmp_path: Path
) -> None:
    other_ca = make_tls(tmp_path)
    settings = Settings(rest_api_base_url=standin.base_url, rest_api_ca_file=other_ca.ca_file)
    async with CommandProxy(settings) as proxy:
        payload = answer(await proxy(command("/netbackup/admin/jobs"), FakeLink()))
    assert payload["responseCode"] == 502
    assert "certificate" in json.loads(payload["body"])["errorMessage"]
    assert standin.api.requests == []


async def test_verify_false_reaches_an_api_with_an_unknown_certificate(
    standin: Standin,
) -> None:
    settings = Settings(rest_api_base_url=standin.base_url, rest_api_verify=False)
    with capture_logs() as logs:
        async with CommandProxy(settings) as proxy:
            payload = answer(await proxy(command("/netbackup/admin/jobs"), FakeLink()))
    assert payload["responseCode"] == 401
    assert logs[0]["event"] == "rest_api.tls_unverified"
    assert logs[0]["log_level"] == "warning"


async def test_a_slow_api_answers_504_after_command_timeout(
    standin: Standin, tls: TlsMaterial
) -> None:
    standin.api.hold("/netbackup/admin/jobs")  # never released
    settings = proxy_settings(standin, tls, command_timeout_s=0.2)
    async with CommandProxy(settings) as proxy, asyncio.timeout(timeout(10)):
        payload = answer(await proxy(command("/netbackup/admin/jobs"), FakeLink()))
    assert payload["responseCode"] == 504
    assert "0.2 s" in json.loads(payload["body"])["errorMessage"]


@pytest.mark.parametrize("chunked", [False, True], ids=["with-length", "chunked"])
async def test_a_body_that_stalls_after_the_headers_answers_504(
    tls: TlsMaterial, chunked: bool
) -> None:
    """`command.timeout` covers reading the whole body, not only the wait for headers."""
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = 100
        await response.prepare(request)
        await response.write(b'{"data": [')
        await release.wait()
        return response

    async with raw_api_handling(tls, stall) as base_url:
        settings = Settings(
            rest_api_base_url=base_url, rest_api_ca_file=tls.ca_file, command_timeout_s=0.3
        )
        try:
            async with CommandProxy(settings) as proxy, asyncio.timeout(timeout(10)):
                payload = answer(await proxy(command("/netbackup/admin/jobs"), FakeLink()))
        finally:
            release.set()
    assert payload["responseCode"] == 504
    assert "0.3 s" in json.loads(payload["body"])["errorMessage"]


async def test_an_oversized_response_answers_502(standin: Standin, tls: TlsMaterial) -> None:
    for job_id in range(20):
        standin.api.upsert_job(job_id, clientName="client-with-a-long-name")
    token = standin.api.login()
    settings = proxy_settings(standin, tls, command_max_body_bytes=1000)
    async with CommandProxy(settings) as proxy:
        payload = answer(await proxy(command("/netbackup/admin/jobs", token=token), FakeLink()))
    assert payload["responseCode"] == 502
    assert "command.maxBodyBytes (1000)" in json.loads(payload["body"])["errorMessage"]


async def test_a_chunked_response_is_read_whole_and_capped(
    standin: Standin, tls: TlsMaterial
) -> None:
    for job_id in range(20):
        standin.api.upsert_job(job_id, clientName="client-with-a-long-name")
    standin.api.chunked = True
    token = standin.api.login()
    jobs = command("/netbackup/admin/jobs?page[limit]=20", token=token)
    async with CommandProxy(proxy_settings(standin, tls)) as proxy:
        whole = answer(await proxy(jobs, FakeLink()))
    assert "transfer-encoding" not in whole["headers"]  # hop-by-hop: the daemon's own framing
    assert len(json.loads(whole["body"])["data"]) == 20
    limit = len(whole["body"]) - 1
    async with CommandProxy(proxy_settings(standin, tls, command_max_body_bytes=limit)) as proxy:
        capped = answer(await proxy(jobs, FakeLink()))
    assert capped["responseCode"] == 502
    assert f"command.maxBodyBytes ({limit})" in json.loads(capped["body"])["errorMessage"]


async def test_one_log_event_per_command_without_secrets(
    standin: Standin, proxy: CommandProxy
) -> None:
    token = standin.api.login()
    uri = "/netbackup/admin/jobs?filter=clientName%20eq%20'secretclient'&page[limit]=5"
    before = REGISTRY.get_sample_value("nbwss_commands_total", {"status": "200"}) or 0
    with capture_logs() as logs:
        response = await proxy(command(uri, token=token), FakeLink())
    [event] = logs
    assert event["event"] == "command.done"
    assert event["id"] == response.id
    assert (event["group"], event["host"]) == ("GROUPID1", "endpoint.example")
    assert (event["method"], event["status"]) == ("GET", 200)
    assert event["uri"] == "/netbackup/admin/jobs?filter=&page[limit]="
    assert event["bytes"] == len(answer(response)["body"].encode())
    assert event["duration_ms"] > 0
    assert token not in repr(event)
    assert "secretclient" not in repr(event)
    assert REGISTRY.get_sample_value("nbwss_commands_total", {"status": "200"}) == before + 1


async def test_a_refusal_is_logged_with_its_reason(proxy: CommandProxy) -> None:
    with capture_logs() as logs:
        await proxy(command("/netbackup/../admin?token=abc"), FakeLink())
    [event] = logs
    assert (event["event"], event["status"], event["log_level"]) == ("command.done", 403, "warning")
    assert event["uri"] == "/netbackup/../admin?token="
    assert "outside the allowed prefixes" in event["reason"]


# -- what the app gets back ------------------------------------------------------------------


@asynccontextmanager
async def raw_api(tls: TlsMaterial, response: web.Response) -> AsyncIterator[str]:
    """A REST API answering every call with `response` (headers set by the test)."""

    async def answer_all(request: web.Request) -> web.Response:
        return response

    async with raw_api_handling(tls, answer_all) as base_url:
        yield base_url


@asynccontextmanager
async def raw_api_handling(
    tls: TlsMaterial, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> AsyncIterator[str]:
    """A REST API answering every call by `handler`."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_context())
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_hop_by_hop_headers_are_dropped_from_the_answer(tls: TlsMaterial) -> None:
    headers = {"Keep-Alive": "timeout=5", "Connection": "keep-alive, X-Hop", "X-Hop": "1",
               "Trailer": "X-Sum", "X-Kept": "yes", "Content-Type": "application/json"}
    async with raw_api(tls, web.Response(body=b"{}", headers=headers)) as base_url:
        settings = Settings(rest_api_base_url=base_url, rest_api_ca_file=tls.ca_file)
        async with CommandProxy(settings) as proxy:
            payload = answer(await proxy(command("/netbackup/x"), FakeLink()))
    assert payload["responseCode"] == 200
    kept = payload["headers"]
    assert kept["x-kept"] == "yes"
    assert kept["content-type"] == "application/json"
    assert not {"keep-alive", "connection", "x-hop", "trailer", "transfer-encoding"} & set(kept)


async def test_the_body_is_always_a_string_empty_when_the_api_sent_none(
    tls: TlsMaterial,
) -> None:
    async with raw_api(tls, web.Response(status=204)) as base_url:
        settings = Settings(rest_api_base_url=base_url, rest_api_ca_file=tls.ca_file)
        async with CommandProxy(settings) as proxy:
            link = FakeLink()
            request_ = command("/netbackup/x", "DELETE")
            payload = answer(await proxy(request_, link))
    assert (payload["responseCode"], payload["body"]) == (204, "")
    assert link.reached_api == [request_.id]  # the proxy said when the REST call started


async def test_a_lower_case_method_is_malformed_and_says_so(proxy: CommandProxy) -> None:
    link = FakeLink()
    payload = answer(await proxy(command("/netbackup/admin/jobs", "get"), link))
    assert payload["responseCode"] == 400
    body = json.loads(payload["body"])
    assert body["errorMessage"] == "method: get must be upper-case (GET)"
    assert link.reached_api == []


async def test_the_id_is_echoed_exactly(standin: Standin, proxy: CommandProxy) -> None:
    odd = "é/ü 1\u00e9 \"quoted\" " + "x" * 100
    asked = Message(odd, MessageType.COMMAND, SubType.REQUEST, 1, command("/x").payload)
    response = await proxy(asked, FakeLink())
    assert response.id.encode("utf-8") == odd.encode("utf-8")
