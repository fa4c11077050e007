"""Value types shared across layers: the bottom of the import graph.

The store and the outbox produce these and the pure modules (`delivery.py`, the
connection process's `plan()`, the status snapshot) consume them, so they live below
both: this module imports nothing of nbwss and does no I/O. `store.py` and `outbox.py`
import them from here, never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class OutboxEvent(NamedTuple):
    """One queued notification; `data` is its compact JSON text, as it goes on the wire.

    A named tuple, not a frozen dataclass: delivery reads 500 at a time in a worker
    thread, and a tuple is made from an SQLite row in half the time (and GIL).
    """

    seq: int
    object: str
    data: str


@dataclass(frozen=True, slots=True)
class PersistedBatch:
    """The batch a group has in flight: its message id, seq range and the timeStamp it
    carries (`sent_at`: the column's name; it is set when the batch is built)."""

    message_id: str
    first_seq: int
    last_seq: int
    sent_at: float


@dataclass(frozen=True, slots=True)
class GroupPosition:
    """Where a group's delivery resumes: after `acked_seq`, the persisted batch first.
    `legacy_up_to_seq`: the rows up to it may hold NaN or Infinity (an older intake)."""

    acked_seq: int
    outstanding: PersistedBatch | None
    legacy_up_to_seq: int = 0


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """An endpoint as stored, without its token (that takes an explicit `Store.token`)."""

    host_name: str
    url: str
    group_id: str
    priority: int
    enabled: bool
    fingerprint: str
    certificate_der: bytes
    updated_at: float
    connected: bool
    status_since: float | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class OutstandingStatus:
    """The NOTIFICATION a group awaits the ack of, as `/status` shows it.

    `sent_at` is when it was first written (epoch seconds; for a batch persisted before
    a restart, the timeStamp it carries), None while it is not written yet; `sends`
    counts completed writes (more than one: resent for want of an ack); `stalled` is set
    once it was sent `notification.stallAfterSends` times without an ack.
    """

    message_id: str
    first_seq: int
    last_seq: int
    count: int
    sent_at: float | None
    sends: int = 0
    stalled: bool = False


@dataclass(frozen=True, slots=True)
class GroupStatus:
    """What the running daemon alone knows of one server group (the live part of
    `/status`); the store's figures (backlog, cursor, endpoints) are read beside it.
    `last_ack` is None when no ack was committed since the daemon started."""

    group_id: str
    connected: bool
    endpoint: str | None
    outstanding: OutstandingStatus | None
    last_ack: float | None = None

    def fields(self) -> dict[str, object]:
        """The `/status` fields this view replaces (a `last_ack` of None keeps the store's)."""
        outstanding = self.outstanding
        fields: dict[str, object] = {
            "connected": self.connected,
            "endpoint": self.endpoint,
            "outstanding": None if outstanding is None else {
                "message_id": outstanding.message_id,
                "first_seq": outstanding.first_seq,
                "last_seq": outstanding.last_seq,
                "count": outstanding.count,
                "sent_at": outstanding.sent_at,
                "sends": outstanding.sends,
                "stalled": outstanding.stalled,
            },
            "delivery": "STALLED" if outstanding is not None and outstanding.stalled else "OK",
        }
        if self.last_ack is not None:
            fields["last_ack"] = self.last_ack
        return fields
