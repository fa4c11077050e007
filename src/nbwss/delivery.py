"""The delivery state machine of one server group (spec section 3, acknowledgement).

Sans-I/O: fed outbox events, responses and the current time; it answers what to send
and when to look again. `protocol.GroupConnection` turns its steps into actions, and
`session.py` does the reading, writing and waiting.

The rules it keeps:
- At most one NOTIFICATION request outstanding per group. Nothing new is sent until it
  is acknowledged by a response with the same id and `payload: []`.
- A batch is the oldest unacknowledged events in seq order, capped by `max_batch`
  events and `max_bytes` bytes of frame. An event too large for a frame on its own is
  sent alone (flagged `oversized`): dropping it would lose a notification and holding it
  would stop the group for good; the endpoint decides whether it accepts the frame.
- One element per object type (spec section 3): a message holds at most one JOB and one
  IMAGE element, in the order of their first event, and a batch ends before an object
  type would come again after the other (J1 I1 J2 gives {JOB:[J1], IMAGE:[I1]}, then
  {JOB:[J2]}). So every type's events are one run, and reading the elements in order
  gives the events in the order they happened.
- No ack within `rate_s` of a completed write: the very same message (same id, same
  timeStamp, same bytes) is sent again, so the endpoint can drop duplicates by id.
- A write that does not complete within the send timeout counts as not sent: the same
  message goes again after `rate_s`.
- A new connection (failover, reconnect) sends the outstanding batch again at once.
- A batch written `stall_after` times without an ack is stalled: `sent` reports it once
  (a `Stall`), and `stalled` stays set until the ack. The protocol has no refusal
  message, so an endpoint that will not take a batch only ever stays silent (or drops
  the connection): the stall is how an admin hears of it. Sending goes on as before, as
  the spec says. The count is carried over a reconnect (`carry_over`), not a restart.
- A restart resumes from the cursor: a batch persisted as in flight is rebuilt from its
  seq range with its id and timeStamp, and goes first. It is rebuilt from every event
  of the range, one element per run, whatever the caps and rules are now: so it is the
  very same message (a batch persisted by a version before the one-element-per-type
  rule goes once more as it was first sent).
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import itertools
import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from nbwss.messages import Message, MessageType, SubType, notification_frame, request
from nbwss.notifications import NOTIFICATION_TYPE, encode_data
from nbwss.values import OutboxEvent, OutstandingStatus, PersistedBatch

# What a payload element writes before and after its data, as `notifications.element`
# gives it to `messages.encode`: {"notificationType":"INFO","object":"JOB","data":[...]}
_ELEMENT_OPEN: Final = {
    obj: '{"notificationType":"' + NOTIFICATION_TYPE + '","object":"' + obj + '","data":['
    for obj in ("JOB", "IMAGE")
}
_ELEMENT_CLOSE: Final = "]}"
_ELEMENT_SIZE: Final = {obj: len(text) + len(_ELEMENT_CLOSE) for obj, text in _ELEMENT_OPEN.items()}
_OTHER: Final = {"JOB": "IMAGE", "IMAGE": "JOB"}  # the two object types (spec section 3)
# A margin under message.maxBytes, so that no miscount of a byte or two ever matters.
_ENVELOPE_SLACK: Final = 8


@dataclass(frozen=True, slots=True)
class Batch:
    """One NOTIFICATION request and the seq range it carries.

    The request is kept as its payload's JSON text, spliced from the stored rows (see
    `build_batch`): `text` is the frame, the very bytes written on every (re)send.
    """

    id: str
    time_stamp: int
    payload_text: str
    first_seq: int
    last_seq: int
    count: int
    size_bytes: int  # of `text`, UTF-8
    oversized: bool = False

    @property
    def text(self) -> str:
        """The frame, as `messages.encode` would write `message`."""
        return notification_frame(self.id, self.time_stamp, self.payload_text)

    @property
    def message(self) -> Message:
        """The request as a value (decoded, so it costs a parse: for tests and tools)."""
        payload = json.loads(self.payload_text)
        return request(MessageType.NOTIFICATION, payload, self.time_stamp, id=self.id)

    def stamped(self, now: float) -> Batch:
        """This batch with timeStamp `now` (its size follows the digits)."""
        time_stamp = int(now)
        grown = len(str(time_stamp)) - len(str(self.time_stamp))
        return dataclasses.replace(
            self, time_stamp=time_stamp, size_bytes=self.size_bytes + grown
        )

    def persisted(self) -> PersistedBatch:
        """The row that lets a restart rebuild this very message (id, range, timeStamp)."""
        return PersistedBatch(self.id, self.first_seq, self.last_seq, self.time_stamp)


@dataclass(frozen=True, slots=True)
class Stall:
    """`batch` was written `sends` times and never acknowledged."""

    batch: Batch
    sends: int


@dataclass(frozen=True, slots=True)
class EventRange:
    """Which outbox events the group needs next: after `after_seq`, at most `limit`."""

    after_seq: int
    limit: int
    up_to_seq: int | None = None
    ahead: bool = False


@dataclass(frozen=True, slots=True)
class AckCommit:
    """The transaction an acknowledgement needs: move the cursor to `last_seq` and, in
    the same transaction, persist `next_row` (the batch read ahead, re-stamped: it goes
    next). Made once by `ack_commit()`, so the message persisted is the one sent."""

    acknowledged: Batch
    next_batch: Batch | None

    @property
    def last_seq(self) -> int:
        return self.acknowledged.last_seq

    @property
    def next_row(self) -> PersistedBatch | None:
        return None if self.next_batch is None else self.next_batch.persisted()


@dataclass(frozen=True, slots=True)
class Send:
    """Write `batch.text` now; `resend` when it (may) have been written before."""

    batch: Batch
    resend: bool


@dataclass(frozen=True, slots=True)
class WaitUntil:
    """Nothing to do until `deadline` (None: only an event), a response or a wake-up."""

    deadline: float | None


# What `DeliveryMachine.next_step` asks of its driver: commit the ack's transaction, read
# these events, persist this batch's row, write this message, or wait.
DeliveryStep = AckCommit | EventRange | PersistedBatch | Send | WaitUntil


class Verdict(enum.StrEnum):
    """What a response did to the batch in flight; only ACKNOWLEDGED ends it."""

    ACKNOWLEDGED = "acknowledged"
    WRONG_ID = "wrong_id"
    DUPLICATE = "duplicate"  # an ack again for a batch already acknowledged (after a resend)
    NOT_EMPTY = "non_empty_payload"
    NOT_A_RESPONSE = "not_a_notification_response"


class Phase(enum.StrEnum):
    """Where the batch in flight stands."""

    IDLE = "idle"  # nothing in flight
    PENDING = "pending"  # in flight, not (known to be) written yet
    SENT = "sent"  # written, waiting for the ack
    ACKED = "acked"  # acknowledged, cursor not committed yet


def _wire_texts(events: Sequence[OutboxEvent], legacy: bool) -> tuple[list[str], bool]:
    """The text each event has on the wire, and whether all of it is ASCII: its stored
    text, which intake wrote as `messages.encode` writes it (`notifications.encode_data`).

    Except for rows queued before intake was strict (`legacy`: some of `events` were
    queued before the schema that records which), which may hold NaN or Infinity: no
    endpoint can decode those (the group would never be acknowledged), so they are sent
    as null, re-encoded as before. One search of the texts finds them (it costs as much
    as the rest of the batch, hence only for those rows); a row that only has the word
    in a string is re-encoded to the same text.
    """
    texts = [event.data for event in events]
    joined = "".join(texts)
    if legacy and ("NaN" in joined or "Infinity" in joined):
        texts = [_null_for_nan(t) if "NaN" in t or "Infinity" in t else t for t in texts]
        joined = "".join(texts)  # re-encoded, an escaped character is itself again
    return texts, joined.isascii()


def _null_for_nan(text: str) -> str:
    return encode_data(_STORED.decode(text))


# Rows queued before intake was strict may hold NaN or Infinity: read as null.
_STORED: Final = json.JSONDecoder(parse_constant=lambda _name: None)


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8"))


def _index(objects: Sequence[str], obj: str, start: int) -> int:
    """Where `obj` is next in `objects` from `start` (the end if nowhere)."""
    try:
        return objects.index(obj, start)
    except ValueError:
        return len(objects)


def _payload_text(objects: Sequence[str], texts: Sequence[str]) -> str:
    """The payload array's JSON text: one element per run of one object (after
    `build_batch`, one per object type), its data the texts joined, never decoded."""
    parts = ["["]
    start = 0
    while start < len(objects):
        end = _index(objects, _OTHER[objects[start]], start)
        if start:
            parts.append(",")
        parts += (_ELEMENT_OPEN[objects[start]], ",".join(texts[start:end]), _ELEMENT_CLOSE)
        start = end
    parts.append("]")
    return "".join(parts)


def build_batch(
    events: Sequence[OutboxEvent],
    *,
    message_id: str,
    now: float,
    max_batch: int,
    max_bytes: int,
    legacy_up_to_seq: int | None = None,
) -> Batch:
    """The longest prefix of `events` (at least one) within both caps and the grouping
    rule (one element per object type, see the module docstring), as one request.

    The frame is spliced from the events' wire texts (`_wire_texts`) and its size counted
    from their lengths: nothing is decoded or encoded. The first n events make a frame of
    the envelope, their texts, n - 1 commas and each element's own bytes; those sizes
    only grow with n, so the longest prefix that fits is found by bisection.
    `legacy_up_to_seq` (None: unknown) is `GroupPosition`'s: see `_wire_texts`.
    """
    if not events:
        raise ValueError("a batch needs at least one event")
    window = events[:max_batch]
    texts, ascii_only = _wire_texts(window, _legacy(window, legacy_up_to_seq))
    objects = [event.object for event in window]
    time_stamp = int(now)
    envelope = len(notification_frame(message_id, time_stamp, "[]").encode("utf-8")) - 1
    # ends[n - 1]: the bytes of the first n texts with a comma after each.
    sizes = map(len if ascii_only else _utf8_size, texts)
    ends = list(itertools.accumulate(map(operator.add, sizes, itertools.repeat(1))))
    split = _index(objects, _OTHER[objects[0]], 0)  # where the first element's run ends
    rule_end = _index(objects, objects[0], split)  # its type again: the next message
    overhead = envelope + _ELEMENT_SIZE[objects[0]]
    room = max_bytes - _ENVELOPE_SLACK - overhead
    taken = bisect.bisect_right(ends, room, 0, split)
    if taken == split < rule_end:
        second = _ELEMENT_SIZE[objects[split]]
        taken = bisect.bisect_right(ends, room - second, split, rule_end)
        overhead += second if taken > split else 0
    oversized = taken == 0  # too large even alone: it goes alone
    taken = max(taken, 1)
    return Batch(
        id=message_id,
        time_stamp=time_stamp,
        payload_text=_payload_text(objects[:taken], texts[:taken]),
        first_seq=window[0].seq,
        last_seq=window[taken - 1].seq,
        count=taken,
        size_bytes=overhead + ends[taken - 1],
        oversized=oversized,
    )


def _legacy(events: Sequence[OutboxEvent], legacy_up_to_seq: int | None) -> bool:
    return legacy_up_to_seq is None or events[0].seq <= legacy_up_to_seq


def rebuild_batch(
    events: Sequence[OutboxEvent], restored: PersistedBatch, legacy_up_to_seq: int | None = None
) -> Batch:
    """The persisted batch again, from every event of its range: same id, timeStamp and
    bytes as when it was first built, whatever the caps are now (one element per run,
    which is one per type for any batch `build_batch` made)."""
    if not events:
        raise ValueError("a batch needs at least one event")
    time_stamp = int(restored.sent_at)
    texts, _ = _wire_texts(events, _legacy(events, legacy_up_to_seq))
    payload_text = _payload_text([event.object for event in events], texts)
    frame = notification_frame(restored.message_id, time_stamp, payload_text)
    return Batch(
        id=restored.message_id,
        time_stamp=time_stamp,
        payload_text=payload_text,
        first_seq=events[0].seq,
        last_seq=events[-1].seq,
        count=len(events),
        size_bytes=len(frame.encode("utf-8")),
    )


@dataclass
class DeliveryMachine:
    """What one group has acknowledged, has in flight, and must do next.

    Its driver (`protocol.GroupConnection`) asks `next_step(now)` and has the one step it
    answers, then reports the outcome: an `AckCommit` (-> `commit_done`), an
    `EventRange` to read (-> `events_read`), a `PersistedBatch` row (-> `persist_done`),
    a `Send` (-> `write_done` / `write_timed_out`), or `WaitUntil` (-> `waited` once a
    response, a wake-up or the deadline ended the wait). The order is the machine's:
    a batch is never written before its row is committed, and the outbox is read once
    between two waits or writes.
    """

    group_id: str
    max_batch: int
    max_bytes: int
    rate_s: float
    acked_seq: int
    restored: PersistedBatch | None = None
    outstanding: Batch | None = None
    prepared: Batch | None = None
    phase: Phase = Phase.IDLE
    due_at: float = 0.0
    written_before: bool = False
    first_sent_at: float | None = None  # the first completed write of `outstanding`
    to_persist: PersistedBatch | None = None  # a new batch's row, to commit before its write
    read_since_wait: bool = False  # the outbox was read since the last wait or write
    last_acked_id: str | None = field(default=None, repr=False)
    stall_after: int = 12
    legacy_up_to_seq: int | None = None  # see `GroupPosition` (None: unknown, look always)
    sends: int = 0  # completed writes of the batch in flight
    stalled: bool = False  # `sends` reached `stall_after` without an ack
    _carried: tuple[str, int, bool] | None = field(default=None, repr=False)

    def carry_over(self, previous: DeliveryMachine | None) -> None:
        """Keep the send count of the batch `previous` had in flight, if this one was
        loaded to resend that very batch (a reconnect reloads from the database): an
        endpoint that drops the connection on a batch it refuses must stall it too."""
        if previous is None or previous.outstanding is None or self.restored is None:
            return
        if previous.outstanding.id == self.restored.message_id:
            self._carried = (previous.outstanding.id, previous.sends, previous.stalled)

    def next_step(self, now: float) -> DeliveryStep:
        """The one thing to do next (see the class docstring)."""
        if self.awaiting_commit is not None:
            return self.ack_commit(now)
        wanted = None if self.read_since_wait else self.events_wanted()
        if wanted is not None:
            return wanted
        if self.to_persist is not None:
            return self.to_persist
        send = self.write_due(now)
        if send is not None:
            return send
        return WaitUntil(self.deadline())

    def waited(self) -> None:
        """A wait ended (a response, a wake-up or the deadline): the
        outbox may have new events."""
        self.read_since_wait = False

    def events_wanted(self) -> EventRange | None:
        """The events to read next, or None when nothing is to be read now.

        While a batch is on the wire, the next one is read ahead (`ahead`): it is built
        then, and goes out the moment the ack is committed, so the group's link is never
        idle while the database is read. It is still only one request outstanding.
        """
        if self.outstanding is None:
            if self.restored is not None:
                span = self.restored.last_seq - self.acked_seq
                return EventRange(self.acked_seq, max(span, 1), self.restored.last_seq)
            return EventRange(self.acked_seq, self.max_batch)
        if self.prepared is None and self.phase in (Phase.SENT, Phase.ACKED):
            return EventRange(self.outstanding.last_seq, self.max_batch, ahead=True)
        return None

    def events_read(
        self, events: Sequence[OutboxEvent], now: float, message_id: str
    ) -> Batch | None:
        """Build the batch from `events` (as read for `events_wanted()`); None if there
        are none.

        With nothing in flight, the batch starts (`to_persist`, then write). Read ahead,
        it waits in `prepared` for the ack of the one in flight. A restored batch keeps
        its persisted id and timeStamp and every event of its range, whatever the caps
        are now: it must be the same message as before.
        """
        self.read_since_wait = True
        if self.outstanding is not None:
            return self._prepare(events, now, message_id)
        restored, self.restored = self.restored, None
        if not events:
            return None
        if restored is not None:
            batch = rebuild_batch(events, restored, self.legacy_up_to_seq)
        else:
            batch = build_batch(
                events,
                message_id=message_id,
                now=now,
                max_batch=self.max_batch,
                max_bytes=self.max_bytes,
                legacy_up_to_seq=self.legacy_up_to_seq,
            )
        self._start(batch, now)
        if restored is not None:
            # It may have reached the endpoint before the restart, at its timeStamp.
            self.written_before, self.first_sent_at = True, restored.sent_at
        else:
            self.to_persist = batch.persisted()  # so a restart resends it with this id
        carried, self._carried = self._carried, None
        if carried is not None and carried[0] == batch.id:
            _, self.sends, self.stalled = carried
        return batch

    def _prepare(self, events: Sequence[OutboxEvent], now: float, message_id: str) -> Batch | None:
        assert self.outstanding is not None
        if self.prepared is not None:
            raise RuntimeError("a batch is already in flight and the next one prepared")
        if events and events[0].seq <= self.outstanding.last_seq:
            raise ValueError("events read ahead must follow the batch in flight")
        if not events:
            return None
        self.prepared = build_batch(
            events,
            message_id=message_id,
            now=now,
            max_batch=self.max_batch,
            max_bytes=self.max_bytes,
            legacy_up_to_seq=self.legacy_up_to_seq,
        )
        return self.prepared

    def _start(self, batch: Batch, now: float) -> None:
        self.outstanding, self.phase, self.due_at = batch, Phase.PENDING, now
        self.written_before, self.first_sent_at = False, None
        self.sends, self.stalled = 0, False

    def persist_done(self, message_id: str) -> None:
        """The row of `to_persist` is committed: the batch may be written."""
        if self.to_persist is not None and self.to_persist.message_id == message_id:
            self.to_persist = None

    def write_due(self, now: float) -> Send | None:
        """The write to make now, if any (none before the batch is persisted)."""
        if self.outstanding is None or self.phase not in (Phase.PENDING, Phase.SENT):
            return None
        if self.to_persist is not None:
            return None
        if now < self.due_at:
            return None
        return Send(self.outstanding, resend=self.written_before)

    def deadline(self) -> float | None:
        """When `write_due` will next have something to say (None: only an event can)."""
        if self.outstanding is None or self.phase is Phase.ACKED:
            return None
        return self.due_at

    def write_done(self, batch_id: str, now: float) -> Stall | None:
        """The write of `batch_id` completed at `now`: wait `rate_s` for its ack. Returns
        the `Stall` when this write is the `stall_after`-th without an ack (once per
        batch)."""
        if self.outstanding is None or self.outstanding.id != batch_id:
            return None
        self.read_since_wait = False  # read the next batch ahead now
        self.written_before = True
        if self.first_sent_at is None:
            self.first_sent_at = now
        if self.phase is Phase.ACKED:
            return None
        self.phase, self.due_at = Phase.SENT, now + self.rate_s
        self.sends += 1
        if self.stalled or self.sends < self.stall_after:
            return None
        self.stalled = True
        return Stall(self.outstanding, self.sends)

    def write_timed_out(self, batch_id: str, now: float) -> None:
        """The write did not complete in time: it counts as not sent; try after `rate_s`."""
        if self.outstanding is None or self.outstanding.id != batch_id:
            return
        self.read_since_wait = False
        if self.phase is not Phase.ACKED:
            self.phase, self.due_at = Phase.PENDING, now + self.rate_s

    def clock_stepped(self, step: float) -> None:
        """The clock its driver reads moved by `step` seconds (back): so does the next
        write's due time, which stays as far away as it was."""
        self.due_at += step

    def connection_opened(self, now: float) -> None:
        """A new connection: the batch in flight goes again at once (the old one may be lost)."""
        if self.outstanding is not None and self.phase is not Phase.ACKED:
            self.due_at = now

    def response_received(self, response: Message) -> Verdict:
        """Judge a response; only `ACKNOWLEDGED` ends the batch (then `ack_commit`)."""
        if (
            response.type is not MessageType.NOTIFICATION
            or response.sub_type is not SubType.RESPONSE
        ):
            return Verdict.NOT_A_RESPONSE
        if self.outstanding is not None and response.id == self.outstanding.id:
            if self.phase is Phase.ACKED:
                return Verdict.DUPLICATE
        else:
            return Verdict.DUPLICATE if response.id == self.last_acked_id else Verdict.WRONG_ID
        if response.payload != []:
            return Verdict.NOT_EMPTY
        self.phase, self.stalled = Phase.ACKED, False
        return Verdict.ACKNOWLEDGED

    def outstanding_status(self) -> OutstandingStatus | None:
        """The batch in flight as `/status` shows it (None: nothing in flight)."""
        batch = self.outstanding
        if batch is None:
            return None
        return OutstandingStatus(
            message_id=batch.id,
            first_seq=batch.first_seq,
            last_seq=batch.last_seq,
            count=batch.count,
            sent_at=self.first_sent_at,
            sends=self.sends,
            stalled=self.stalled,
        )

    @property
    def awaiting_commit(self) -> Batch | None:
        """The acknowledged batch whose cursor move is still to be committed."""
        return self.outstanding if self.phase is Phase.ACKED else None

    def ack_commit(self, now: float) -> AckCommit:
        """The transaction the acknowledged batch needs (see `AckCommit`).

        A prepared batch goes next, its timeStamp set to `now` here and only here (it
        may have waited through resends): the row persisted and the message written are
        one and the same.
        """
        batch = self.awaiting_commit
        if batch is None:
            raise RuntimeError("no acknowledged batch to commit")
        prepared = None if self.prepared is None else self.prepared.stamped(now)
        return AckCommit(batch, prepared)

    def commit_done(self, commit: AckCommit, now: float, cursor: int | None = None) -> None:
        """The transaction of `commit` is durable: the next batch is in flight, due now.

        `cursor` is the group's cursor the transaction left: past the batch (the group was
        deleted and added again at a later head meanwhile), the batch read ahead was not
        persisted, and reading starts again from the cursor.
        """
        if self.awaiting_commit is not commit.acknowledged:
            raise RuntimeError("that acknowledgement is not the one awaiting its commit")
        moved = cursor is not None and cursor > commit.last_seq
        self.acked_seq = max(self.acked_seq, commit.last_seq, cursor or 0)
        self.last_acked_id = commit.acknowledged.id
        self.outstanding, self.phase, self.written_before = None, Phase.IDLE, False
        self.prepared, self.sends = None, 0
        self.read_since_wait = False  # the cursor moved: what follows it is read next
        if commit.next_batch is not None and not moved:
            self._start(commit.next_batch, now)
