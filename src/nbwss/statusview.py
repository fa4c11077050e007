"""The `/status` document read back as typed values, one reader for every view of it.

The daemon writes the document once per request (`status.py`: the store's figures with
the live `GroupStatus` snapshot laid over them). `nbwss status`, the health rule of
`--check` and `/ready`, and `/metrics` all read it through `group_views()`, so the
table, the verdict and the series show the same figures, and only the documented
fields (docs/operations.md). A field that is missing or of the wrong type reads as
unknown: a daemon of another release never crashes the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class EndpointView:
    host_name: str
    enabled: bool


@dataclass(frozen=True, slots=True)
class OutstandingView:
    """The NOTIFICATION a group awaits the ack of (`sends` is None from the store alone)."""

    message_id: str
    first_seq: int | None
    last_seq: int | None
    sends: int | None
    stalled: bool
    age_s: float | None


@dataclass(frozen=True, slots=True)
class GroupView:
    """One server group as `/status` shows it."""

    group_id: str
    connected: bool
    endpoint: str | None
    since: float | None
    outstanding: OutstandingView | None
    stalled: bool  # `delivery` is STALLED
    backlog: int
    oldest_unacked_age_s: float | None
    last_ack: float | None
    last_error: str | None
    endpoints: tuple[EndpointView, ...]

    @property
    def enabled(self) -> bool:
        """A group with at least one enabled endpoint: one the health rule judges."""
        return any(endpoint.enabled for endpoint in self.endpoints)


def group_views(document: Mapping[str, Any]) -> list[GroupView]:
    """Every group of the document, by group id."""
    groups = document.get("groups")
    if not isinstance(groups, Mapping):
        return []
    return [
        _group(str(group_id), group)
        for group_id, group in sorted(groups.items())
        if isinstance(group, Mapping)
    ]


def _group(group_id: str, group: Mapping[str, Any]) -> GroupView:
    endpoints = group.get("endpoints")
    return GroupView(
        group_id=group_id,
        connected=group.get("connected") is True,
        endpoint=_text(group.get("endpoint")),
        since=_number(group.get("since")),
        outstanding=_outstanding(group.get("outstanding")),
        stalled=group.get("delivery") == "STALLED",
        backlog=int(_number(group.get("backlog")) or 0),
        oldest_unacked_age_s=_number(group.get("oldest_unacked_age_s")),
        last_ack=_number(group.get("last_ack")),
        last_error=_text(group.get("last_error")),
        endpoints=tuple(
            EndpointView(str(endpoint.get("host_name")), endpoint.get("enabled") is True)
            for endpoint in (endpoints if isinstance(endpoints, list) else ())
            if isinstance(endpoint, Mapping)
        ),
    )


def _outstanding(value: object) -> OutstandingView | None:
    if not isinstance(value, Mapping):
        return None
    sends = _number(value.get("sends"))
    first_seq = _number(value.get("first_seq"))
    last_seq = _number(value.get("last_seq"))
    return OutstandingView(
        message_id=_text(value.get("message_id")) or "?",
        first_seq=None if first_seq is None else int(first_seq),
        last_seq=None if last_seq is None else int(last_seq),
        sends=None if sends is None else int(sends),
        stalled=value.get("stalled") is True,
        age_s=_number(value.get("age_s")),
    )


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
