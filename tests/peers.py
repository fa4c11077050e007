"""Endpoint servers for tests: real `wss://` on 127.0.0.1, built on `websockets`.

The daemon dials with aiohttp; its peers here use another WebSocket implementation so
the two sides do not share bugs. A `Peer` is a cloud app's endpoint whose behaviour a
test sets and changes at any time:

- `connect`: how it answers CONNECT (`VALID`, `INVALID`, `NEVER`, `WRONG_ID`), and
  `connect_delay_s`: how long it takes to (an app checking the token with its backend);
- `ack`: whether it acknowledges NOTIFICATIONs at once (`NOW`) or keeps them for the
  test to acknowledge with `ack_notification()` (`WITHHOLD`);
- `answer_pongs`: False makes it ignore the daemon's pings (keepalive tests);
- `answer_close`: False makes it ignore the daemon's close frame (a hung endpoint).

It records every frame (`frames`), every JSON message (`messages`), every connection
(`connections`, with pings seen and the close code the daemon sent), and wakes waiters
on each change, so a test awaits `wait_for(predicate)` instead of sleeping. It can send
any frame (`send`), close the live connection (`close`), stop, and start again on the
same port (`stop`/`start`), possibly with another certificate (`certificate=`).

    async with Peer(tls.server_cert) as peer:
        add_endpoint(store, peer, "ep1.test", group_id="G1", priority=1)
        ...
        await peer.wait_for(lambda: peer.connected)
"""

from __future__ import annotations

import asyncio
import enum
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import trustme
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from nbwss.endpoints import EndpointDetails
from nbwss.store import Store
from nbwss.trust import fingerprint
from tests.conftest import timeout


class ConnectAnswer(enum.StrEnum):
    VALID = "valid"  # {"valid": true} with the request's id
    INVALID = "invalid"  # {"valid": false}
    NEVER = "never"  # no answer at all
    WRONG_ID = "wrong_id"  # {"valid": true} but another id


class Ack(enum.StrEnum):
    NOW = "now"
    WITHHOLD = "withhold"


def certificate_der(cert: trustme.LeafCert) -> bytes:
    """The DER form of a trustme leaf, as `endpoint add` pins it."""
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


@dataclass
class PeerConnection:
    """One accepted connection, as the endpoint saw it."""

    ws: ServerConnection
    pings: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None  # the code the daemon sent (None: no close frame)
    close_reason: str = ""
    accepted: bool = False  # CONNECT answered valid
    closed: bool = False
    opened_at: float = field(default_factory=time.monotonic)
    answered_at: float | None = None  # when CONNECT was answered (any way)
    closed_at: float | None = None


