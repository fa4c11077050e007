"""Which endpoint each server group uses (spec section 4), decided purely.

The supervisor (`nbwss.supervisor`) feeds these the stored endpoints and what is live,
and carries out the answer: `plan()` says which live connections to close and, per
group, the enabled endpoints in the order to try them; `retry_delay()` says when a
group tries its list again after a round. No I/O, no clock: tested with values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from nbwss.backoff import Backoff
from nbwss.values import EndpointRecord

# A connection that lived this long was not flapping: when it drops, the group retries
# at once and backs off from the start again. Shorter ones keep the backoff growing, so
# an endpoint that accepts CONNECT and then drops at once is not hammered.
STABLE_AFTER_S: Final = 1.0

Signature = tuple[tuple[str, str, int, str, float], ...]


@dataclass(frozen=True, slots=True)
class Identity:
    """What a live connection was made with; any change means the endpoint was re-added."""

    url: str
    group_id: str
    fingerprint: str
    token_digest: str


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def identity_of(record: EndpointRecord, digest: str) -> Identity:
    return Identity(record.url, record.group_id, record.fingerprint, digest)


@dataclass(frozen=True, slots=True)
class Plan:
    """What one run of the connection process decided."""

    close: Mapping[str, str]  # host name -> reason
    groups: Mapping[str, tuple[EndpointRecord, ...]]  # group -> enabled endpoints, in order


def connection_order(records: Iterable[EndpointRecord]) -> dict[str, tuple[EndpointRecord, ...]]:
    """Per group, its enabled endpoints: lowest priority number first, ties by host name."""
    groups: dict[str, list[EndpointRecord]] = {}
    for record in sorted(records, key=lambda r: (r.group_id, r.priority, r.host_name)):
        if record.enabled:
            groups.setdefault(record.group_id, []).append(record)
    return {group: tuple(endpoints) for group, endpoints in groups.items()}


def plan(
    records: Sequence[EndpointRecord],
    live: Mapping[str, Identity],
    token_digests: Mapping[str, str],
) -> Plan:
    """Decide one run: `live` maps each connected host to what it was connected with;
    `token_digests` holds the stored token's digest of each live host still present."""
    by_host = {record.host_name: record for record in records}
    close: dict[str, str] = {}
    for host, identity in live.items():
        record = by_host.get(host)
        if record is None:
            close[host] = "endpoint deleted"
        elif not record.enabled:
            close[host] = "endpoint disabled"
        elif identity_of(record, token_digests.get(host, "")) != identity:
            close[host] = "endpoint re-added with new details"
    return Plan(close=close, groups=connection_order(records))


def group_signature(endpoints: Sequence[EndpointRecord]) -> Signature:
    """What a group's list of endpoints was configured with: a change (an endpoint added,
    re-added, enabled or moved) is worth trying the list at once; a status is not."""
    return tuple(
        (r.host_name, r.url, r.priority, r.fingerprint, r.updated_at) for r in endpoints
    )


@dataclass(frozen=True, slots=True)
class Round:
    """How one try of a group's list went: how long the connection lived (None: no
    endpoint connected), and whether an endpoint refused the token."""

    lived_s: float | None
    refused: bool = False


def retry_delay(tried: Round, backoff: Backoff) -> float | None:
    """How long a group waits before trying its list again; None: at once.

    A connection that lived `STABLE_AFTER_S` was not flapping: the group retries at once
    and its backoff starts over. Anything shorter keeps the backoff growing.
    """
    if tried.lived_s is not None and tried.lived_s >= STABLE_AFTER_S:
        backoff.reset()
        return None
    return backoff.next_delay(refused=tried.refused)
