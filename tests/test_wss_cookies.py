"""No cookie passes from one server group's endpoint to another's (issue 11, item 2).

The daemon's connections share one HTTP client. Two groups whose endpoints share a host
name (one cloud provider's load balancer, say) are still separate cloud apps: a cookie
one endpoint's handshake sets must never ride on the other's. Real `websockets` servers
on loopback, under the host name `localhost` (aiohttp's default jar keeps cookies of
host names only), record each handshake's headers.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from nbwss.endpoints import EndpointDetails
from nbwss.store import Store
from nbwss.supervisor import Supervisor
from nbwss.trust import fingerprint
from tests.conftest import TlsMaterial
from tests.peers import certificate_der
from tests.test_supervisor import settings, supervising, until


@dataclass
class Endpoint:
    """A wss:// endpoint that accepts any token and may set a cookie at the handshake."""

    port: int = 0
    set_cookie: str | None = None
    handshakes: list[Headers] = field(default_factory=list)

    def url(self) -> str:
        return f"wss://localhost:{self.port}/cfs/nbufacade"

    def on_request(self, _: ServerConnection, request: Request) -> None:
        self.handshakes.append(request.headers)

    def on_response(self, _: ServerConnection, __: Request, response: Response) -> Response:
        if self.set_cookie is not None:
            response.headers["Set-Cookie"] = self.set_cookie
        return response

    async def handle(self, ws: ServerConnection) -> None:
        async for frame in ws:
            request = json.loads(frame)
            if request.get("type") == "CONNECT":
                await ws.send(json.dumps({**request, "subType": "RESPONSE",
                                          "timeStamp": int(time.time()),
                                          "payload": {"valid": True}}))


@asynccontextmanager
async def serving(endpoint: Endpoint, tls: TlsMaterial) -> AsyncIterator[Endpoint]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.server_cert.configure_cert(context)
    async with serve(endpoint.handle, "127.0.0.1", 0, ssl=context, ping_interval=None,
                     process_request=endpoint.on_request,
                     process_response=endpoint.on_response) as server:
        endpoint.port = server.sockets[0].getsockname()[1]
        yield endpoint


def add(store: Store, endpoint: Endpoint, host: str, group: str, tls: TlsMaterial) -> None:
    der = certificate_der(tls.server_cert)
    details = EndpointDetails(token=f"token-of-{group}==", priority=1, group_id=group,
                              host_name=host, url=endpoint.url())
    store.add_endpoint(details, der, fingerprint(der))


async def test_a_cookie_one_groups_endpoint_sets_never_reaches_another_group(
    tls: TlsMaterial, short_store: Store
) -> None:
    first = Endpoint(set_cookie="AWSALB=sticky-to-group-a; Path=/")
    async with serving(first, tls), serving(Endpoint(), tls) as second:
        add(short_store, first, "a.test", "GROUPA", tls)
        async with supervising(Supervisor(settings(30.0), short_store)) as supervisor:
            await until(supervisor, lambda: supervisor.connected_count == 1)
            add(short_store, second, "b.test", "GROUPB", tls)
            supervisor.wake()
            await until(supervisor, lambda: supervisor.connected_count == 2)
    [handshake] = second.handshakes
    assert "Cookie" not in handshake
    assert "Cookie" not in first.handshakes[0]
