"""The delivery state machine, driven with plain values and a fake clock."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbwss.delivery import (
    AckCommit,
    Batch,
    DeliveryMachine,
    EventRange,
    Phase,
    Send,
    Stall,
    Verdict,
    WaitUntil,
    build_batch,
    rebuild_batch,
)
from nbwss.messages import Message, MessageType, SubType, decode, encode, request, response_to
from nbwss.notifications import element, encode_data, message_payloads, repeated_objects
from nbwss.values import OutboxEvent, OutstandingStatus, PersistedBatch

RATE = 5.0
T0 = 1_700_000_000.0


def job(job_id: int, state: str = "ACTIVE") -> dict[str, Any]:
    return {
        "scheduleType": "ST_FULL", "clientName": "vm1", "status": 0, "startTime": 1,
        "state": state, "policyName": "p", "parentJobId": job_id, "jobId": job_id,
        "policyType": "VMWARE", "jobType": "BACKUP",
    }  # fmt: skip


def image(backup_id: str) -> dict[str, Any]:
    return {
        "clientType": "VMWARE", "clientName": "vm1", "backupTime": 1, "createdTime": 2,
        "operationId": "CREATE", "backupId": backup_id,
    }  # fmt: skip


def events(*objects: str, start: int = 1) -> list[OutboxEvent]:
    return [
        OutboxEvent(seq, obj, encode_data(job(seq) if obj == "JOB" else image(f"b{seq}")))
        for seq, obj in enumerate(objects, start=start)
    ]


def machine(**overrides: Any) -> DeliveryMachine:
    values: dict[str, Any] = {
        "group_id": "G1", "max_batch": 500, "max_bytes": 1 << 20, "rate_s": RATE, "acked_seq": 0,
    }  # fmt: skip
    values.update(overrides)
    return DeliveryMachine(**values)


def ack(batch: Batch, payload: Any = None) -> Message:
    return response_to(batch.message, [] if payload is None else payload, T0)


def elements(batch: Batch) -> list[dict[str, Any]]:
    payload = batch.message.payload
    assert isinstance(payload, list)
    return payload


def started(delivery: DeliveryMachine, evs: list[OutboxEvent], now: float = T0) -> Batch:
    """Read and, as the connection's core asks it, persist: the batch is then due."""
    batch = delivery.events_read(evs, now, f"ID-{evs[0].seq}")
    assert batch is not None
    if delivery.to_persist is not None:
        delivery.persist_done(delivery.to_persist.message_id)
    return batch


def committed(delivery: DeliveryMachine, now: float) -> Batch:
    """Commit the acknowledged batch's transaction, as the driver does; the batch."""
    commit = delivery.ack_commit(now)
    delivery.commit_done(commit, now)
    return commit.acknowledged


# -- batching and grouping -------------------------------------------------------------------


def test_runs_of_each_object_form_one_element_each_in_order() -> None:
    batch = build_batch(
        events("JOB", "JOB", "IMAGE", "IMAGE"),
        message_id="X", now=T0, max_batch=500, max_bytes=1 << 20,
    )  # fmt: skip
    payload = elements(batch)
    assert [(e["object"], len(e["data"])) for e in payload] == [("JOB", 2), ("IMAGE", 2)]
    assert all(e["notificationType"] == "INFO" for e in payload)
    assert [d["jobId"] for d in payload[0]["data"]] == [1, 2]
    assert (batch.first_seq, batch.last_seq, batch.count) == (1, 4, 4)


def test_image_first_gives_the_image_element_first() -> None:
    batch = build_batch(
        events("IMAGE", "JOB", "JOB"), message_id="X", now=T0, max_batch=9, max_bytes=1 << 20
    )
    assert [(e["object"], len(e["data"])) for e in elements(batch)] == [("IMAGE", 1), ("JOB", 2)]


def test_a_type_coming_again_after_the_other_ends_the_batch() -> None:
    # J1 I1 J2 -> {JOB:[J1], IMAGE:[I1]}, then {JOB:[J2]}: one element per type, in order.
    evs = events("JOB", "IMAGE", "JOB")
    first = build_batch(evs, message_id="X", now=T0, max_batch=9, max_bytes=1 << 20)
    assert [e["object"] for e in elements(first)] == ["JOB", "IMAGE"]
    assert (first.first_seq, first.last_seq, first.count) == (1, 2, 2)
    second = build_batch(evs[2:], message_id="Y", now=T0, max_batch=9, max_bytes=1 << 20)
    assert [e["object"] for e in elements(second)] == ["JOB"]
    assert seqs_in(first.message) + seqs_in(second.message) == [1, 2, 3]


