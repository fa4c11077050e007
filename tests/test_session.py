"""One connection against a real `wss://` endpoint built on `websockets` (tests/peers.py)."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import json
import re
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from nbwss import dial as dial_module
from nbwss import messages, outbox
from nbwss import session as session_module
from nbwss.dial import Target, trim_tls_read_buffer
from nbwss.endpoints import EndpointDetails
from nbwss.errors import ConnectError, TrustError
from nbwss.link import Link
from nbwss.messages import Message, MessageType, SubType
from nbwss.outboxes import GroupOutbox
from nbwss.properties import Settings
from nbwss.protocol import DeliveryLedger
from nbwss.proxy import CommandProxy
from nbwss.session import Session, connect
from nbwss.store import Store
from nbwss.trust import pinned_context
from nbwss.wake import Waker
from tests.conftest import TlsMaterial, timeout
from tests.faultproxy import FaultProxy
from tests.peers import Ack, ConnectAnswer, Peer

UUID_UPPER = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$")
TOKEN = "qwerrtrtrtrt2234344==="
FAST = Settings(send_timeout_s=0.5, connect_response_timeout_s=0.5, keepalive_rate_s=30.0)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def peer(tls: TlsMaterial) -> AsyncIterator[Peer]:
    async with Peer(tls.server_cert) as server:
        yield server


def target(peer: Peer, der: bytes | None = None) -> Target:
    return Target("GROUP1", "ep1.test", peer.url, TOKEN, der or peer.certificate_der)


async def dial(
    http: aiohttp.ClientSession, peer: Peer, settings: Settings = FAST, **kwargs: Any
) -> Session:
    return await connect(
        http, target(peer), settings, pinned_context(peer.certificate_der), **kwargs
    )


class Running:
    """A session served in a task for the length of a test."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.task = asyncio.create_task(session.run())

    async def ended(self) -> str:
        async with asyncio.timeout(timeout(5)):
            return await self.task


async def test_connect_sends_the_token_in_a_spec_shaped_request(
    http: aiohttp.ClientSession, peer: Peer
) -> None:
    session = await dial(http, peer)
    running = Running(session)
    (request,) = peer.received("CONNECT")
    assert set(request) == {"version", "id", "type", "subType", "timeStamp", "payload"}
    assert request["version"] == "1.0"
    assert UUID_UPPER.match(request["id"])
    assert type(request["timeStamp"]) is int
    assert request["payload"] == {"token": TOKEN}
    assert peer.connected
    await session.close("test over")
    assert await running.ended() == "test over"
    await peer.wait_for(lambda: peer.connections[0].closed)
    assert peer.connections[0].close_code == 1000


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (ConnectAnswer.INVALID, "refused the token"),
        (ConnectAnswer.NEVER, r"no CONNECT response in 0\.5 s \(connect\.responseTimeout\)"),
        (ConnectAnswer.WRONG_ID, "another id"),
    ],
)
async def test_a_connect_not_answered_valid_closes_and_raises(
    http: aiohttp.ClientSession, peer: Peer, answer: ConnectAnswer, why: str
) -> None:
    peer.connect = answer
    with pytest.raises(ConnectError, match=why):
        await dial(http, peer)
    await peer.wait_for(lambda: peer.connections[0].closed)
    assert peer.connections[0].close_code is not None  # a close frame, not a dropped socket


async def test_a_changed_server_certificate_is_refused(
    http: aiohttp.ClientSession, tls: TlsMaterial, peer: Peer
) -> None:
    pinned = peer.certificate_der
    await peer.stop()
    # Same CA, same names, new key: only the pinned certificate itself is trusted.
    await peer.start(certificate=tls.ca.issue_cert("localhost", "127.0.0.1"))
    with pytest.raises(TrustError, match="did not match"):
        await connect(http, target(peer, pinned), FAST, pinned_context(pinned))
    assert peer.received("CONNECT") == []


async def test_an_endpoint_that_is_down_cannot_be_connected(
    http: aiohttp.ClientSession, peer: Peer
) -> None:
    await peer.stop()
    with pytest.raises(ConnectError, match=r"Unable to establish connection with host: ep1\.test"):
        await dial(http, peer)


async def test_a_garbage_frame_closes_the_connection_by_default(
    http: aiohttp.ClientSession, peer: Peer
) -> None:
    running = Running(await dial(http, peer))
    await peer.send("this is not JSON")
    reason = await running.ended()
    assert reason.startswith("undecodable frame: message is not JSON")
    await peer.wait_for(lambda: peer.connections[0].closed)
    assert peer.connections[0].close_code == 1002


