"""Records the poller cannot map: set one aside, go on with the rest. Pure.

One job or image that nbwss cannot turn into a notification (a state it does not know,
an attribute missing or of the wrong type, a field the intake check refuses, such as the
empty `clientName` of the IMAGEDELETE jobs in Veritas's example) must not stop every
other notification. Such a record is set aside: its id and reason are logged once,
counted (metric and `nbwss status`), and it is retried when it changes, which its
fingerprint (a digest of the whole record) shows. Only a page that is not in the
documented shape drops the whole poll (`restclient.ApiUnavailableError`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from nbwss.sources.mapping import MalformedRecordError, record_digest, record_id

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SetAside:
    """One record set aside: which, its fingerprint, and why."""

    object: str  # JOB or IMAGE
    record_id: str
    fingerprint: str
    reason: str


@dataclass(frozen=True, slots=True)
class Reading(Generic[T]):
    """A listing read record by record: what mapped, and what was set aside."""

    parsed: list[T]
    rejects: list[SetAside]


def read_records(
    obj: str, records: Iterable[dict[str, Any]], parse: Callable[[dict[str, Any]], T]
) -> Reading[T]:
    """Parse every record; one that raises `MalformedRecordError` is set aside."""
    parsed: list[T] = []
    rejects: dict[str, SetAside] = {}  # by id: paging may show a record twice
    for record in records:
        try:
            parsed.append(parse(record))
        except MalformedRecordError as exc:
            identity = record_id(record) or "(no id)"
            rejects[identity] = SetAside(obj, identity, record_digest(record), str(exc))
    return Reading(parsed, list(rejects.values()))


@dataclass(frozen=True, slots=True)
class SetAsideDecision:
    """What changes: records newly set aside (log and count them once), ids to forget."""

    new: list[SetAside]
    cleared: list[str]


def decide_set_aside(
    known: Mapping[str, str],
    rejects: Iterable[SetAside],
    mapped: Collection[str],
    listed: Collection[str] | None = None,
) -> SetAsideDecision:
    """Compare this poll's rejects with those already set aside (`known`: id -> fingerprint).

    A reject is new when its id is not known or its fingerprint changed (it changed and
    still cannot be mapped). A known id that mapped this time is cleared; so is one
    missing from a complete listing (`listed`, for images: it is gone or aged out).
    """
    new = [r for r in rejects if known.get(r.record_id) != r.fingerprint]
    cleared = [i for i in known if i in mapped or (listed is not None and i not in listed)]
    return SetAsideDecision(new, cleared)