def test_the_guides_examples_d_and_e_make_one_message() -> None:
    # The guide gives D (two IMAGEs) and E (job 146 DONE) one id: one message, two elements.
    evs = events("JOB", "JOB", "JOB", "IMAGE", "IMAGE", "JOB", "JOB", "JOB")
    first = build_batch(evs, message_id="X", now=T0, max_batch=500, max_bytes=1 << 20)
    assert [(e["object"], len(e["data"])) for e in elements(first)] == [("JOB", 3), ("IMAGE", 2)]
    rest = build_batch(evs[5:], message_id="Y", now=T0, max_batch=500, max_bytes=1 << 20)
    assert [(e["object"], len(e["data"])) for e in elements(rest)] == [("JOB", 3)]


def test_batch_is_capped_by_max_batch() -> None:
    delivery = machine(max_batch=3)
    assert delivery.events_wanted() == EventRange(0, 3)
    batch = started(delivery, events(*["JOB"] * 5))
    assert (batch.first_seq, batch.last_seq, batch.count) == (1, 3, 3)


def test_size_is_the_exact_frame_size() -> None:
    for objects in (("JOB",), ("JOB", "JOB", "IMAGE", "JOB"), ("IMAGE",) * 7):
        batch = build_batch(
            events(*objects), message_id="X", now=T0, max_batch=99, max_bytes=1 << 20
        )
        assert batch.size_bytes == len(encode(batch.message).encode("utf-8"))


def test_batch_is_capped_by_max_bytes_and_never_exceeds_it() -> None:
    evs = events(*["JOB"] * 20, *["IMAGE"] * 20)
    for limit in range(600, 6000, 137):
        batch = build_batch(evs, message_id="X", now=T0, max_batch=500, max_bytes=limit)
        assert len(encode(batch.message).encode("utf-8")) <= limit
        if batch.count < len(evs):
            bigger = build_batch(
                evs[: batch.count + 1], message_id="X", now=T0, max_batch=500, max_bytes=1 << 20
            )
            assert bigger.size_bytes > limit - 8  # the next event would not have fitted
        assert not batch.oversized


def test_an_event_too_large_alone_is_sent_alone_not_dropped() -> None:
    evs = events("JOB", "JOB")
    big = OutboxEvent(1, "JOB", encode_data({**job(1), "note": "x" * 5000}))
    batch = build_batch([big, evs[1]], message_id="X", now=T0, max_batch=500, max_bytes=2000)
    assert batch.count == 1
    assert batch.oversized
    assert elements(batch)[0]["data"][0]["note"] == "x" * 5000


def test_unicode_data_counts_in_bytes() -> None:
    ev = OutboxEvent(1, "JOB", encode_data({**job(1), "clientName": "Zürich-é" * 50}))
    batch = build_batch([ev], message_id="X", now=T0, max_batch=1, max_bytes=1 << 20)
    assert batch.size_bytes == len(encode(batch.message).encode("utf-8"))


# -- one outstanding request, ack, resend ----------------------------------------------------


def test_first_send_is_immediate_and_nothing_new_while_outstanding() -> None:
    delivery = machine()
    batch = started(delivery, events("JOB"))
    assert delivery.write_due(T0) == Send(batch, resend=False)
    assert delivery.events_wanted() is None  # not even read ahead until the write is done
    delivery.write_done(batch.id, T0)
    assert delivery.write_due(T0 + RATE - 0.001) is None
    assert delivery.deadline() == T0 + RATE
    # The next batch is read ahead, but it is not sent while this one is outstanding.
    assert delivery.events_wanted() == EventRange(1, 500, ahead=True)
    following = delivery.events_read(events("JOB", start=2), T0, "NEXT")
    assert following is not None
    assert delivery.prepared is following
    assert delivery.write_due(T0 + RATE) == Send(batch, resend=True)
    assert delivery.events_wanted() is None
    with pytest.raises(RuntimeError):
        delivery.events_read(events("JOB", start=3), T0, "OTHER")


def test_a_new_batch_is_not_due_until_its_row_is_persisted() -> None:
    delivery = machine()
    batch = delivery.events_read(events("JOB"), T0, "ID-1")
    assert batch is not None
    assert delivery.to_persist == PersistedBatch("ID-1", 1, 1, T0)
    assert delivery.write_due(T0) is None  # a restart must find its id first
    delivery.persist_done("ID-1")
    assert delivery.to_persist is None
    assert delivery.write_due(T0) == Send(batch, resend=False)


def test_the_row_committed_with_an_ack_is_the_message_sent_next() -> None:
    delivery = machine(max_batch=1)
    batch = started(delivery, events("JOB"))
    delivery.write_done(batch.id, T0)
    delivery.events_read(events("IMAGE", start=2), T0 + 1, "NEXT")
    assert delivery.response_received(ack(batch)) is Verdict.ACKNOWLEDGED
    commit = delivery.ack_commit(T0 + 40)
    delivery.commit_done(commit, T0 + 40)
    send = delivery.write_due(T0 + 40)
    assert send is not None
    assert commit.next_row is not None
    assert send.batch.persisted() == commit.next_row  # one timeStamp rewrite, one place
    assert commit.next_row.sent_at == T0 + 40


