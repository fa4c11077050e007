"""Value types shared across layers: the bottom of the import graph.

The store and the outbox produce these and the pure modules (`delivery.py`, the
connection process's `plan()`, the status snapshot) consume them, so they live below
both: this module imports nothing of nbwss and does no I/O. `store.py` and `outbox.py`
import them from here, never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One queued notification; `data` is its compact JSON text, as it goes on the wire."""

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
    """Where a group's delivery resumes: after `acked_seq`, the persisted batch first."""

    acked_seq: int
    outstanding: PersistedBatch | None


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
