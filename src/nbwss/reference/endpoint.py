"""The cloud side of NBWSS, as small as it can be and still be correct.

Read this file top to bottom to see what a cloud application must do:

1. Serve a `wss://` URL. The master server's daemon dials *out* to it.
2. The first message on a connection is a CONNECT request carrying a token. Answer it,
   with the same id, `{"valid": true}` to accept or `{"valid": false}` to refuse (and
   then close the connection).
3. Answer every NOTIFICATION request with a response of the same id and `payload: []`.
   Until you do, the daemon sends nothing new to you; after `notification.scheduledRate`
   seconds it sends the *same* message again (same id, same content). Drop duplicates
   by id: delivery is at-least-once and in order per server group. A message holds at
   most one element per object type (one JOB, one IMAGE), first-happened first, so
   reading its elements in order gives the events in order; this endpoint checks that
   and says so when a message breaks it (`grouping_violations`).
4. Send COMMAND requests when you want the master server's REST API called; the
   response carries your id, the HTTP status, headers and body.

The class below is the whole protocol. `nbwss.reference.__main__` is its command line;
`nbwss demo` and the tests drive it through the same methods.
"""

from __future__ import annotations

import asyncio
import hmac
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from nbwss.errors import ConnectError, DecodeError
from nbwss.messages import (
    JsonObject,
    Message,
    MessageType,
    SubType,
    decode,
    encode,
    request,
    response_to,
)
from nbwss.notifications import repeated_objects

DEFAULT_PATH = "/cfs/nbufacade"  # the path of the guide's example URL
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the daemon's default `message.maxBytes`
CONNECT_WAIT_S = 10.0  # how long a new connection may take to send its CONNECT


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification as it arrived: the element's object type and one `data` entry."""

    message_id: str
    object: str
    data: JsonObject
    received_at: float = field(compare=False)


def describe(notification: Notification) -> str:
    """One readable line for a notification (what the reference endpoint prints)."""
    data = notification.data
    if notification.object == "JOB":
        return (
            f"JOB   {data.get('jobId')} (parent {data.get('parentJobId')}) "
            f"{data.get('jobType')} {data.get('state')} status={data.get('status')} "
            f"client={data.get('clientName')} policy={data.get('policyName') or '-'}"
        )
    if notification.object == "IMAGE":
        return (
            f"IMAGE {data.get('operationId')} {data.get('backupId')} "
            f"client={data.get('clientName')} type={data.get('clientType')}"
        )
    return f"{notification.object} {data}"


def shape(message: Message) -> str:
    """The elements of a NOTIFICATION in order, e.g. `JOB x3, IMAGE x2` (printed per message)."""
    return ", ".join(
        f"{element.get('object')} x{len(element.get('data') or [])}"
        for element in message.payload
        if isinstance(element, dict)
    )


def notifications_of(message: Message) -> list[Notification]:
    """Flatten a NOTIFICATION payload (elements of one object type each) in arrival order."""
    now = time.time()
    found: list[Notification] = []
    for element in message.payload:
        if not isinstance(element, dict) or not isinstance(element.get("data"), list):
            raise DecodeError("a NOTIFICATION element must be an object with a 'data' array")
        for data in element["data"]:
            found.append(Notification(message.id, str(element.get("object")), data, now))
    return found