def test_ack_with_same_id_and_empty_payload_advances_after_commit() -> None:
    delivery = machine()
    batch = started(delivery, events("JOB", "IMAGE"))
    delivery.write_done(batch.id, T0)
    assert delivery.response_received(ack(batch)) is Verdict.ACKNOWLEDGED
    assert delivery.awaiting_commit is batch
    assert delivery.write_due(T0 + 100) is None  # acknowledged: never resent
    assert committed(delivery, T0) is batch
    assert delivery.acked_seq == 2
    assert delivery.outstanding is None
    assert delivery.events_wanted() == EventRange(2, 500)


def test_prepared_batch_goes_out_once_the_ack_is_committed() -> None:
    delivery = machine(max_batch=2)
    evs = events("JOB", "JOB", "IMAGE", "IMAGE", "JOB")
    batch = started(delivery, evs[:2])
    delivery.write_done(batch.id, T0)
    assert delivery.events_wanted() == EventRange(2, 2, ahead=True)
    following = delivery.events_read(evs[2:4], T0 + 1, "NEXT")
    assert following is not None
    assert delivery.response_received(ack(following)) is Verdict.WRONG_ID  # not in flight yet
    assert delivery.response_received(ack(batch)) is Verdict.ACKNOWLEDGED
    later = T0 + 3 * RATE  # the ack came after resends: the prepared batch waited
    assert committed(delivery, later) is batch
    assert delivery.prepared is None
    started_now = delivery.outstanding
    assert started_now is not None
    assert delivery.write_due(later) == Send(started_now, resend=False)
    assert (started_now.id, started_now.first_seq, started_now.last_seq) == ("NEXT", 3, 4)
    assert started_now.message.payload == following.message.payload
    assert started_now.message.time_stamp == int(later)  # stamped when it goes out
    assert started_now.persisted() == PersistedBatch("NEXT", 3, 4, later)


def test_read_ahead_finds_nothing_then_something() -> None:
    delivery = machine()
    batch = started(delivery, events("JOB"))
    delivery.write_done(batch.id, T0)
    assert delivery.events_read([], T0, "X") is None
    assert delivery.events_wanted() == EventRange(1, 500, ahead=True)
    with pytest.raises(ValueError, match="follow"):
        delivery.events_read(events("JOB"), T0, "X")


def test_no_ack_resends_same_message_after_rate() -> None:
    delivery = machine()
    batch = started(delivery, events("JOB", "JOB"))
    delivery.write_done(batch.id, T0 + 0.5)
    assert delivery.write_due(T0 + 0.5 + RATE - 0.01) is None
    again = delivery.write_due(T0 + 0.5 + RATE)
    assert again is not None
    assert again.resend
    assert again.batch is batch  # same id, same timeStamp, same bytes
    delivery.write_done(batch.id, T0 + 0.5 + RATE)
    assert delivery.deadline() == T0 + 0.5 + 2 * RATE


def test_send_timeout_counts_as_not_sent_and_retries_after_rate() -> None:
    delivery = machine()
    batch = started(delivery, events("JOB"))
    delivery.write_timed_out(batch.id, T0 + 2)
    assert delivery.phase is Phase.PENDING
    assert delivery.write_due(T0 + 2 + RATE - 0.01) is None
    retry = delivery.write_due(T0 + 2 + RATE)
    assert retry == Send(batch, resend=False)  # never written, so a first send
    # The endpoint may answer a write we gave up on; the id is ours, so it counts.
    assert delivery.response_received(ack(batch)) is Verdict.ACKNOWLEDGED


def test_status_says_sent_at_only_once_written_and_counts_the_writes() -> None:
    delivery = machine()
    batch = started(delivery, events("JOB", "IMAGE"))
    pending = delivery.outstanding_status()
    assert pending == OutstandingStatus(batch.id, 1, 2, count=2, sent_at=None, sends=0)
    delivery.write_timed_out(batch.id, T0 + 1)  # a write that timed out was not a send
    assert delivery.outstanding_status() == pending
    delivery.write_done(batch.id, T0 + 2 + RATE)
    delivery.write_done(batch.id, T0 + 2 + 2 * RATE)  # resent: the first write's time stays
    status = delivery.outstanding_status()
    assert status is not None
    assert (status.sent_at, status.sends) == (T0 + 2 + RATE, 2)
    assert delivery.response_received(ack(batch)) is Verdict.ACKNOWLEDGED
    committed(delivery, T0 + 10)
    assert delivery.outstanding_status() is None


def test_a_restored_batch_shows_its_persisted_time_stamp_as_sent_at() -> None:
    delivery = machine(restored=PersistedBatch("ID-1", 1, 1, T0 - 30))
    started(delivery, events("JOB"), now=T0)
    status = delivery.outstanding_status()
    assert status is not None
    assert (status.message_id, status.sent_at, status.sends) == ("ID-1", T0 - 30, 0)


