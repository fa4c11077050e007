"""A group stalled on one batch is not silent (issue 11, item 1).

End to end: the daemon as `build_service` assembles it, a real endpoint
(`tests.peers`, the `websockets` library) that never acknowledges, short periods;
`nbwss status` as a subprocess. The state machine's rule itself is in test_delivery.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from nbwss import outbox, properties
from nbwss.commands.status import group_row
from nbwss.daemon import build_service
from nbwss.health import failing_groups
from nbwss.metrics import REGISTRY
from nbwss.statusview import group_views
from nbwss.store import Store
from nbwss.wake import send_wake
from tests.conftest import TlsMaterial
from tests.peers import Ack, Peer, add_endpoint
from tests.test_admin import nbwss
from tests.test_service import running

GROUP = "GROUP1"
STALLED_TOTAL = "nbwss_notification_batches_stalled_total"


def job(job_id: int) -> tuple[str, dict[str, Any]]:
    return ("JOB", {"jobId": job_id, "parentJobId": job_id, "state": "ACTIVE", "status": 0,
                    "clientName": "vm1", "policyName": "p", "policyType": "VMWARE",
                    "jobType": "BACKUP", "scheduleType": "ST_FULL", "startTime": 1})


@pytest.fixture
def config(short_dir: Path) -> Path:
    path = short_dir / "nbwss.properties"
    path.write_text(
        f"store.path={short_dir / 'nbwss.db'}\nconnectionInfo.period=0.3\n"
        "notification.scheduledRate=0.05\nnotification.stallAfterSends=3\n"
        "notification.maxBatch=1\nlog.level=warning\n"
    )
    return path


def notifications(peer: Peer) -> list[dict[str, Any]]:
    return peer.received("NOTIFICATION")


async def test_a_batch_never_acknowledged_is_reported_once_in_log_status_and_metric(
    tls: TlsMaterial, short_store: Store, config: Path
) -> None:
    settings = properties.load(config, env={})
    before = REGISTRY.get_sample_value(STALLED_TOTAL, {"group": GROUP}) or 0.0
    async with Peer(tls.server_cert, ack=Ack.WITHHOLD) as peer:
        add_endpoint(short_store, peer, "ep1.test", group_id=GROUP)
        with capture_logs() as logs:
            async with running(build_service(settings, short_store)):
                await peer.wait_for(lambda: peer.connected)
                with short_store.transaction() as conn:
                    outbox.enqueue(conn, [job(1), job(2)], time.time())
                send_wake(settings.wake_socket)
                await peer.wait_for(lambda: len(notifications(peer)) >= 6)
                first = notifications(peer)[0]
                assert {m["id"] for m in notifications(peer)} == {first["id"]}

                table = await nbwss(config, "status")
                assert f"{first['id'][:8]} " in table.out
                assert "STALLED after" in table.out
                document = json.loads((await nbwss(config, "status", "--json")).out)
                group = document["groups"][GROUP]
                assert group["delivery"] == "STALLED"
                assert group["outstanding"]["stalled"] is True
                assert group["outstanding"]["sends"] >= 3
                check = await nbwss(config, "status", "--check")
                assert check.code == 1
                assert f"GROUP1: delivery STALLED: message {first['id']} (seq 1-1)" in check.out

                # The ack clears it; the next batch is acknowledged at once.
                peer.ack = Ack.NOW
                await peer.ack_notification(first)
                await peer.wait_for(lambda: notifications(peer)[-1]["id"] != first["id"])
                document = json.loads((await nbwss(config, "status", "--json")).out)
                assert document["groups"][GROUP]["delivery"] == "OK"
    stalled = [event for event in logs if event["event"] == "notification.stalled"]
    assert len(stalled) == 1  # once per batch, however often it goes again
    [event] = stalled
    assert event["log_level"] == "error"
    assert (event["group"], event["host"], event["id"]) == (GROUP, "ep1.test", first["id"])
    assert (event["first_seq"], event["last_seq"], event["sends"]) == (1, 1, 3)
    assert REGISTRY.get_sample_value(STALLED_TOTAL, {"group": GROUP}) == before + 1


def test_status_shows_a_stalled_group_and_check_names_it() -> None:
    outstanding = {"message_id": "0CEAB6C2-0BBF", "first_seq": 4, "last_seq": 9, "sends": 12,
                   "stalled": True, "age_s": 2.0}
    group = {"connected": True, "endpoint": "ep1", "delivery": "STALLED", "backlog": 6,
             "outstanding": outstanding, "endpoints": [{"enabled": True}]}
    (view,) = group_views({"groups": {GROUP: group}})
    assert group_row(view, time.time())[4] == "0CEAB6C2 (2.0s) STALLED after 12 sends"
    assert failing_groups({"groups": {GROUP: group}}, 600.0) == [
        "GROUP1: delivery STALLED: message 0CEAB6C2-0BBF (seq 4-9) sent 12 times without an ack"
    ]