class ReferenceEndpoint:
    """A cloud endpoint that accepts one token, acks notifications and issues commands.

    Use it as `async with ReferenceEndpoint(token, ssl_context) as endpoint:`; `url` is
    then the `wss://` address to put in the endpoint details. Everything it sees is
    kept for inspection (`notifications`, `acks_sent`, ...) and printed through `out`.
    """

    def __init__(
        self,
        token: str,
        ssl_context: ssl.SSLContext | None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = DEFAULT_PATH,
        out: Callable[[str], None] | None = None,
        name: str = "endpoint",
    ) -> None:
        self.token = token
        self.ssl_context = ssl_context
        self.host, self.port, self.path = host, port, path
        self.name = name
        self.out = out or (lambda line: None)
        # Set to N to leave the next N NOTIFICATION messages unanswered (resend demos).
        self.withhold_acks = 0

        self.connected = asyncio.Event()  # set while a daemon holds a valid connection
        self.connections = 0  # CONNECTs accepted
        self.refusals = 0  # CONNECTs refused (wrong token)
        self.notifications: list[Notification] = []  # distinct, in arrival order
        self.notification_messages: list[str] = []  # every NOTIFICATION id, resends too
        self.duplicates = 0  # NOTIFICATION messages whose id was seen before
        self.grouping_violations = 0  # messages with two elements of one object type
        self.acks_sent = 0

        self._arrived = asyncio.Condition()
        self._seen_ids: set[str] = set()
        # COMMANDs awaiting their answer, by id, with the connection each was sent on.
        self._pending: dict[str, tuple[web.WebSocketResponse, asyncio.Future[Message]]] = {}
        # Connections whose CONNECT was accepted, oldest first; COMMANDs go to the newest.
        # More than one is normal: `nbwss endpoint test` opens a second one beside the
        # daemon's, and several primary servers may share one app.
        self._valid: list[web.WebSocketResponse] = []
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(self.path, self._serve)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the real port when 0 was asked for
        self.out(f"[{self.name}] listening on {self.url}")

    async def stop(self) -> None:
        """Close every connection with 'going away' (1001), then stop listening."""
        for socket in list(self._sockets):
            await socket.close(code=1001, message=b"endpoint stopping")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self.out(f"[{self.name}] stopped")

    async def __aenter__(self) -> ReferenceEndpoint:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context is not None else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{self.path}"

    # -- what a cloud app calls ---------------------------------------------------------

    async def wait_for_notifications(self, count: int) -> list[Notification]:
        """Wait until at least `count` distinct notifications have arrived."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.notifications) >= count)
        return list(self.notifications)

    async def send_command(
        self,
        uri: str,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        parameters: str | None = None,
        *,
        timeout_s: float = 60.0,
    ) -> Message:
        """Ask the connected daemon to call its local REST API; return the COMMAND RESPONSE.

        `parameters` is the request body as a string (JSON text, as in the guide).
        """
        if not self._valid:
            raise ConnectError(f"{self.name}: no daemon is connected")
        socket = self._valid[-1]
        payload: JsonObject = {"uri": uri, "method": method, "headers": headers or {}}
        if parameters is not None:
            payload["parameters"] = parameters
        command = request(MessageType.COMMAND, payload, time.time())
        answer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[command.id] = (socket, answer)
        try:
            await socket.send_str(encode(command))
            self.out(f"[{self.name}] -> COMMAND {method} {uri}")
            async with asyncio.timeout(timeout_s):
                response = await answer
        finally:
            self._pending.pop(command.id, None)
        code = response.payload.get("responseCode") if isinstance(response.payload, dict) else None
        self.out(f"[{self.name}] <- COMMAND response {code} for {method} {uri}")
        return response

    # -- one connection -------------------------------------------------------------------

    async def _serve(self, http_request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES)
        await socket.prepare(http_request)
        self._sockets.add(socket)
        try:
            if await self._handshake(socket):
                self._valid.append(socket)
                self.connected.set()
                await self._read(socket)
        finally:
            self._sockets.discard(socket)
            if socket in self._valid:
                self._valid.remove(socket)
                self.out(f"[{self.name}] daemon disconnected")
                if not self._valid:
                    self.connected.clear()
            self._fail_pending(socket)
        return socket

    def _fail_pending(self, socket: web.WebSocketResponse) -> None:
        """The COMMANDs sent on a closed connection will never be answered."""
        for sent_on, answer in self._pending.values():
            if sent_on is socket and not answer.done():
                answer.set_exception(ConnectError(f"{self.name}: connection closed"))

    async def _handshake(self, socket: web.WebSocketResponse) -> bool:
        """The first message must be a CONNECT request; accept it if the token matches."""
        try:
            frame = await socket.receive(timeout=CONNECT_WAIT_S)
            connect = decode(frame.data) if frame.type is WSMsgType.TEXT else None
        except (TimeoutError, DecodeError) as exc:
            self.out(f"[{self.name}] no valid CONNECT ({exc}); closing")
            await socket.close(code=1008, message=b"CONNECT expected")
            return False
        if connect is None or connect.type is not MessageType.CONNECT or not connect.is_request:
            await socket.close(code=1008, message=b"CONNECT expected")
            return False
        offered = connect.payload.get("token") if isinstance(connect.payload, dict) else None
        # A constant-time comparison, so the answer time does not leak the token.
        valid = isinstance(offered, str) and hmac.compare_digest(
            offered.encode(), self.token.encode()
        )
        await socket.send_str(encode(response_to(connect, {"valid": valid}, time.time())))
        if not valid:
            self.refusals += 1
            self.out(f"[{self.name}] CONNECT refused: wrong token")
            await socket.close(code=1008, message=b"invalid token")
            return False
        self.connections += 1
        self.out(f"[{self.name}] CONNECT accepted (id {connect.id})")
        return True

    async def _read(self, socket: web.WebSocketResponse) -> None:
        async for frame in socket:
            if frame.type is not WSMsgType.TEXT:
                continue  # pings are answered by aiohttp; nothing else is expected
            try:
                message = decode(frame.data, MAX_MESSAGE_BYTES)
                await self._dispatch(socket, message)
            except DecodeError as exc:
                self.out(f"[{self.name}] ignored a bad message: {exc}")

    async def _dispatch(self, socket: web.WebSocketResponse, message: Message) -> None:
        if message.type is MessageType.NOTIFICATION and message.is_request:
            await self._on_notification(socket, message)
        elif message.type is MessageType.COMMAND and message.sub_type is SubType.RESPONSE:
            pending = self._pending.get(message.id)
            if pending is not None and pending[0] is socket and not pending[1].done():
                pending[1].set_result(message)
        else:
            self.out(f"[{self.name}] ignored {message.type} {message.sub_type} {message.id}")

    async def _on_notification(self, socket: web.WebSocketResponse, message: Message) -> None:
        arrived = notifications_of(message)
        self.notification_messages.append(message.id)
        if message.id in self._seen_ids:
            # A resend: same id, same content. Already recorded; just ack it again.
            self.duplicates += 1
            self.out(f"[{self.name}] <- NOTIFICATION {message.id} again (a resend)")
        else:
            self._seen_ids.add(message.id)
            self.out(f"[{self.name}] <- NOTIFICATION {message.id[:8]}: {shape(message)}")
            repeated = repeated_objects(message.payload)
            if repeated:
                # An app that indexes the payload by `object` would lose all but one.
                self.grouping_violations += 1
                self.out(f"[{self.name}] !! NOTIFICATION {message.id} has more than one "
                         f"{' and '.join(repeated)} element (the guide allows one per type)")
            for notification in arrived:
                self.out(f"[{self.name}] <- {describe(notification)}")
            async with self._arrived:
                self.notifications.extend(arrived)
                self._arrived.notify_all()
        if self.withhold_acks > 0:
            self.withhold_acks -= 1
            self.out(f"[{self.name}] (withholding the ack of {message.id})")
            return
        await socket.send_str(encode(response_to(message, [], time.time())))
        self.acks_sent += 1