def test_wrong_id_does_not_acknowledge() -> None:
    delivery = machine()
    batch = started(delivery, events("JOB"))
    delivery.write_done(batch.id, T0)
    other = Message("NOT-IT", MessageType.NOTIFICATION, SubType.RESPONSE, int(T0), [])
    assert delivery.response_received(other) is Verdict.WRONG_ID
    assert delivery.awaiting_commit is None
    assert delivery.write_due(T0 + RATE) == Send(batch, resend=True)


def test_non_empty_payload_does_not_acknowledge() -> None:
    delivery = machine()
    batch = started(delivery, events("JOB"))
    delivery.write_done(batch.id, T0)
    assert delivery.response_received(ack(batch, payload=[{"error": 1}])) is Verdict.NOT_EMPTY
    assert delivery.awaiting_commit is None
    assert delivery.phase is Phase.SENT


def test_request_with_our_id_is_not_an_ack() -> None:
    delivery = machine()
    batch = started(delivery, events("JOB"))
    assert delivery.response_received(batch.message) is Verdict.NOT_A_RESPONSE
    command = Message(batch.id, MessageType.COMMAND, SubType.RESPONSE, int(T0), {})
    assert delivery.response_received(command) is Verdict.NOT_A_RESPONSE


def test_second_ack_of_a_resent_batch_is_a_duplicate() -> None:
    delivery = machine()
    batch = started(delivery, events("JOB"))
    delivery.write_done(batch.id, T0)
    assert delivery.response_received(ack(batch)) is Verdict.ACKNOWLEDGED
    assert delivery.response_received(ack(batch)) is Verdict.DUPLICATE
    committed(delivery, T0)
    assert delivery.response_received(ack(batch)) is Verdict.DUPLICATE
    with pytest.raises(RuntimeError):
        committed(delivery, T0)


def test_ack_racing_the_end_of_the_write_is_kept() -> None:
    delivery = machine()
    batch = started(delivery, events("JOB"))
    assert delivery.response_received(ack(batch)) is Verdict.ACKNOWLEDGED
    delivery.write_done(batch.id, T0)  # the write's completion is seen after the ack
    assert delivery.awaiting_commit is batch
    delivery.write_timed_out(batch.id, T0)
    assert delivery.awaiting_commit is batch


def test_stale_write_results_are_ignored() -> None:
    delivery = machine()
    batch = started(delivery, events("JOB"))
    delivery.write_done("SOMETHING-ELSE", T0)
    delivery.write_timed_out("SOMETHING-ELSE", T0)
    assert delivery.write_due(T0) == Send(batch, resend=False)


def test_new_connection_sends_the_outstanding_batch_at_once() -> None:
    delivery = machine()
    batch = started(delivery, events("JOB"))
    delivery.write_done(batch.id, T0)
    delivery.connection_opened(T0 + 1)
    assert delivery.write_due(T0 + 1) == Send(batch, resend=True)


# -- a batch the endpoint never acknowledges ---------------------------------------------------


def resend_times(delivery: DeliveryMachine, batch: Batch, times: int, now: float) -> list[Any]:
    """Write `batch` `times` times, each when due; what each `sent` reported."""
    reports = []
    for _ in range(times):
        send = delivery.write_due(now)
        assert send is not None
        assert send.batch is batch
        reports.append(delivery.write_done(batch.id, now))
        now += RATE
    return reports


def test_a_batch_sent_n_times_without_an_ack_stalls_once() -> None:
    delivery = machine(stall_after=3)
    batch = started(delivery, events("JOB", "JOB"))
    assert resend_times(delivery, batch, 6, T0) == [None, None, Stall(batch, 3), None, None, None]
    assert (delivery.stalled, delivery.sends) == (True, 6)
    assert delivery.write_due(T0 + 6 * RATE) == Send(batch, resend=True)  # sending goes on


def test_a_send_that_timed_out_is_not_counted() -> None:
    delivery = machine(stall_after=2)
    batch = started(delivery, events("JOB"))
    delivery.write_timed_out(batch.id, T0)
    delivery.write_timed_out(batch.id, T0 + RATE)
    assert (delivery.sends, delivery.stalled) == (0, False)
    assert delivery.write_done(batch.id, T0 + 2 * RATE) is None
    assert delivery.write_done(batch.id, T0 + 3 * RATE) == Stall(batch, 2)


def test_the_ack_clears_the_stall_and_the_next_batch_counts_from_zero() -> None:
    delivery = machine(stall_after=2)
    batch = started(delivery, events("JOB"))
    resend_times(delivery, batch, 2, T0)
    assert delivery.stalled
    assert delivery.response_received(ack(batch)) is Verdict.ACKNOWLEDGED
    assert not delivery.stalled
    committed(delivery, T0 + 10)
    following = started(delivery, events("JOB", start=2), now=T0 + 10)
    assert (delivery.sends, delivery.stalled) == (0, False)
    assert resend_times(delivery, following, 2, T0 + 10) == [None, Stall(following, 2)]


