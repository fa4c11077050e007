"""Is the daemon doing its job? One rule for `nbwss status --check` and `GET /ready`.

Every enabled server group (a group with at least one enabled endpoint) must be
CONNECTED, its oldest unacknowledged notification must be younger than
`status.maxBacklogAge`, and its delivery must not be STALLED (a batch sent
`notification.stallAfterSends` times without an ack). Groups with no enabled endpoint
are the admin's choice, not a failure. The rule reads a `/status` document, so the
command and the daemon judge the same figures.
"""

from __future__ import annotations

from typing import Any


def failing_groups(document: dict[str, Any], max_backlog_age_s: float) -> list[str]:
    """One line per enabled group that breaks the rule, saying why; empty when healthy."""
    lines = []
    for group_id, group in sorted(document.get("groups", {}).items()):
        if not any(endpoint.get("enabled") for endpoint in group.get("endpoints", ())):
            continue
        reasons = []
        if not group.get("connected"):
            last_error = group.get("last_error")
            reasons.append("DISCONNECTED" + (f" (last error: {last_error})" if last_error else ""))
        age = group.get("oldest_unacked_age_s")
        if age is not None and age >= max_backlog_age_s:
            reasons.append(
                f"{group.get('backlog')} notification(s) unacknowledged, the oldest for "
                f"{age:.0f} s (status.maxBacklogAge is {max_backlog_age_s:g} s)"
            )
        outstanding = group.get("outstanding") or {}
        if group.get("delivery") == "STALLED":
            reasons.append(
                f"delivery STALLED: message {outstanding.get('message_id')} (seq "
                f"{outstanding.get('first_seq')}-{outstanding.get('last_seq')}) sent "
                f"{outstanding.get('sends')} times without an ack"
            )
        if reasons:
            lines.append(f"{group_id}: " + "; ".join(reasons))
    return lines


def enabled_group_count(document: dict[str, Any]) -> int:
    return sum(
        1 for group in document.get("groups", {}).values()
        if any(endpoint.get("enabled") for endpoint in group.get("endpoints", ()))
    )