async def test_a_binary_frame_closes_the_connection_by_default(
    http: aiohttp.ClientSession, peer: Peer
) -> None:
    running = Running(await dial(http, peer))
    await peer.send(b"\x00\x01")
    assert "binary" in await running.ended()
    await peer.wait_for(lambda: peer.connections[0].closed)
    assert peer.connections[0].close_code == 1003


async def test_with_ignore_decoder_bad_frames_are_skipped(
    http: aiohttp.ClientSession, peer: Peer
) -> None:
    settings = Settings(send_timeout_s=0.5, ignore_decoder=True, message_max_bytes=1024)
    running = Running(await dial(http, peer, settings))
    for garbage in ("nope", b"\x00", '{"version":"2.0"}', "x" * 1500):
        await peer.send(garbage)
    command = messages.request(MessageType.COMMAND, {"uri": "/netbackup/x", "method": "GET"}, 0)
    await peer.send(command.to_json())
    await peer.wait_for(lambda: bool(peer.received("COMMAND", "RESPONSE")))
    assert not running.task.done()
    await running.session.close("done")
    await running.ended()


async def test_a_frame_far_over_the_size_limit_closes_even_when_ignoring(
    http: aiohttp.ClientSession, peer: Peer
) -> None:
    settings = Settings(send_timeout_s=0.5, ignore_decoder=True, message_max_bytes=1024)
    running = Running(await dial(http, peer, settings))
    await peer.send("x" * 2049)  # over twice the limit: not even read
    assert (await running.ended()).startswith("protocol error")
    await peer.wait_for(lambda: peer.connections[0].closed)
    assert peer.connections[0].close_code == 1009


async def test_unmatched_responses_and_unexpected_requests_are_dropped(
    http: aiohttp.ClientSession, peer: Peer
) -> None:
    running = Running(await dial(http, peer))
    stray = [
        messages.Message("AB", MessageType.COMMAND, messages.SubType.RESPONSE, 0, {}),
        messages.Message("CD", MessageType.NOTIFICATION, messages.SubType.RESPONSE, 0, []),
        messages.request(MessageType.CONNECT, {"token": "x"}, 0),
    ]
    for message in stray:
        await peer.send(message.to_json())
    command = messages.request(MessageType.COMMAND, {"uri": "/netbackup/x", "method": "GET"}, 0)
    await peer.send(command.to_json())
    await peer.wait_for(lambda: bool(peer.received("COMMAND", "RESPONSE")))
    assert [m["id"] for m in peer.received("COMMAND", "RESPONSE")] == [command.id]
    assert not running.task.done()
    await running.session.close("done")
    await running.ended()


async def test_a_command_without_a_proxy_gets_a_501_that_says_why(
    http: aiohttp.ClientSession, peer: Peer
) -> None:
    running = Running(await dial(http, peer))
    command = messages.request(MessageType.COMMAND, {"uri": "/netbackup/x", "method": "GET"}, 0)
    await peer.send(command.to_json())
    await peer.wait_for(lambda: bool(peer.received("COMMAND", "RESPONSE")))
    (response,) = peer.received("COMMAND", "RESPONSE")
    assert response["id"] == command.id
    assert response["payload"]["responseCode"] == 501
    body = json.loads(response["payload"]["body"])
    assert (body["errorCode"], body["origin"]) == (501, "nbwss")
    assert "no REST proxy" in body["errorMessage"]
    await running.session.close("done")
    await running.ended()


async def test_a_slow_command_does_not_block_the_reader(
    http: aiohttp.ClientSession, peer: Peer
) -> None:
    release = asyncio.Event()

    async def handler(request: Message, link: Link) -> Message:
        await release.wait()
        return messages.response_to(request, {"headers": {}, "responseCode": 200, "body": ""}, 0)

    running = Running(await dial(http, peer, command_handler=handler))
    command = messages.request(MessageType.COMMAND, {"uri": "/netbackup/x", "method": "GET"}, 0)
    await peer.send(command.to_json())
    await peer.ping()  # answered while the command is still running
    assert peer.received("COMMAND", "RESPONSE") == []
    release.set()
    await peer.wait_for(lambda: bool(peer.received("COMMAND", "RESPONSE")))
    assert peer.received("COMMAND", "RESPONSE")[0]["payload"]["responseCode"] == 200
    await running.session.close("done")
    await running.ended()