def test_a_reconnect_keeps_the_count_of_the_same_batch_but_not_of_another() -> None:
    # The endpoint drops the connection at each send: every connection reloads the group
    # from the database, and the stall must still be seen.
    before = machine(stall_after=3)
    batch = started(before, events("JOB"))
    resend_times(before, batch, 2, T0)
    reloaded = machine(stall_after=3, restored=batch.persisted())
    reloaded.carry_over(before)
    again = reloaded.events_read(events("JOB"), T0 + 60, "NEW-ID")
    assert again is not None
    assert again.id == batch.id
    assert reloaded.sends == 2
    assert reloaded.write_done(batch.id, T0 + 60) == Stall(again, 3)

    other = machine(stall_after=3, restored=PersistedBatch("OTHER", 1, 1, T0))
    other.carry_over(before)
    assert other.events_read(events("JOB"), T0, "X") is not None
    assert other.sends == 0


def test_idle_group_has_no_deadline() -> None:
    delivery = machine(acked_seq=7)
    assert delivery.write_due(T0) is None
    assert delivery.deadline() is None
    assert delivery.events_read([], T0, "X") is None
    assert delivery.events_wanted() == EventRange(7, 500)


# -- restart from the cursor -----------------------------------------------------------------


def test_restart_resends_the_persisted_batch_with_its_id_and_bytes() -> None:
    before = machine(max_batch=4)
    evs = events("JOB", "IMAGE", "IMAGE", "JOB", "JOB")
    original = started(before, evs, now=T0)
    persisted = original.persisted()
    assert persisted == PersistedBatch("ID-1", 1, 3, T0)

    # Restarted with other caps: the batch must still be the same message.
    after = machine(max_batch=1, restored=persisted)
    assert after.events_wanted() == EventRange(0, 3, 3)
    rebuilt = after.events_read(evs[:3], T0 + 60, "NEW-ID")
    assert rebuilt is not None
    assert encode(rebuilt.message) == encode(original.message)
    assert rebuilt.size_bytes == original.size_bytes
    assert after.write_due(T0 + 60) == Send(rebuilt, resend=True)
    after.write_done(rebuilt.id, T0 + 60)
    assert after.response_received(ack(original)) is Verdict.ACKNOWLEDGED
    committed(after, T0)
    assert after.events_wanted() == EventRange(3, 1)


def test_a_batch_persisted_before_the_grouping_rule_goes_again_as_it_was() -> None:
    # Persisted by a version that grouped runs only (JOB, IMAGE, JOB): after an upgrade
    # it must still be the very message the endpoint may already have, same id, same bytes.
    evs = events("JOB", "IMAGE", "JOB")
    first_sent = request(
        MessageType.NOTIFICATION,
        [element(e.object, [json.loads(e.data)]) for e in evs],
        T0,
        id="OLD-ID",
    )
    after = machine(restored=PersistedBatch("OLD-ID", 1, 3, T0))
    rebuilt = after.events_read(evs, T0 + 60, "NEW-ID")
    assert rebuilt is not None
    assert encode(rebuilt.message) == encode(first_sent)
    assert rebuilt.size_bytes == len(encode(first_sent).encode("utf-8"))
    assert (rebuilt.first_seq, rebuilt.last_seq, rebuilt.count) == (1, 3, 3)


def test_restart_with_the_persisted_events_gone_starts_afresh() -> None:
    delivery = machine(restored=PersistedBatch("OLD", 1, 3, T0))
    assert delivery.events_read([], T0, "X") is None
    assert delivery.events_wanted() == EventRange(0, 500)


def test_message_round_trips_through_the_codec() -> None:
    batch = build_batch(
        events("JOB", "IMAGE"), message_id="X", now=T0, max_batch=9, max_bytes=1 << 20
    )
    decoded = decode(encode(batch.message))
    assert decoded.payload == batch.message.payload
    assert json.loads(encode(batch.message))["timeStamp"] == int(T0)


def test_message_payloads_state_the_rule_and_build_batch_keeps_it() -> None:
    items = [("JOB", job(1)), ("JOB", job(2)), ("IMAGE", image("a")), ("JOB", job(3))]
    assert message_payloads(items) == [
        [
            {"notificationType": "INFO", "object": "JOB", "data": [job(1), job(2)]},
            {"notificationType": "INFO", "object": "IMAGE", "data": [image("a")]},
        ],
        [{"notificationType": "INFO", "object": "JOB", "data": [job(3)]}],
    ]
    rows = [OutboxEvent(n, obj, encode_data(data)) for n, (obj, data) in enumerate(items, 1)]
    batch = build_batch(rows, message_id="X", now=T0, max_batch=9, max_bytes=1 << 20)
    assert batch.message.payload == message_payloads(items)[0]
    assert message_payloads([]) == []


def test_repeated_objects_names_a_type_with_two_elements() -> None:
    assert repeated_objects([element("JOB", []), element("IMAGE", [])]) == []
    assert repeated_objects(
        [element("JOB", []), element("IMAGE", []), element("JOB", []), element("JOB", [])]
    ) == ["JOB"]
    assert repeated_objects(["not an element", 3]) == []


