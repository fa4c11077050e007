"""Endpoint details from a URL source, served by a real HTTPS server on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from nbwss.endpoints import MAX_DETAILS_BYTES, fetch_details
from nbwss.errors import (
    MSG_INVALID_JSON,
    MSG_INVALID_PARAMETER,
    MSG_NO_URL_CONNECTION,
    MSG_ONLY_WSS,
    MSG_UNPARSABLE,
    DetailsError,
)
from tests.conftest import TlsMaterial, timeout

ServerFactory = Callable[..., Awaitable[TestServer]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DETAILS: dict[str, Any] = {
    "token": "t0ken-fetched==",
    "priority": 2,
    "groupId": "GROUP1",
    "hostName": "cloud.example.com",
    "url": "wss://cloud.example.com:14146/cfs/nbufacade",
}


class Served:
    """An HTTPS server with one route; counts the requests that reached it."""

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.requests = 0

    def url(self, path: str = "/details") -> str:
        return str(self.server.make_url(path))


@pytest.fixture
async def serve(
    aiohttp_server: ServerFactory, tls: TlsMaterial
) -> Callable[[Handler], Awaitable[Served]]:
    async def start(handler: Handler) -> Served:
        served: Served

        async def counting(request: web.Request) -> web.StreamResponse:
            served.requests += 1
            return await handler(request)

        app = web.Application()
        app.router.add_get("/details", counting)
        served = Served(await aiohttp_server(app, ssl=tls.server_context()))
        return served

    return start


def answer(body: str | bytes, status: int = 200) -> Handler:
    async def handler(_: web.Request) -> web.StreamResponse:
        return web.Response(body=body if isinstance(body, bytes) else body.encode(), status=status)

    return handler


async def fetch(url: str, tls: TlsMaterial, **options: Any) -> Any:
    return await fetch_details(url, ca_file=tls.ca_file, timeout_s=timeout(5), **options)


async def test_fetches_and_validates_details(serve: Any, tls: TlsMaterial) -> None:
    served = await serve(answer(json.dumps(DETAILS)))
    details = await fetch(served.url(), tls)
    assert (details.host_name, details.group_id, details.priority) == (
        "cloud.example.com",
        "GROUP1",
        2,
    )
    assert details.token == DETAILS["token"]
    assert details.url == DETAILS["url"]


async def test_certificate_not_in_system_store_is_no_connection(
    serve: Any, tls: TlsMaterial
) -> None:
    served = await serve(answer(json.dumps(DETAILS)))
    with pytest.raises(DetailsError, match=f"^{MSG_NO_URL_CONNECTION}: .*TLS failed"):
        await fetch_details(served.url(), timeout_s=timeout(5), retry_wait_s=0.01)
    assert served.requests == 0


async def test_not_found_is_no_connection_and_not_retried(serve: Any, tls: TlsMaterial) -> None:
    served = await serve(answer("gone", status=404))
    with pytest.raises(DetailsError, match=f"^{MSG_NO_URL_CONNECTION}: .* answered 404"):
        await fetch(served.url(), tls)
    assert served.requests == 1


@pytest.mark.parametrize("body", ["{not json", "", "\xff", '{"a": 1, "a": 2}'])
async def test_content_that_is_not_json_is_unparsable(
    serve: Any, tls: TlsMaterial, body: str
) -> None:
    served = await serve(answer(body.encode("latin-1")))
    with pytest.raises(DetailsError, match=f"^{MSG_UNPARSABLE}"):
        await fetch(served.url(), tls)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([DETAILS], MSG_INVALID_JSON),
        ({**DETAILS, "url": "ws://cloud.example.com/x"}, MSG_ONLY_WSS),
        ({k: v for k, v in DETAILS.items() if k != "token"}, MSG_INVALID_JSON),
    ],
)
async def test_json_that_is_not_valid_details_says_why(
    serve: Any, tls: TlsMaterial, content: Any, message: str
) -> None:
    served = await serve(answer(json.dumps(content)))
    with pytest.raises(DetailsError, match=f"^{message}"):
        await fetch(served.url(), tls)


async def test_oversized_content_is_refused(serve: Any, tls: TlsMaterial) -> None:
    served = await serve(answer(b" " * (MAX_DETAILS_BYTES + 1)))
    with pytest.raises(DetailsError, match=f"^{MSG_UNPARSABLE}: .*more than {MAX_DETAILS_BYTES}"):
        await fetch(served.url(), tls)


async def test_oversized_chunked_content_is_refused(serve: Any, tls: TlsMaterial) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(MAX_DETAILS_BYTES // 1024 + 2):
            await response.write(b" " * 1024)
        return response

    served = await serve(endless)
    with pytest.raises(DetailsError, match=f"^{MSG_UNPARSABLE}: .*more than"):
        await fetch(served.url(), tls)


async def test_dropped_connection_is_retried(serve: Any, tls: TlsMaterial) -> None:
    async def drop_first(request: web.Request) -> web.StreamResponse:
        if served.requests == 1:
            assert request.transport is not None
            request.transport.close()
            await asyncio.Event().wait()  # cancelled when the client is gone
        return web.json_response(DETAILS)

    served = await serve(drop_first)
    details = await fetch(served.url(), tls, retry_wait_s=0.01)
    assert details.host_name == "cloud.example.com"
    assert served.requests == 2


async def test_unreachable_url_is_no_connection_after_retries(tls: TlsMaterial) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DetailsError, match=f"^{MSG_NO_URL_CONNECTION}: https://127"):
        await fetch(f"https://127.0.0.1:{port}/details", tls, retry_wait_s=0.01)


async def test_slow_server_times_out(serve: Any, tls: TlsMaterial) -> None:
    async def never(_: web.Request) -> web.StreamResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    served = await serve(never)
    with pytest.raises(DetailsError, match=f"^{MSG_NO_URL_CONNECTION}: .*timed out"):
        await fetch_details(served.url(), ca_file=tls.ca_file, timeout_s=0.3, attempts=1)


async def test_redirect_to_plain_http_is_refused(
    aiohttp_server: ServerFactory, serve: Any, tls: TlsMaterial
) -> None:
    plain_requests: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        plain_requests.append(request.path)
        return await handler(request)

    plain = web.Application(middlewares=[record])
    plain.router.add_get("/details", answer(json.dumps(DETAILS)))
    plain_server = await aiohttp_server(plain)

    async def redirect(_: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(str(plain_server.make_url("/details")))

    served = await serve(redirect)
    with pytest.raises(DetailsError, match=f"^{MSG_NO_URL_CONNECTION}: .*plain http") as raised:
        await fetch(served.url(), tls)
    assert f"redirects to http://127.0.0.1:{plain_server.port}/details" in str(raised.value)
    assert plain_requests == []  # refused before it was followed, not after


async def test_redirects_between_https_urls_are_followed_up_to_three(
    aiohttp_server: ServerFactory, tls: TlsMaterial
) -> None:
    hops: list[str] = []

    async def hop(request: web.Request) -> web.StreamResponse:
        number = int(request.match_info["n"])
        hops.append(request.path)
        if number == 0:
            return web.Response(body=json.dumps(DETAILS).encode())
        previous = f"/hop/{number - 1}"
        location = previous if number % 2 else str(request.url.with_path(previous))
        raise web.HTTPTemporaryRedirect(location)  # relative and absolute Locations

    app = web.Application()
    app.router.add_get("/hop/{n}", hop)
    server = await aiohttp_server(app, ssl=tls.server_context())
    details = await fetch(str(server.make_url("/hop/3")), tls)
    assert details.host_name == DETAILS["hostName"]
    assert hops == ["/hop/3", "/hop/2", "/hop/1", "/hop/0"]
    hops.clear()
    with pytest.raises(DetailsError, match=f"^{MSG_NO_URL_CONNECTION}: .*more than 3 times"):
        await fetch(str(server.make_url("/hop/4")), tls)
    assert hops == ["/hop/4", "/hop/3", "/hop/2", "/hop/1"]  # the fifth never asked for


@pytest.mark.parametrize(
    "location", ["", "ftp://cloud.example.com/details", "mailto:admin@example.com"]
)
async def test_a_redirect_without_a_usable_https_location_is_refused(
    serve: Any, tls: TlsMaterial, location: str
) -> None:
    async def redirect(_: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": location} if location else {})

    served = await serve(redirect)
    with pytest.raises(DetailsError, match=f"^{MSG_NO_URL_CONNECTION}: "):
        await fetch(served.url(), tls)
    assert served.requests == 1


async def test_http_server_at_https_url_is_no_connection(
    aiohttp_server: ServerFactory, tls: TlsMaterial
) -> None:
    plain = web.Application()
    plain.router.add_get("/details", answer(json.dumps(DETAILS)))
    server = await aiohttp_server(plain)
    url = str(server.make_url("/details")).replace("http://", "https://")
    with pytest.raises(DetailsError, match=f"^{MSG_NO_URL_CONNECTION}"):
        await fetch(url, tls, retry_wait_s=0.01)


@pytest.mark.parametrize(
    "url",
    [
        "http://cloud.example.com/details",
        "ftp://cloud.example.com/details",
        "https:///details",
        "https://cloud.example.com:99999/details",
        "https://cloud example.com/details",
        "cloud.example.com/details",
        "",
    ],
)
async def test_malformed_url_is_an_invalid_parameter(url: str, tls: TlsMaterial) -> None:
    with pytest.raises(DetailsError, match=f"^{MSG_INVALID_PARAMETER}: Incorrect URL"):
        await fetch(url, tls)


async def test_unreadable_ca_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(DetailsError, match="cannot load CA file"):
        await fetch_details("https://127.0.0.1/details", ca_file=tmp_path / "missing.pem")