async def test_pong_misses_close_after_exactly_the_configured_count(
    http: aiohttp.ClientSession, peer: Peer
) -> None:
    peer.answer_pongs = False
    settings = Settings(send_timeout_s=0.5, keepalive_rate_s=0.05, max_pong_misses=3)
    running = Running(await dial(http, peer, settings))
    assert await running.ended() == "no pong for 3 pings"
    await peer.wait_for(lambda: peer.connections[0].closed)
    assert peer.connections[0].pings == 3
    assert peer.connections[0].close_code == 1001


async def test_answered_pings_keep_the_connection(
    http: aiohttp.ClientSession, peer: Peer
) -> None:
    settings = Settings(send_timeout_s=0.5, keepalive_rate_s=0.02, max_pong_misses=1)
    running = Running(await dial(http, peer, settings))
    await peer.wait_for(lambda: peer.connections[0].pings >= 5)
    assert not running.task.done()
    assert running.session.pong_misses == 0
    await running.session.close("done")
    await running.ended()


def group_outbox(store: Store, *job_ids: int) -> GroupOutbox:
    """GROUP1's outbox in a real store, with `job_ids` queued."""
    details = EndpointDetails(token=TOKEN, priority=1, group_id="GROUP1",
                              host_name="ep1.test", url="wss://127.0.0.1:1/cfs")
    store.add_endpoint(details, b"certificate", "00:11")
    with store.transaction() as conn:
        outbox.enqueue(conn, [("JOB", {"jobId": j, "state": "ACTIVE"}) for j in job_ids], 0)
    return GroupOutbox(store, DeliveryLedger("GROUP1"), Waker())


async def test_notification_responses_reach_the_group_delivery(
    http: aiohttp.ClientSession, peer: Peer, short_store: Store
) -> None:
    delivery = group_outbox(short_store, 1, 2)
    settings = Settings(send_timeout_s=0.5, notification_max_batch=1)
    running = Running(await dial(http, peer, settings, delivery=delivery))
    # The second batch goes only once the first one's ack was judged and committed.
    await peer.wait_for(lambda: len(peer.received("NOTIFICATION")) == 2)
    await running.session.close("done")
    await running.ended()
    assert outbox.load_position(short_store, "GROUP1", 0).acked_seq >= 1
    assert delivery.ledger.last_ack_at is not None


async def test_the_endpoint_closing_ends_the_session_with_its_code(
    http: aiohttp.ClientSession, peer: Peer, short_store: Store
) -> None:
    peer.ack = Ack.WITHHOLD
    running = Running(await dial(http, peer, delivery=group_outbox(short_store, 1)))
    await peer.wait_for(lambda: bool(peer.received("NOTIFICATION")))
    await peer.close(4000, "app says bye")
    assert await running.ended() == "closed by the endpoint (code 4000)"
    with pytest.raises(ConnectionError):
        await running.session.send(messages.request(MessageType.NOTIFICATION, [], 0))


def test_close_reasons_fit_a_control_frame_without_splitting_a_character() -> None:
    reason = session_module._reason_bytes("é" * 100)
    assert len(reason) <= 123
    assert reason.decode("utf-8") == "é" * 61


def test_the_tls_read_buffer_is_trimmed_and_never_enlarged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    protocol = asyncio.sslproto.SSLProtocol
    monkeypatch.setattr(protocol, "max_size", 256 * 1024)
    trim_tls_read_buffer()
    assert protocol.max_size == dial_module.TLS_READ_BUFFER_BYTES
    monkeypatch.setattr(protocol, "max_size", 4096)
    trim_tls_read_buffer()
    assert protocol.max_size == 4096