# -- properties ------------------------------------------------------------------------------


OBJECTS = st.sampled_from(["JOB", "IMAGE"])


@given(
    objects=st.lists(OBJECTS, min_size=1, max_size=60),
    max_batch=st.integers(1, 70),
    max_bytes=st.integers(300, 6000),
)
def test_any_batch_is_the_longest_in_order_prefix_the_caps_and_the_rule_allow(
    objects: list[str], max_batch: int, max_bytes: int
) -> None:
    evs = events(*objects)
    batch = build_batch(evs, message_id="X", now=T0, max_batch=max_batch, max_bytes=max_bytes)
    size = len(encode(batch.message).encode("utf-8"))
    assert size == batch.size_bytes
    assert 1 <= batch.count <= max_batch
    assert size <= max_bytes or (batch.count == 1 and batch.oversized)
    sent = [(e["object"], d) for e in elements(batch) for d in e["data"]]
    assert sent == [(e.object, json.loads(e.data)) for e in evs[: batch.count]]
    objects_sent = [e["object"] for e in elements(batch)]
    assert len(objects_sent) == len(set(objects_sent))  # one element per type
    if batch.count < min(len(evs), max_batch):
        following = evs[batch.count].object
        if following == objects_sent[-1] or following not in objects_sent:
            # Not the rule: then the size cap, and the next event would not have fitted.
            bigger = build_batch(
                evs[: batch.count + 1], message_id="X", now=T0, max_batch=99, max_bytes=1 << 30
            )
            assert bigger.size_bytes > max_bytes - 8


# -- the spliced frame ------------------------------------------------------------------------

# Text as intake stores it: no lone surrogate (strict intake refuses them), any other
# character, JSON escapes included; the words the NaN search looks for inside strings.
_TEXT = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=12),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "a\"NaN\\", "\u2028é€😀"]),
)
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), _TEXT,
)  # fmt: skip
_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(_TEXT, children, max_size=3)
    ),
    max_leaves=8,
)
# A row an earlier release queued (json.dumps allowed them): NaN, Infinity, -Infinity.
_LEGACY = st.sampled_from([float("nan"), float("inf"), float("-inf")])


@st.composite
def stored_rows(draw: st.DrawFn) -> tuple[OutboxEvent, dict[str, Any]]:
    """A row as some release stored it, and the data an endpoint must receive for it."""
    data = draw(st.dictionaries(_TEXT, _VALUES, max_size=4))
    sent = dict(data)
    if draw(st.booleans()):
        key = draw(_TEXT)
        data[key] = draw(_LEGACY)
        sent[key] = None
        ascii_only = draw(st.booleans())  # escaped, as `json.dumps` writes by default
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=ascii_only)
    else:
        text = encode_data(data)
    return OutboxEvent(0, draw(OBJECTS), text), sent


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(stored_rows(), min_size=1, max_size=12),
    message_id=st.text(st.characters(codec="utf-8"), min_size=1, max_size=40),
    now=st.floats(0, 2**40),
    later=st.floats(0, 2**40),
    max_bytes=st.integers(100, 3000),
)
def test_a_spliced_frame_is_byte_for_byte_what_the_encoder_writes(
    rows: list[tuple[OutboxEvent, dict[str, Any]]], message_id: str, now: float,
    later: float, max_bytes: int,
) -> None:  # fmt: skip
    evs = [OutboxEvent(seq, e.object, e.data) for seq, (e, _) in enumerate(rows, start=1)]
    batch = build_batch(evs, message_id=message_id, now=now, max_batch=99, max_bytes=max_bytes)
    taken = [(e.object, sent) for e, sent in rows[: batch.count]]
    payload = [
        element(obj, [sent for _, sent in run])
        for obj, run in itertools.groupby(taken, key=lambda pair: pair[0])
    ]
    expected = request(MessageType.NOTIFICATION, payload, now, id=message_id)
    assert batch.text == encode(expected)
    assert batch.message == expected
    assert batch.size_bytes == len(batch.text.encode("utf-8"))
    assert batch.size_bytes <= max_bytes or (batch.count == 1 and batch.oversized)
    # A restart rebuilds the very bytes; an ack's commit re-stamps them, size and all.
    rebuilt = rebuild_batch(evs[: batch.count], batch.persisted())
    assert (rebuilt.text, rebuilt.size_bytes) == (batch.text, batch.size_bytes)
    stamped = batch.stamped(later)
    assert stamped.text == encode(request(MessageType.NOTIFICATION, payload, later, id=message_id))
    assert stamped.size_bytes == len(stamped.text.encode("utf-8"))


def seqs_in(message: Message) -> list[int]:
    """The outbox seqs a message carries (`events()` puts the seq in jobId or backupId)."""
    assert isinstance(message.payload, list)
    return [
        data["jobId"] if element["object"] == "JOB" else int(data["backupId"][1:])
        for element in message.payload
        for data in element["data"]
    ]


