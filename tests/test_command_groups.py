"""No head-of-line blocking across server groups (issue 14, item 7), end to end.

The daemon as `build_service` assembles it, two real endpoints (`tests.peers`, the
`websockets` library) in two server groups, and the stand-in REST API over loopback
HTTPS holding one path: a COMMAND stuck at the API for one group must not delay
another group's COMMAND (the proxy's slots are per connection; its HTTP pool is shared).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nbwss import properties
from nbwss.daemon import build_service
from nbwss.messages import MessageType, request
from nbwss.standin.restapi import StandinApi, serving
from nbwss.store import Store
from tests.conftest import TlsMaterial, timeout
from tests.peers import Peer, add_endpoint
from tests.test_service import running


def answers(peer: Peer) -> list[dict[str, Any]]:
    return peer.received("COMMAND", "RESPONSE")


def command(uri: str, token: str) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", "Authorization": token}
    return request(MessageType.COMMAND, {"uri": uri, "method": "GET", "headers": headers},
                   now=0).to_json()  # fmt: skip


async def test_a_command_held_at_the_api_for_one_group_delays_no_other_group(
    tls: TlsMaterial, short_store: Store, short_dir: Path
) -> None:
    api = StandinApi()
    token = api.login()
    gate = api.hold("/netbackup/admin/jobs")
    async with serving(api, tls.server_context()) as base_url, Peer(
        tls.server_cert
    ) as slow_group, Peer(tls.server_cert) as other_group:
        config = short_dir / "nbwss.properties"
        config.write_text(
            f"store.path={short_dir / 'nbwss.db'}\nconnectionInfo.period=0.3\n"
            f"restApi.baseUrl={base_url}\nrestApi.caFile={tls.ca_file}\nlog.level=warning\n"
            "command.maxConcurrent=2\n"
        )
        add_endpoint(short_store, slow_group, "a.test", group_id="GROUPA")
        add_endpoint(short_store, other_group, "b.test", group_id="GROUPB")
        settings = properties.load(config, env={})
        async with running(build_service(settings, short_store)):
            await slow_group.wait_for(lambda: slow_group.connected, timeout(10))
            await other_group.wait_for(lambda: other_group.connected, timeout(10))
            held = command("/netbackup/admin/jobs", token)
            for n in range(3):  # more than its slots: one waits for a free one
                await slow_group.send({**held, "id": f"{held['id']}-{n}"})
            await api.wait_for_requests(2)

            quick = command("/netbackup/catalog/images", token)
            await other_group.send(quick)
            await other_group.wait_for(lambda: bool(answers(other_group)), timeout(10))
            [answer] = answers(other_group)
            assert answer["id"] == quick["id"]
            assert answer["payload"]["responseCode"] == 200
            assert answers(slow_group) == []  # still held at the API

            gate.set()
            await slow_group.wait_for(lambda: len(answers(slow_group)) == 3, timeout(10))
    assert [a["payload"]["responseCode"] for a in answers(slow_group)] == [200, 200, 200]