async def test_the_connections_of_a_loop_share_one_tls_read_buffer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thousand idle connections hold one staging buffer, not a thousand (16 MiB)."""
    protocol = asyncio.sslproto.SSLProtocol
    monkeypatch.setattr(protocol, "__init__", protocol.__init__)  # undone after the test
    monkeypatch.setattr(protocol, "max_size", 256 * 1024)
    trim_tls_read_buffer()
    trim_tls_read_buffer()  # once only: not wrapped twice
    loop = asyncio.get_running_loop()
    context = ssl.create_default_context()
    made = [protocol(loop, asyncio.Protocol(), context, loop.create_future()) for _ in range(2)]
    try:
        buffer = made[0].get_buffer(-1)
        assert len(buffer) == dial_module.TLS_READ_BUFFER_BYTES
        assert buffer.obj is made[1].get_buffer(-1).obj
        assert buffer is made[1].get_buffer(-1)  # one view too, not one per connection
    finally:
        for tls in made:  # never connected: close what each made, or it warns
            tls._get_app_transport().close()  # type: ignore[attr-defined]


async def test_a_tls_connection_keeps_no_decoded_peer_certificate_but_gives_it_on_request(
    http: aiohttp.ClientSession, peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """About 2 KiB per idle connection that nothing reads: decoded again when asked."""
    protocol = asyncio.sslproto.SSLProtocol
    for hook in ("_on_handshake_complete", "_get_extra_info"):  # undone after the test
        monkeypatch.setattr(protocol, hook, getattr(protocol, hook))
    dial_module.keep_no_peercert_dict()
    wrapped = protocol._on_handshake_complete
    dial_module.keep_no_peercert_dict()  # once only: not wrapped twice
    assert protocol._on_handshake_complete is wrapped
    session = await dial(http, peer)
    try:
        ws: Any = session._ws
        tls = ws._response.connection.transport._ssl_protocol
        assert "peercert" not in tls._extra
        decoded = ws.get_extra_info("peercert")
        assert decoded == ws.get_extra_info("ssl_object").getpeercert()
        assert decoded["subjectAltName"]
    finally:
        await session.abort()


async def test_an_open_websocket_keeps_nothing_of_the_http_upgrade(
    http: aiohttp.ClientSession, peer: Peer
) -> None:
    """The upgrade's headers and parser go once frames flow (~3 KiB a connection);
    the connection works as before."""
    running = Running(await dial(http, peer))
    ws: Any = running.session._ws
    response = ws._response
    assert response.raw_headers == ()
    assert len(response.headers) == 0
    assert len(response.request_info.headers) == 0
    assert response._protocol._parser is None
    await peer.wait_for(lambda: bool(peer.received("CONNECT")))
    await peer.close(4000, "bye")
    assert await running.ended() == "closed by the endpoint (code 4000)"


async def test_an_aiohttp_that_refuses_the_release_keeps_the_upgrade_and_connects(
    http: aiohttp.ClientSession, peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only memory is at stake: an aiohttp whose private parts changed (a read-only
    property, another signature) must not fail every dial; said once, not per dial."""

    def refuse(ws: Any) -> None:
        raise TypeError("RequestInfo() takes another signature")

    monkeypatch.setattr(dial_module, "_release_upgrade", refuse)
    monkeypatch.setattr(dial_module, "_upgrade_kept_logged", False)
    with capture_logs() as logged:
        running = Running(await dial(http, peer))
        await peer.wait_for(lambda: bool(peer.received("CONNECT")))
        await peer.close(4000, "bye")
        assert await running.ended() == "closed by the endpoint (code 4000)"
        await (await dial(http, peer)).abort()
    kept = [e for e in logged if e["event"] == "dial.upgrade_kept"]
    assert [e["reason"] for e in kept] == ["TypeError: RequestInfo() takes another signature"]


def test_a_target_never_shows_its_token() -> None:
    assert TOKEN not in repr(Target("G", "h", "wss://h/x", TOKEN, b"der"))


# -- COMMANDs the app can still be answered, and those it cannot --------------------------


@pytest.mark.parametrize("ignore_decoder", [False, True])
async def test_a_command_with_a_readable_id_but_a_bad_payload_gets_a_400(
    http: aiohttp.ClientSession, peer: Peer, ignore_decoder: bool
) -> None:
    settings = Settings(send_timeout_s=0.5, ignore_decoder=ignore_decoder)
    running = Running(await dial(http, peer, settings))
    bad = {"version": "1.0", "id": "my command 1", "type": "COMMAND", "subType": "REQUEST",
           "timeStamp": 1444806222, "payload": ["GET", "/netbackup/x"]}  # fmt: skip
    await peer.send(bad)
    await peer.wait_for(lambda: bool(peer.received("COMMAND", "RESPONSE")))
    (response,) = peer.received("COMMAND", "RESPONSE")
    assert response["id"] == "my command 1"
    assert response["payload"]["responseCode"] == 400
    body = json.loads(response["payload"]["body"])
    assert body["errorMessage"] == "'payload' of a COMMAND message must be an object"
    assert body["origin"] == "nbwss"
    assert not running.task.done()  # answered, not closed (whatever ignoreDecoder says)
    await running.session.close("done")
    assert await running.ended() == "done"