STEPS = st.sampled_from(
    ["ack", "lose", "wrong", "timeout", "wait", "reconnect", "queue", "restart"]
)


@settings(max_examples=300, deadline=None)
@given(
    initial=st.lists(OBJECTS, min_size=1, max_size=12),
    steps=st.lists(st.tuples(STEPS, st.lists(OBJECTS, min_size=1, max_size=4)), max_size=80),
    max_batch=st.integers(1, 5),
)
def test_whatever_happens_delivery_is_in_order_without_loss(
    initial: list[str], steps: list[tuple[str, list[str]]], max_batch: int
) -> None:
    """A group against an endpoint that loses, refuses and delays, over any interleaving
    of JOB and IMAGE events, across restarts: the guarantees and the grouping hold."""
    outbox_rows = events(*initial)
    delivery = machine(max_batch=max_batch)
    received: list[Message] = []
    acknowledged: set[str] = set()
    now = T0
    ids = (f"ID-{n}" for n in itertools.count())
    row: PersistedBatch | None = None  # the group_batches row, as the driver writes it

    for step, queued in [*steps, *[("ack", [])] * (3 * len(outbox_rows) + 60)]:
        wanted = delivery.events_wanted()
        if wanted is not None:
            rows = [e for e in outbox_rows if e.seq > wanted.after_seq][: wanted.limit]
            if wanted.up_to_seq is not None:
                rows = [e for e in rows if e.seq <= wanted.up_to_seq]
            delivery.events_read(rows, now, next(ids))
        if delivery.to_persist is not None:
            row = delivery.to_persist
            delivery.persist_done(row.message_id)
        send = delivery.write_due(now)
        if send is not None:
            received.append(send.batch.message)
            delivery.write_done(send.batch.id, now)
        if step == "ack" and received:
            answer = response_to(received[-1], [], now)
            if delivery.response_received(answer) is Verdict.ACKNOWLEDGED:
                commit = delivery.ack_commit(now)
                row = commit.next_row  # the cursor moves and the next batch's row, at once
                delivery.commit_done(commit, now)
                acknowledged.add(commit.acknowledged.id)
        elif step == "wrong" and received:
            delivery.response_received(response_to(received[-1], [{"refused": True}], now))
        elif step == "timeout" and delivery.outstanding is not None:
            delivery.write_timed_out(delivery.outstanding.id, now)
        elif step == "wait":
            now += RATE
        elif step == "reconnect":
            delivery.connection_opened(now)
        elif step == "queue":
            outbox_rows += events(*queued, start=len(outbox_rows) + 1)
        elif step == "restart":  # the process dies: only the cursor and the batch row remain
            delivery = machine(max_batch=max_batch, acked_seq=delivery.acked_seq, restored=row)
        # ("lose": the response never comes.) Never two requests unacknowledged at once:
        assert len({m.id for m in received} - acknowledged) <= 1

    first_copy: dict[str, str] = {}
    order: list[int] = []
    for message in received:
        assert isinstance(message.payload, list)
        assert repeated_objects(message.payload) == []  # one element per type per message
        if message.id in first_copy:
            assert encode(message) == first_copy[message.id]  # a resend is the same bytes
            continue
        first_copy[message.id] = encode(message)
        order += seqs_in(message)
    assert order == [e.seq for e in outbox_rows]  # in order, nothing lost or skipped
    assert delivery.acked_seq == len(outbox_rows)


class Database:
    """The outbox, the cursor and the batch row, as the driver's transactions leave them."""

    def __init__(self, rows: list[OutboxEvent]) -> None:
        self.rows = rows
        self.acked_seq = 0
        self.batch_row: PersistedBatch | None = None

    def read(self, wanted: EventRange) -> list[OutboxEvent]:
        ceiling = wanted.up_to_seq if wanted.up_to_seq is not None else 1 << 62
        return [e for e in self.rows if wanted.after_seq < e.seq <= ceiling][: wanted.limit]


def run_steps(
    delivery: DeliveryMachine, db: Database, now: float, ids: Iterator[str],
    written: list[Message], *, write_fails: bool = False,
) -> None:
    """What the core does until the machine says wait: each step carried out and reported."""
    for _ in range(20):
        step = delivery.next_step(now)
        if isinstance(step, AckCommit):
            db.acked_seq, db.batch_row = step.last_seq, step.next_row  # one transaction
            delivery.commit_done(step, now)
        elif isinstance(step, EventRange):
            delivery.events_read(db.read(step), now, next(ids))
        elif isinstance(step, PersistedBatch):
            db.batch_row = step
            delivery.persist_done(step.message_id)
        elif isinstance(step, Send):
            assert db.batch_row == step.batch.persisted()  # never written before its row
            if write_fails:
                delivery.write_timed_out(step.batch.id, now)
            else:
                written.append(step.batch.message)
                delivery.write_done(step.batch.id, now)
        else:
            assert isinstance(step, WaitUntil)
            return
    raise AssertionError("the machine never asked to wait")