class Peer:
    """A test endpoint server; see the module docstring."""

    def __init__(
        self,
        certificate: trustme.LeafCert,
        *,
        connect: ConnectAnswer = ConnectAnswer.VALID,
        ack: Ack = Ack.NOW,
        answer_pongs: bool = True,
        answer_close: bool = True,
        path: str = "/cfs/nbufacade",
        connect_delay_s: float = 0.0,
    ) -> None:
        self.certificate = certificate
        self.connect = connect
        self.connect_delay_s = connect_delay_s
        self.ack = ack
        self.answer_pongs = answer_pongs
        self.answer_close = answer_close
        self.path = path
        self.port = 0
        self.frames: list[str | bytes] = []
        self.messages: list[dict[str, Any]] = []
        self.connections: list[PeerConnection] = []
        self._server: Server | None = None
        self._changed = asyncio.Event()

    # -- life cycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self, certificate: trustme.LeafCert | None = None) -> None:
        """Listen (again) on the same port; `certificate` replaces the server's one."""
        if certificate is not None:
            self.certificate = certificate
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.certificate.configure_cert(context)
        self._server = await serve(
            self._handle, "127.0.0.1", self.port, ssl=context, ping_interval=None,
            create_connection=self._connection_class(), max_size=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every connection (the endpoint server goes down)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _connection_class(self) -> type[ServerConnection]:
        peer = self

        class Connection(ServerConnection):
            """Counts pings and, when told to, answers neither them nor a close frame."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                answer = self.protocol.recv_frame

                def recv_frame(frame: Frame) -> None:
                    if frame.opcode is Opcode.PING:
                        peer._on_ping(self)
                        if not peer.answer_pongs:
                            return  # the sans-I/O protocol would queue the pong here
                    if frame.opcode is Opcode.CLOSE and not peer.answer_close:
                        return
                    answer(frame)

                self.protocol.recv_frame = recv_frame  # type: ignore[method-assign]

        return Connection

    # -- what tests look at ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}{self.path}"

    @property
    def certificate_der(self) -> bytes:
        return certificate_der(self.certificate)

    @property
    def live(self) -> PeerConnection | None:
        """The open connection that completed CONNECT (or the latest open one)."""
        for connection in reversed(self.connections):
            if not connection.closed:
                return connection
        return None

    @property
    def connected(self) -> bool:
        """A connection is open and its CONNECT was answered valid."""
        live = self.live
        return live is not None and live.accepted

    def received(self, message_type: str, sub_type: str = "REQUEST") -> list[dict[str, Any]]:
        return [
            m
            for m in self.messages
            if m.get("type") == message_type and m.get("subType") == sub_type
        ]

    async def wait_for(self, predicate: Callable[[], bool], seconds: float = 5.0) -> None:
        """Return once `predicate()` holds; checked after every change the peer sees."""
        async with asyncio.timeout(timeout(seconds)):
            while not predicate():
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- what tests do ---------------------------------------------------------------------

    async def send(self, frame: str | bytes | dict[str, Any]) -> None:
        """Send any frame on the live connection (a dict is sent as JSON text)."""
        live = self._require_live()
        await live.ws.send(json.dumps(frame) if isinstance(frame, dict) else frame)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the live connection from the endpoint's side (the app closes it)."""
        await self._require_live().ws.close(code, reason)

    async def ping(self) -> float:
        """Ping the daemon; returns the round-trip time once its pong arrives."""
        pong = await self._require_live().ws.ping()
        async with asyncio.timeout(timeout(5)):
            return await pong

    async def ack_notification(self, request: dict[str, Any]) -> None:
        """Acknowledge a NOTIFICATION request (with `ack=WITHHOLD`)."""
        await self.send(_response(request, []))

    def _require_live(self) -> PeerConnection:
        live = self.live
        if live is None:
            raise AssertionError("the peer has no open connection")
        return live

    # -- the endpoint's behaviour ----------------------------------------------------------

    def _on_ping(self, ws: ServerConnection) -> None:
        for connection in self.connections:
            if connection.ws is ws:
                connection.pings += 1
        self._notify()

    async def _handle(self, ws: ServerConnection) -> None:
        connection = PeerConnection(ws)
        self.connections.append(connection)
        self._notify()
        try:
            async for frame in ws:
                self.frames.append(frame)
                await self._on_frame(connection, frame)
                self._notify()
        except ConnectionClosed:
            pass
        finally:
            received = ws.protocol.close_rcvd
            connection.close_code = received.code if received is not None else None
            connection.close_reason = received.reason if received is not None else ""
            connection.closed = True
            connection.closed_at = time.monotonic()
            self._notify()

    async def _on_frame(self, connection: PeerConnection, frame: str | bytes) -> None:
        try:
            message = json.loads(frame)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        connection.messages.append(message)
        self.messages.append(message)
        self._notify()  # seen before it is answered (an answer may take `connect_delay_s`)
        if message.get("subType") != "REQUEST":
            return
        if message.get("type") == "CONNECT":
            await self._answer_connect(connection, message)
        elif message.get("type") == "NOTIFICATION" and self.ack is Ack.NOW:
            await connection.ws.send(json.dumps(_response(message, [])))

    async def _answer_connect(self, connection: PeerConnection, request: dict[str, Any]) -> None:
        if self.connect is ConnectAnswer.NEVER:
            return
        if self.connect_delay_s:
            await asyncio.sleep(self.connect_delay_s)  # the app's own check, as slow as told
        response = _response(request, {"valid": self.connect is not ConnectAnswer.INVALID})
        if self.connect is ConnectAnswer.WRONG_ID:
            response["id"] = "00000000-0000-0000-0000-000000000000"
        connection.accepted = self.connect is ConnectAnswer.VALID
        await connection.ws.send(json.dumps(response))
        connection.answered_at = time.monotonic()


def _response(request: dict[str, Any], payload: Any) -> dict[str, Any]:
    return {
        "version": "1.0",
        "id": request.get("id"),
        "type": request.get("type"),
        "subType": "RESPONSE",
        "timeStamp": int(time.time()),
        "payload": payload,
    }


def add_endpoint(
    store: Store,
    peer: Peer,
    host_name: str,
    *,
    group_id: str = "GROUP1",
    priority: int = 1,
    token: str = "token-of-the-endpoint==",  # noqa: S107 - a test token
) -> EndpointDetails:
    """Add `peer` to a real store as `endpoint add` would, pinning its certificate."""
    details = EndpointDetails(
        token=token, priority=priority, group_id=group_id, host_name=host_name, url=peer.url
    )
    der = peer.certificate_der
    store.add_endpoint(details, der, fingerprint(der))
    return details
