"""Is the daemon doing its job? One rule for `nbwss status --check` and `GET /ready`.

Every enabled server group (a group with at least one enabled endpoint) must be
CONNECTED, its oldest unacknowledged notification must be younger than
`status.maxBacklogAge`, and its delivery must not be STALLED (a batch sent
`notification.stallAfterSends` times without an ack). Groups with no enabled endpoint
are the admin's choice, not a failure. The rule reads a `/status` document, so the
command and the daemon judge the same figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nbwss.statusview import OutstandingView, group_views


def failing_groups(document: Mapping[str, Any], max_backlog_age_s: float) -> list[str]:
    """One line per enabled group that breaks the rule, saying why; empty when healthy."""
    lines = []
    for group in group_views(document):
        if not group.enabled:
            continue
        reasons = []
        if not group.connected:
            last_error = group.last_error
            reasons.append("DISCONNECTED" + (f" (last error: {last_error})" if last_error else ""))
        age = group.oldest_unacked_age_s
        if age is not None and age >= max_backlog_age_s:
            reasons.append(
                f"{group.backlog} notification(s) unacknowledged, the oldest for "
                f"{age:.0f} s (status.maxBacklogAge is {max_backlog_age_s:g} s)"
            )
        if group.stalled:
            reasons.append(_stalled(group.outstanding))
        if reasons:
            lines.append(f"{group.group_id}: " + "; ".join(reasons))
    return lines


def _stalled(outstanding: OutstandingView | None) -> str:
    if outstanding is None:
        return "delivery STALLED"
    return (
        f"delivery STALLED: message {outstanding.message_id} (seq {outstanding.first_seq}-"
        f"{outstanding.last_seq}) sent {outstanding.sends} times without an ack"
    )


def enabled_group_count(document: Mapping[str, Any]) -> int:
    return sum(1 for group in group_views(document) if group.enabled)