@settings(max_examples=300, deadline=None)
@given(
    initial=st.lists(OBJECTS, min_size=1, max_size=12),
    steps=st.lists(st.tuples(STEPS, st.lists(OBJECTS, min_size=1, max_size=4)), max_size=80),
    max_batch=st.integers(1, 5),
)
def test_driven_by_next_step_alone_delivery_survives_restarts_and_failovers(
    initial: list[str], steps: list[tuple[str, list[str]]], max_batch: int
) -> None:
    """The driver's whole protocol is `next_step` and the outcome of each step: over any
    sequence of acks, losses, refusals, timeouts, failovers and restarts (rebuilt from
    the database alone), every event arrives in order, a resend is the same bytes, and
    the row persisted is the message written."""
    db = Database(events(*initial))
    delivery = machine(max_batch=max_batch)
    written: list[Message] = []
    now = T0
    ids = (f"ID-{n}" for n in itertools.count())
    total = len(initial) + sum(len(queued) for step, queued in steps if step == "queue")
    # Then time passes and acks come, until everything is delivered.
    settle: list[tuple[str, list[str]]] = [("wait", []), ("ack", [])] * (2 * total + 10)
    for step, queued in [*steps, *settle]:
        run_steps(delivery, db, now, ids, written, write_fails=step == "timeout")
        if step == "ack" and written:
            delivery.response_received(response_to(written[-1], [], now))
        elif step == "wrong" and written:
            delivery.response_received(response_to(written[-1], [{"refused": True}], now))
        elif step == "wait":
            now += RATE
        elif step == "reconnect":  # failover: the same machine over a new connection
            delivery.connection_opened(now)
        elif step == "queue":
            db.rows += events(*queued, start=len(db.rows) + 1)
        elif step == "restart":
            row = db.batch_row  # as `outbox.load_position` reads it back
            restored = row if row is not None and row.last_seq > db.acked_seq else None
            delivery = machine(max_batch=max_batch, acked_seq=db.acked_seq, restored=restored)
        delivery.waited()
    first_copy: dict[str, str] = {}
    order: list[int] = []
    for message in written:
        if message.id in first_copy:
            assert encode(message) == first_copy[message.id]
            continue
        first_copy[message.id] = encode(message)
        order += seqs_in(message)
    assert order == [e.seq for e in db.rows]
    assert db.acked_seq == len(db.rows)


def test_next_step_commits_then_reads_then_persists_then_writes_then_waits() -> None:
    delivery = machine()
    assert delivery.next_step(T0) == EventRange(0, 500)
    batch = delivery.events_read(events("JOB"), T0, "ID-1")
    assert batch is not None
    assert delivery.next_step(T0) == PersistedBatch("ID-1", 1, 1, T0)
    delivery.persist_done("ID-1")
    assert delivery.next_step(T0) == Send(batch, resend=False)
    delivery.write_done("ID-1", T0)
    assert delivery.next_step(T0) == EventRange(1, 500, ahead=True)  # read ahead at once
    delivery.events_read([], T0, "ID-2")
    assert delivery.next_step(T0) == WaitUntil(T0 + RATE)  # read once between two waits
    delivery.waited()
    assert delivery.next_step(T0 + 1) == EventRange(1, 500, ahead=True)
    delivery.events_read([], T0 + 1, "ID-3")
    delivery.response_received(ack(batch))
    step = delivery.next_step(T0 + 2)
    assert isinstance(step, AckCommit)
    assert step.acknowledged is batch


def test_after_a_commit_the_events_past_the_cursor_are_read_at_once() -> None:
    """The read ahead found nothing, then the ack came before any wait: the events
    queued meanwhile are read now, not after `rate_s`."""
    delivery = machine()
    batch = started(delivery, events("JOB"))
    delivery.write_done(batch.id, T0)
    assert delivery.next_step(T0) == EventRange(1, 500, ahead=True)
    delivery.events_read([], T0, "ID-2")
    delivery.response_received(ack(batch))
    commit = delivery.next_step(T0)
    assert isinstance(commit, AckCommit)
    delivery.commit_done(commit, T0)
    assert delivery.next_step(T0) == EventRange(1, 500)


def test_a_cursor_moved_past_the_batch_meanwhile_is_where_reading_starts_again() -> None:
    """The group was deleted and added again (at a later head) while its ack awaited the
    commit: the batch read ahead was not persisted, so it does not go; the events after
    the new cursor are read instead."""
    delivery = machine()
    batch = started(delivery, events("JOB"))
    delivery.write_done(batch.id, T0)
    delivery.events_read(events("JOB", start=2), T0, "ID-2")
    delivery.response_received(ack(batch))
    commit = delivery.next_step(T0)
    assert isinstance(commit, AckCommit)
    assert commit.next_batch is not None
    delivery.commit_done(commit, T0, cursor=5)
    assert delivery.outstanding is None
    assert delivery.next_step(T0) == EventRange(5, 500)