async def test_commands_in_flight_when_the_connection_drops_are_logged_unanswered(
    http: aiohttp.ClientSession, peer: Peer, standin: tuple[Any, str], tls: TlsMaterial
) -> None:
    api, base_url = standin
    gate = api.hold("/netbackup/admin/jobs")
    settings = Settings(rest_api_base_url=base_url, rest_api_ca_file=tls.ca_file,
                        command_max_concurrent=1)  # fmt: skip
    async with CommandProxy(settings) as proxy:
        running = Running(await dial(http, peer, command_handler=proxy))
        jobs = {"uri": "/netbackup/admin/jobs?filter=x", "method": "GET"}
        first = messages.request(MessageType.COMMAND, jobs, 0)
        second = messages.request(MessageType.COMMAND, jobs, 0)  # queued behind the first
        with capture_logs() as logged:
            await peer.send(first.to_json())
            await peer.send(second.to_json())
            async with asyncio.timeout(timeout(5)):
                await api.wait_for_requests(1)  # the first reached the API and is held there
            await peer.close(1001, "app restarts")
            await running.ended()
        gate.set()
    unanswered = {e["id"]: e for e in logged if e["event"] == "command.unanswered"}
    assert set(unanswered) == {first.id, second.id}
    for command, called in ((first, True), (second, False)):
        event = unanswered[command.id]
        assert (event["method"], event["uri"]) == ("GET", "/netbackup/admin/jobs?filter=")
        assert event["api_called"] is called
        assert event["reason"] == "closed by the endpoint (code 1001)"
    assert peer.received("COMMAND", "RESPONSE") == []


async def test_a_time_stamp_in_milliseconds_is_warned_about_once_per_connection(
    http: aiohttp.ClientSession, peer: Peer
) -> None:
    running = Running(await dial(http, peer))
    with capture_logs() as logged:
        for _ in range(2):
            command = messages.request(MessageType.COMMAND, {"uri": "/x", "method": "GET"}, 0)
            await peer.send({**command.to_json(), "timeStamp": 1444806222000})
        await peer.wait_for(lambda: len(peer.received("COMMAND", "RESPONSE")) == 2)
    warned = [e for e in logged if e["event"] == "message.timestamp_milliseconds"]
    assert [(e["time_stamp"], e["log_level"]) for e in warned] == [(1444806222000, "warning")]
    await running.session.close("done")
    await running.ended()


async def test_a_write_past_the_send_timeout_raises_timeout_not_connection_error(
    http: aiohttp.ClientSession, peer: Peer
) -> None:
    """`Link.send`'s contract: past `notification.sendTimeout` a `TimeoutError` (the
    core counts the batch as not sent and the connection stays), not `ConnectionError`
    (which would close it as lost)."""
    async with FaultProxy("127.0.0.1", peer.port) as proxy:
        through = Target("GROUP1", "ep1.test", f"wss://127.0.0.1:{proxy.port}{peer.path}",
                         TOKEN, peer.certificate_der)
        settings = Settings(send_timeout_s=0.2, connect_response_timeout_s=5.0,
                            keepalive_rate_s=30.0)
        session = await connect(http, through, settings, pinned_context(peer.certificate_der))
        try:
            proxy.stall_all()  # nothing more gets through: the socket's buffers fill up
            big = Message("BIG", MessageType.NOTIFICATION, SubType.REQUEST, 0, ["x" * (1 << 20)])

            async def fill_the_buffers() -> None:
                for _ in range(256):
                    await session.send(big)

            async with asyncio.timeout(timeout(10)):  # expiring: CancelledError inside
                with pytest.raises(TimeoutError):
                    await fill_the_buffers()
        finally:
            proxy.resume_all()
            await session.abort()


async def test_the_driver_loops_wait_ends_when_set_and_misses_no_set() -> None:
    attention = session_module._Attention()
    attention.set()  # before the wait: not lost
    async with asyncio.timeout(timeout(1)):
        await attention.wait()
    attention.clear()
    waiting = asyncio.create_task(attention.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    attention.set()
    async with asyncio.timeout(timeout(1)):
        await waiting
    attention.clear()
    waiting = asyncio.create_task(attention.wait())
    await asyncio.sleep(0)
    waiting.cancel()  # a cancelled wait leaves nothing behind: the next one works
    with pytest.raises(asyncio.CancelledError):
        await waiting
    attention.set()
    async with asyncio.timeout(timeout(1)):
        await attention.wait()


async def test_a_connected_session_keeps_no_copy_of_the_pinned_certificate(
    http: aiohttp.ClientSession, peer: Peer
) -> None:
    """Checked once at the dial; the group's endpoint record holds it (issue 14)."""
    session = await dial(http, peer)
    try:
        assert session.target.certificate_der == b""
        assert session.target.host_name == "ep1.test"
    finally:
        await session.abort()
