"""The reference cloud endpoint, driven by a `websockets` client playing the daemon."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from nbwss import session as daemon_session
from nbwss.dial import Target
from nbwss.errors import ConnectError
from nbwss.messages import (
    Message,
    MessageType,
    SubType,
    connect_request,
    decode,
    encode,
    request,
    response_to,
)
from nbwss.properties import Settings
from nbwss.reference import Notification, ReferenceEndpoint, describe, self_signed
from nbwss.trust import pinned_context
from tests.conftest import TlsMaterial, timeout

TOKEN = "qwerrtrtrtrt2234344==="

PARENT_JOB = {
    "scheduleType": "ST_FULL", "clientName": "masterserver2.domain.com", "status": 0,
    "startTime": 1459829674, "state": "ACTIVE", "policyName": "vmware2",
    "parentJobId": 144, "jobId": 144, "policyType": "VMWARE", "jobType": "BACKUP",
}
IMAGE_CREATE = {
    "clientType": "VMWARE", "clientName": "DummyTestVM", "backupTime": 1459829673,
    "createdTime": 1459829700, "operationId": "CREATE", "backupId": "DummyTestVM_1459829673",
}


def notification(*elements: tuple[str, list[dict[str, object]]]) -> Message:
    payload = [{"notificationType": "INFO", "object": obj, "data": data} for obj, data in elements]
    return request(MessageType.NOTIFICATION, payload, time.time())


@pytest.fixture
async def endpoint(tls: TlsMaterial) -> AsyncIterator[ReferenceEndpoint]:
    async with ReferenceEndpoint(TOKEN, tls.server_context()) as running:
        yield running


async def receive(ws: ClientConnection) -> Message:
    async with asyncio.timeout(timeout(5)):
        return decode(await ws.recv())


async def dial(endpoint: ReferenceEndpoint, tls: TlsMaterial, token: str = TOKEN) -> tuple[
    ClientConnection, Message
]:
    ws = await connect(endpoint.url, ssl=tls.client_context())
    await ws.send(encode(connect_request(token, time.time())))
    return ws, await receive(ws)


async def test_connect_with_the_right_token_is_valid(
    endpoint: ReferenceEndpoint, tls: TlsMaterial
) -> None:
    assert endpoint.url.startswith("wss://127.0.0.1:")
    ws, answer = await dial(endpoint, tls)
    async with ws:
        assert answer.type is MessageType.CONNECT
        assert answer.sub_type is SubType.RESPONSE
        assert answer.payload == {"valid": True}
        async with asyncio.timeout(timeout(5)):
            await endpoint.connected.wait()
        assert endpoint.connections == 1


async def test_connect_with_a_wrong_token_is_refused_and_closed(
    endpoint: ReferenceEndpoint, tls: TlsMaterial
) -> None:
    ws, answer = await dial(endpoint, tls, token="not-the-token")
    async with ws:
        assert answer.payload == {"valid": False}
        with pytest.raises(ConnectionClosed):
            await receive(ws)
    assert endpoint.refusals == 1
    assert not endpoint.connected.is_set()


async def test_connect_answer_keeps_the_request_id(
    endpoint: ReferenceEndpoint, tls: TlsMaterial
) -> None:
    async with connect(endpoint.url, ssl=tls.client_context()) as ws:
        hello = connect_request(TOKEN, time.time())
        await ws.send(encode(hello))
        assert (await receive(ws)).id == hello.id


async def test_a_first_message_other_than_connect_closes(
    endpoint: ReferenceEndpoint, tls: TlsMaterial
) -> None:
    async with connect(endpoint.url, ssl=tls.client_context()) as ws:
        await ws.send(encode(notification(("JOB", [PARENT_JOB]))))
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008


async def test_notification_is_recorded_and_acked_with_its_id(
    endpoint: ReferenceEndpoint, tls: TlsMaterial
) -> None:
    ws, _ = await dial(endpoint, tls)
    async with ws:
        sent = notification(("JOB", [PARENT_JOB]), ("IMAGE", [IMAGE_CREATE]))
        await ws.send(encode(sent))
        ack = await receive(ws)
    assert (ack.id, ack.type, ack.sub_type, ack.payload) == (
        sent.id, MessageType.NOTIFICATION, SubType.RESPONSE, []
    )
    async with asyncio.timeout(timeout(5)):
        arrived = await endpoint.wait_for_notifications(2)
    assert [(n.object, n.data) for n in arrived] == [("JOB", PARENT_JOB), ("IMAGE", IMAGE_CREATE)]
    assert endpoint.acks_sent == 1


async def test_a_message_with_two_elements_of_one_type_is_flagged_and_still_acked(
    tls: TlsMaterial,
) -> None:
    lines: list[str] = []
    async with ReferenceEndpoint(TOKEN, tls.server_context(), out=lines.append) as endpoint:
        ws, _ = await dial(endpoint, tls)
        async with ws:
            good = notification(("JOB", [PARENT_JOB]), ("IMAGE", [IMAGE_CREATE]))
            bad = notification(("JOB", [PARENT_JOB]), ("IMAGE", [IMAGE_CREATE]), ("JOB", []))
            for sent in (good, bad):
                await ws.send(encode(sent))
                assert (await receive(ws)).id == sent.id  # acked all the same: nothing lost
    assert endpoint.grouping_violations == 1
    assert f"[endpoint] <- NOTIFICATION {good.id[:8]}: JOB x1, IMAGE x1" in lines
    assert any(f"NOTIFICATION {bad.id} has more than one JOB element" in line for line in lines)


async def test_withheld_ack_then_resend_with_same_id_is_one_notification(
    endpoint: ReferenceEndpoint, tls: TlsMaterial
) -> None:
    endpoint.withhold_acks = 1
    ws, _ = await dial(endpoint, tls)
    async with ws:
        sent = notification(("JOB", [PARENT_JOB]))
        await ws.send(encode(sent))
        await ws.send(encode(sent))  # the daemon's resend: same id, same content
        ack = await receive(ws)
    assert ack.id == sent.id
    # Messages are handled in order, so by the time the only ack came, both had arrived.
    assert endpoint.notification_messages == [sent.id, sent.id]
    assert endpoint.acks_sent == 1
    assert endpoint.duplicates == 1
    assert len(endpoint.notifications) == 1


async def test_command_round_trip(endpoint: ReferenceEndpoint, tls: TlsMaterial) -> None:
    ws, _ = await dial(endpoint, tls)
    async with ws:
        async with asyncio.timeout(timeout(5)):
            await endpoint.connected.wait()
        pending = asyncio.create_task(
            endpoint.send_command(
                "/netbackup/config/servers/vmservers", "POST",
                {"Content-Type": "application/json"}, '{"serverName": "vcenterServer1"}',
            )
        )
        command = await receive(ws)
        assert command.type is MessageType.COMMAND
        assert command.is_request
        assert command.payload == {
            "uri": "/netbackup/config/servers/vmservers", "method": "POST",
            "headers": {"Content-Type": "application/json"},
            "parameters": '{"serverName": "vcenterServer1"}',
        }
        reply = {"headers": {"content-type": "application/json"}, "responseCode": 201,
                 "body": "{}"}
        await ws.send(encode(response_to(command, reply, time.time())))
        async with asyncio.timeout(timeout(5)):
            response = await pending
    assert response.id == command.id
    assert response.payload == reply


async def test_command_fails_when_the_connection_closes(
    endpoint: ReferenceEndpoint, tls: TlsMaterial
) -> None:
    ws, _ = await dial(endpoint, tls)
    async with asyncio.timeout(timeout(5)):
        await endpoint.connected.wait()
    pending = asyncio.create_task(endpoint.send_command("/netbackup/admin/jobs"))
    await receive(ws)
    await ws.close()
    with pytest.raises(ConnectError):
        async with asyncio.timeout(timeout(5)):
            await pending


async def test_a_second_connection_closing_leaves_the_first_one_serving(
    tls: TlsMaterial,
) -> None:
    # `nbwss endpoint test` opens a short second connection beside the daemon's: its close
    # must neither fail the daemon's pending COMMAND nor make the app think nobody is there.
    disconnected = asyncio.Event()

    def out(line: str) -> None:
        if line.endswith("daemon disconnected"):
            disconnected.set()

    async with ReferenceEndpoint(TOKEN, tls.server_context(), out=out) as endpoint:
        daemon, _ = await dial(endpoint, tls)
        async with daemon:
            async with asyncio.timeout(timeout(5)):
                await endpoint.connected.wait()
            first = asyncio.create_task(endpoint.send_command("/netbackup/admin/jobs"))
            command = await receive(daemon)
            probe, answer = await dial(endpoint, tls)
            assert answer.payload == {"valid": True}
            await probe.close()
            async with asyncio.timeout(timeout(5)):
                await disconnected.wait()
            assert endpoint.connected.is_set()
            reply = {"headers": {}, "responseCode": 200, "body": ""}
            await daemon.send(encode(response_to(command, reply, time.time())))
            async with asyncio.timeout(timeout(5)):
                assert (await first).payload == reply
            second = asyncio.create_task(endpoint.send_command("/netbackup/admin/jobs"))
            assert (await receive(daemon)).type is MessageType.COMMAND
            second.cancel()


async def test_command_without_a_connection_is_an_error(endpoint: ReferenceEndpoint) -> None:
    with pytest.raises(ConnectError, match="no daemon is connected"):
        await endpoint.send_command("/netbackup/admin/jobs")


async def test_stop_closes_the_connection_as_going_away(tls: TlsMaterial) -> None:
    endpoint = ReferenceEndpoint(TOKEN, tls.server_context())
    await endpoint.start()
    ws, _ = await dial(endpoint, tls)
    await endpoint.stop()
    with pytest.raises(ConnectionClosed) as closed:
        await receive(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001


async def test_self_signed_material_serves_wss() -> None:
    material = self_signed()
    async with ReferenceEndpoint(TOKEN, material.server_context) as endpoint:
        context = material.client_context()
        async with connect(endpoint.url, ssl=context) as ws:
            ssl_object = ws.transport.get_extra_info("ssl_object")
            assert isinstance(ssl_object, ssl.SSLObject)
            assert ssl_object.getpeercert(binary_form=True) == material.certificate_der
    assert len(material.fingerprint) == 95  # 32 hex pairs and 31 colons


def test_describe_gives_one_readable_line() -> None:
    job = describe(Notification("X", "JOB", PARENT_JOB, 0.0))
    image = describe(Notification("X", "IMAGE", IMAGE_CREATE, 0.0))
    assert job == (
        "JOB   144 (parent 144) BACKUP ACTIVE status=0 client=masterserver2.domain.com "
        "policy=vmware2"
    )
    assert image == "IMAGE CREATE DummyTestVM_1459829673 client=DummyTestVM type=VMWARE"
    assert "\n" not in job + image


async def test_command_line_endpoint_writes_details_and_stops_on_sigterm(tmp_path: Path) -> None:
    details = tmp_path / "endpoint.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nbwss.reference", "--token", TOKEN, "--self-signed",
        "--details", str(details), "--group", "G1", "--priority", "2",
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(timeout(30)):
            while not (line := (await process.stdout.readline()).decode()).startswith(
                "endpoint details written"
            ):
                assert line, "the endpoint exited early"
        written = json.loads(details.read_text())
        assert written["token"] == TOKEN
        assert written["groupId"] == "G1"
        assert written["priority"] == 2
        assert written["url"].startswith("wss://127.0.0.1:")
        assert os.stat(details).st_mode & 0o777 == 0o600
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout(30)):
            await process.communicate()
    assert process.returncode == 0


async def test_the_daemons_own_session_connects_and_is_refused_with_a_wrong_token() -> None:
    """Interop with nbwss.session, as `nbwss demo` relies on (the websockets tests above
    check the protocol; this checks the two halves of this project fit)."""
    material = self_signed()
    async with ReferenceEndpoint(TOKEN, material.server_context) as endpoint, \
            aiohttp.ClientSession() as http:
        context = pinned_context(material.certificate_der)

        def target(token: str) -> Target:
            der = material.certificate_der
            return Target("G1", "127.0.0.1", endpoint.url, token, der)

        with pytest.raises(ConnectError, match="refused the token"):
            await daemon_session.connect(http, target("wrong"), Settings(), context)
        session = await daemon_session.connect(http, target(TOKEN), Settings(), context)
        running = asyncio.create_task(session.run())
        async with asyncio.timeout(timeout(5)):
            await endpoint.connected.wait()
        await endpoint.stop()
        async with asyncio.timeout(timeout(5)):
            reason = await running
    assert (endpoint.refusals, endpoint.connections) == (1, 1)
    assert "1001" in reason


def test_command_line_refuses_a_bad_header_in_one_line_before_serving() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nbwss.reference", "--token", "t0ken", "--self-signed",
         "--header", "bad", "--command", "GET /netbackup/x"],
        capture_output=True, text=True, timeout=timeout(30), check=False,
    )
    assert result.returncode == 1
    assert result.stderr == "nbwss.reference: error: --header 'bad' is not 'NAME: VALUE'\n"
    assert "listening" not in result.stdout
