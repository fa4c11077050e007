"""The connection process: pure decisions first, then real endpoints and a real store."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from nbwss import heap
from nbwss.backoff import Backoff
from nbwss.failover import (
    STABLE_AFTER_S,
    Round,
    connection_order,
    group_signature,
    identity_of,
    plan,
    retry_delay,
    token_digest,
)
from nbwss.properties import Settings
from nbwss.store import Store
from nbwss.supervisor import Supervisor
from nbwss.values import EndpointRecord
from tests.conftest import TlsMaterial, timeout
from tests.peers import ConnectAnswer, Peer, add_endpoint

# -- pure ----------------------------------------------------------------------------------


def record(host: str, group: str = "G", priority: int = 1, enabled: bool = True) -> EndpointRecord:
    return EndpointRecord(
        host_name=host, url=f"wss://{host}:443/x", group_id=group, priority=priority,
        enabled=enabled, fingerprint="AA", certificate_der=b"der", updated_at=0.0,
        connected=False, status_since=None, last_error=None,
    )


def test_order_is_priority_then_host_name_and_skips_disabled() -> None:
    records = [
        record("c", priority=2), record("b", priority=2), record("a", priority=3),
        record("z", priority=1, enabled=False), record("y", group="H", priority=9),
    ]
    order = connection_order(records)
    assert {g: [r.host_name for r in rs] for g, rs in order.items()} == {
        "G": ["b", "c", "a"], "H": ["y"],
    }


def test_a_group_with_only_disabled_endpoints_has_nothing_to_try() -> None:
    assert connection_order([record("a", enabled=False)]) == {}


def test_plan_closes_deleted_disabled_and_re_added_endpoints_only() -> None:
    kept, disabled, readded, renewed = record("kept"), record("off"), record("moved"), record("tok")
    live = {
        "kept": identity_of(kept, token_digest("t")),
        "off": identity_of(disabled, token_digest("t")),
        "gone": identity_of(record("gone"), token_digest("t")),
        "moved": identity_of(readded, token_digest("t")),
        "tok": identity_of(renewed, token_digest("t")),
    }
    moved = replace(readded, url="wss://new:1/x")
    records = [kept, replace(disabled, enabled=False), moved, renewed]
    digests = {"kept": token_digest("t"), "off": token_digest("t"), "moved": token_digest("t"),
               "tok": token_digest("new token")}
    decision = plan(records, live, digests)
    assert decision.close == {
        "off": "endpoint disabled",
        "gone": "endpoint deleted",
        "moved": "endpoint re-added with new details",
        "tok": "endpoint re-added with new details",
    }
    assert [r.host_name for r in decision.groups["G"]] == ["kept", "moved", "tok"]


def test_after_a_refused_token_the_backoff_doubles_from_two_seconds_up_to_the_period() -> None:
    backoff = Backoff(cap_s=60.0, rng=random.Random(3))
    delays = [backoff.next_delay(refused=True) for _ in range(8)]
    bases = [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert all(base / 2 <= d <= base for d, base in zip(delays, bases, strict=True))
    backoff.reset()
    assert backoff.next_delay() <= 0.05  # other failures still start fast


def test_a_group_signature_changes_with_its_configuration_not_its_status() -> None:
    endpoints = (record("a"), record("b", priority=2))
    signature = group_signature(endpoints)
    status = tuple(replace(r, connected=True, last_error="x", status_since=5.0) for r in endpoints)
    assert group_signature(status) == signature
    assert group_signature((replace(endpoints[0], updated_at=1.0), endpoints[1])) != signature
    assert group_signature(endpoints[:1]) != signature


def test_backoff_grows_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(cap_s=1.0, first_s=0.1, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    bases = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    assert all(base / 2 <= d <= base for d, base in zip(delays, bases, strict=True))
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_a_stable_connection_retries_at_once_and_a_short_one_backs_off() -> None:
    backoff = Backoff(cap_s=10.0, first_s=0.1, refused_first_s=2.0, rng=random.Random(5))
    first = retry_delay(Round(None), backoff)
    assert first is not None
    assert 0.05 <= first <= 0.1
    assert retry_delay(Round(STABLE_AFTER_S - 0.01), backoff) is not None  # a flap grows it
    assert backoff.failures == 2
    assert retry_delay(Round(STABLE_AFTER_S), backoff) is None  # held: at once, from scratch
    assert backoff.failures == 0
    refused = retry_delay(Round(None, refused=True), backoff)
    assert refused is not None
    assert 1.0 <= refused <= 2.0


# -- with real endpoints -------------------------------------------------------------------


@pytest.fixture
def store(state_dir: Path) -> Iterator[Store]:
    db = Store(state_dir / "nbwss.db", state_dir / "nbwss.key")
    yield db
    db.close()


def test_each_read_of_the_records_shares_certificates_and_names_with_the_last(
    store: Store,
) -> None:
    """A keeper holds the record it dialled with; a re-read must not make it a second
    copy of the certificate and names per live connection (issue 14)."""
    supervisor = Supervisor(settings(30.0), store)

    def fresh(host: str) -> EndpointRecord:  # equal values, objects of their own
        made = record(host)
        return replace(made, url="".join(made.url), host_name="".join(host),
                       certificate_der=bytes(bytearray(b"der" * 300)))

    [first] = supervisor._share_with_last_read([fresh("h1")])
    [again] = supervisor._share_with_last_read([fresh("h1")])
    assert again == first
    assert again.certificate_der is first.certificate_der
    assert again.url is first.url
    assert again.host_name is first.host_name
    [other] = supervisor._share_with_last_read([replace(fresh("h1"), certificate_der=b"new")])
    assert other.certificate_der == b"new"  # a changed certificate is the new one
    assert supervisor._record_certificates == {b"new": b"new"}  # and the old one is let go


def settings(period_s: float) -> Settings:
    return Settings(send_timeout_s=1.0, connection_period_s=period_s, keepalive_rate_s=30.0)


@asynccontextmanager
async def supervising(supervisor: Supervisor) -> AsyncIterator[Supervisor]:
    task = asyncio.create_task(supervisor.run())
    try:
        yield supervisor
    finally:
        async with asyncio.timeout(timeout(5)):
            await supervisor.close_all("test over")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def until(supervisor: Supervisor, predicate: Callable[[], bool], seconds: float = 5) -> None:
    async with asyncio.timeout(timeout(seconds)):
        await supervisor.wait_for(predicate)


async def test_failover_no_preemption_and_return_to_the_first(
    tls: TlsMaterial, store: Store
) -> None:
    # A long period: every reconnection below happens without waiting for a run.
    async with Peer(tls.server_cert) as first, Peer(tls.server_cert) as second:
        add_endpoint(store, first, "ep1.test", priority=1)
        add_endpoint(store, second, "ep2.test", priority=2)
        await first.stop()
        async with supervising(Supervisor(settings(30.0), store)) as supervisor:
            await second.wait_for(lambda: second.connected, seconds=2)
            await until(supervisor, lambda: store.endpoint("ep2.test").connected)
            assert store.endpoint("ep1.test").last_error is not None

            await first.start()  # priority 1 is back: no pre-emption
            runs = supervisor.runs
            supervisor.wake()
            await until(supervisor, lambda: supervisor.runs >= runs + 1)
            supervisor.wake()
            await until(supervisor, lambda: supervisor.runs >= runs + 2)
            assert first.connections == []
            assert supervisor.connected == {"GROUP1": "ep2.test"}

            await second.close(1000, "app closes")  # back to priority 1, at once
            await first.wait_for(lambda: first.connected, seconds=2)  # period: 30 s
            assert len(second.connections) == 1
            await until(supervisor, lambda: supervisor.connected == {"GROUP1": "ep1.test"})


async def test_a_refused_token_moves_on_to_the_next_endpoint(
    tls: TlsMaterial, store: Store
) -> None:
    async with Peer(tls.server_cert, connect=ConnectAnswer.INVALID) as first, Peer(
        tls.server_cert
    ) as second:
        add_endpoint(store, first, "ep1.test", priority=1)
        add_endpoint(store, second, "ep2.test", priority=2)
        async with supervising(Supervisor(settings(30.0), store)):
            await second.wait_for(lambda: second.connected)
            assert first.connections[0].close_code == 1008
            assert "refused the token" in (store.endpoint("ep1.test").last_error or "")


async def test_disable_and_delete_disconnect_within_one_period(
    tls: TlsMaterial, store: Store
) -> None:
    period = 0.3
    async with Peer(tls.server_cert) as first, Peer(tls.server_cert) as second:
        add_endpoint(store, first, "ep1.test", priority=1)
        add_endpoint(store, second, "ep2.test", priority=2)
        async with supervising(Supervisor(settings(period), store)) as supervisor:
            await first.wait_for(lambda: first.connected)
            store.set_enabled("ep1.test", False)
            await first.wait_for(lambda: first.connections[0].closed, seconds=period + 1)
            assert first.connections[0].close_code == 1000
            assert first.connections[0].close_reason == "endpoint disabled"
            await second.wait_for(lambda: second.connected)

            store.delete_endpoint("ep2.test")
            await second.wait_for(lambda: second.connections[0].closed, seconds=period + 1)
            assert second.connections[0].close_reason == "endpoint deleted"
            await until(supervisor, lambda: supervisor.connected == {})
            assert len(first.connections) == 1  # disabled stays disconnected


async def test_a_re_added_endpoint_reconnects_with_its_new_token(
    tls: TlsMaterial, store: Store
) -> None:
    async with Peer(tls.server_cert) as peer:
        add_endpoint(store, peer, "ep1.test", token="old-token-1")
        async with supervising(Supervisor(settings(0.3), store)):
            await peer.wait_for(lambda: peer.connected)
            store.delete_endpoint("ep1.test")
            add_endpoint(store, peer, "ep1.test", token="new-token-2")
            await peer.wait_for(lambda: len(peer.received("CONNECT")) == 2)
            tokens = [m["payload"]["token"] for m in peer.received("CONNECT")]
            assert tokens == ["old-token-1", "new-token-2"]
            assert peer.connections[0].close_reason == "endpoint re-added with new details"


async def test_each_group_gets_its_own_connection(tls: TlsMaterial, store: Store) -> None:
    async with Peer(tls.server_cert) as first, Peer(tls.server_cert) as second:
        add_endpoint(store, first, "a1.test", group_id="A", priority=1)
        add_endpoint(store, second, "b1.test", group_id="B", priority=1)
        async with supervising(Supervisor(settings(30.0), store)) as supervisor:
            await until(supervisor, lambda: len(supervisor.connected) == 2)
            assert supervisor.connected == {"A": "a1.test", "B": "b1.test"}
            assert [len(first.connections), len(second.connections)] == [1, 1]


async def test_a_server_with_another_certificate_is_refused_and_says_why(
    tls: TlsMaterial, store: Store
) -> None:
    async with Peer(tls.server_cert) as peer:
        add_endpoint(store, peer, "ep1.test")
        await peer.stop()
        await peer.start(certificate=tls.ca.issue_cert("localhost", "127.0.0.1"))
        async with supervising(Supervisor(settings(30.0), store)) as supervisor:
            await until(supervisor, lambda: store.endpoint("ep1.test").last_error is not None)
            assert "did not match" in (store.endpoint("ep1.test").last_error or "")
            assert peer.received("CONNECT") == []
            assert supervisor.connected == {}


# -- CONNECT's own deadline (connect.responseTimeout) --------------------------------------


async def test_a_connect_answer_slower_than_send_timeout_connects_once_without_redial(
    tls: TlsMaterial, store: Store
) -> None:
    # The relation of the issue, scaled down: the app answers after sendTimeout (2 s
    # there) and well before connect.responseTimeout; the periodic runs (0.2 s) go on.
    slow = Settings(send_timeout_s=0.2, connect_response_timeout_s=timeout(10),
                    connection_period_s=0.2)  # fmt: skip
    async with Peer(tls.server_cert, connect_delay_s=1.0) as peer:
        add_endpoint(store, peer, "ep1.test")
        async with supervising(Supervisor(slow, store)) as supervisor:
            runs = supervisor.runs
            await until(supervisor, lambda: supervisor.connected == {"GROUP1": "ep1.test"})
            assert supervisor.runs >= runs + 3  # periodic runs happened during the wait
            assert len(peer.connections) == 1  # connected once, never redialled meanwhile
            assert len(peer.received("CONNECT")) == 1
            assert store.endpoint("ep1.test").connected


async def test_a_silent_endpoint_is_closed_after_connect_response_timeout_with_a_reason(
    tls: TlsMaterial, store: Store
) -> None:
    deadline = 0.5
    quick = Settings(send_timeout_s=0.1, connect_response_timeout_s=deadline,
                     connection_period_s=30.0)  # fmt: skip
    async with Peer(tls.server_cert, connect=ConnectAnswer.NEVER) as silent, Peer(
        tls.server_cert
    ) as second:
        add_endpoint(store, silent, "ep1.test", priority=1)
        add_endpoint(store, second, "ep2.test", priority=2)
        with capture_logs() as logged:
            async with supervising(Supervisor(quick, store)):
                await second.wait_for(lambda: second.connected)
    first = silent.connections[0]
    why = "no CONNECT response in 0.5 s (connect.responseTimeout)"
    assert (first.close_code, first.close_reason) == (1000, why)
    assert why in (store.endpoint("ep1.test").last_error or "")
    failed = [e for e in logged if e["event"] == "endpoint.connect_failed"]
    assert [(e["host"], e["reason"]) for e in failed][:1] == [("ep1.test", why)]
    # Closed at the deadline, not before (and not at sendTimeout), and dialled once.
    assert first.closed_at is not None
    assert first.closed_at - first.opened_at >= deadline
    assert len(silent.received("CONNECT")) == 1


# -- retry schedule --------------------------------------------------------------------------


async def test_a_refused_token_is_redialled_on_a_doubling_schedule_not_at_each_run(
    tls: TlsMaterial, store: Store
) -> None:
    # Runs every 0.05 s; the refused schedule is scaled down (0.2 s, 0.4, 0.8, ...).
    fast_runs = Settings(send_timeout_s=1.0, connection_period_s=0.05)

    def backoff(cap_s: float) -> Backoff:
        return Backoff(cap_s=30.0, first_s=0.01, refused_first_s=0.2, rng=random.Random(1))

    async with Peer(tls.server_cert, connect=ConnectAnswer.INVALID) as peer:
        add_endpoint(store, peer, "ep1.test")
        async with supervising(Supervisor(fast_runs, store, backoff=backoff)) as supervisor:
            await peer.wait_for(lambda: len(peer.connections) >= 4, seconds=10)
            assert supervisor.runs > 8  # the periodic runs did not redial the group
    opened = [c.opened_at for c in peer.connections[:4]]
    gaps = [later - earlier for earlier, later in itertools.pairwise(opened)]
    # Each wait is at least half its base (jitter), and the bases double.
    assert [gap >= base / 2 for gap, base in zip(gaps, [0.2, 0.4, 0.8], strict=True)] == [
        True, True, True,
    ]


async def test_an_endpoint_moved_to_another_group_is_never_dialled_twice_at_once(
    tls: TlsMaterial, store: Store
) -> None:
    async with Peer(tls.server_cert, connect_delay_s=0.5) as peer:
        add_endpoint(store, peer, "ep1.test", group_id="A")
        async with supervising(Supervisor(settings(0.3), store)) as supervisor:
            await peer.wait_for(lambda: len(peer.received("CONNECT")) == 1)
            # Re-added in group B while group A waits for its CONNECT answer.
            store.delete_endpoint("ep1.test")
            add_endpoint(store, peer, "ep1.test", group_id="B")
            supervisor.wake()
            await until(supervisor, lambda: supervisor.connected == {"B": "ep1.test"}, 10)
    first, second = peer.connections[:2]
    assert first.answered_at is not None
    assert second.opened_at > first.answered_at  # not dialled while the first was pending


async def test_an_admin_change_cuts_short_only_the_wait_of_the_group_it_changed(
    tls: TlsMaterial, store: Store
) -> None:
    def backoff(cap_s: float) -> Backoff:
        return Backoff(cap_s=60.0, refused_first_s=60.0, rng=random.Random(1))

    async with Peer(tls.server_cert, connect=ConnectAnswer.INVALID) as peer:
        add_endpoint(store, peer, "ep1.test", token="old-token-1")
        supervisor = Supervisor(settings(60.0), store, backoff=backoff)
        async with supervising(supervisor):
            await peer.wait_for(lambda: len(peer.connections) == 1)
            runs = supervisor.runs
            supervisor.endpoints_changed()  # nothing of this group changed
            await until(supervisor, lambda: supervisor.runs > runs)
            assert len(peer.connections) == 1  # still waiting out its 30-60 s
            peer.connect = ConnectAnswer.VALID
            store.delete_endpoint("ep1.test")
            add_endpoint(store, peer, "ep1.test", token="new-token-2")
            supervisor.endpoints_changed()  # as `nbwss endpoint add` does
            await until(supervisor, lambda: supervisor.connected == {"GROUP1": "ep1.test"})
    assert [m["payload"]["token"] for m in peer.received("CONNECT")] == [
        "old-token-1", "new-token-2",
    ]


# -- memory ---------------------------------------------------------------------------------


def test_the_heap_is_trimmed_where_glibc_can() -> None:
    """On glibc (this machine, the supported platforms) `malloc_trim` is found and
    called; where it is not, `trim` says so rather than failing."""
    assert heap.trim() is True


async def test_each_run_gives_the_allocators_free_pages_back(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-read of the endpoints each period leaves freed pages in a worker thread's
    arena (RSS grew about 1 KiB per idle connection a minute): each run trims them."""
    trims: list[int] = []

    def trim() -> bool:
        trims.append(1)
        return True

    monkeypatch.setattr(heap, "trim", trim)
    fast_runs = Settings(connection_period_s=0.05)
    async with supervising(Supervisor(fast_runs, store)) as supervisor:
        await until(supervisor, lambda: supervisor.runs >= 3)
        await until(supervisor, lambda: len(trims) >= 3)
