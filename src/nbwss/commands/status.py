"""`nbwss status [--json]`: the running daemon's view, for people or for scripts.

It asks the daemon (GET /status on `status.listen`) rather than reading the database,
because only the daemon knows what is connected right now and what is in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from nbwss import health
from nbwss.commands import Context, examples, print_json, print_table
from nbwss.status import fetch_status
from nbwss.statusview import GroupView, group_views

HEADERS = ["GROUP", "ENDPOINT", "STATE", "SINCE", "OUTSTANDING", "BACKLOG", "OLDEST UNACKED",
           "LAST ACK", "LAST ERROR"]


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "status",
        help="show the running daemon's view of each server group",
        description="Per server group: the connected endpoint and since when, the "
        "notification batch awaiting its ack, the backlog and its oldest age, the last "
        "ack and the last error. Exits 1 when the daemon is not running. With --check, "
        "exits 0 only when every enabled group is CONNECTED and its backlog is young.",
        epilog=examples("sudo -u nbwss nbwss status", "nbwss status --json | jq .groups",
                        "nbwss status --check || echo 'nbwss needs attention'"),
    )
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print the /status JSON document")
    shown.add_argument(
        "--check", action="store_true",
        help="exit 0 when every enabled server group is CONNECTED and its oldest "
        "unacknowledged notification is younger than status.maxBacklogAge, else print one "
        "line per failing group and exit 1 (for monitoring scripts)",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, context: Context) -> int:
    document = asyncio.run(fetch_status(context.settings.status_address))
    if args.check:
        return check(document, context.settings.status_max_backlog_age_s)
    if args.json:
        print_json(document)
        return 0
    print_status(document, time.time())
    return 0


def check(document: dict[str, Any], max_backlog_age_s: float) -> int:
    failing = health.failing_groups(document, max_backlog_age_s)
    if failing:
        sys.stdout.write("".join(f"{line}\n" for line in failing))
        return 1
    sys.stdout.write(
        f"ok: {health.enabled_group_count(document)} enabled server group(s) CONNECTED, "
        f"no backlog older than {max_backlog_age_s:g} s\n"
    )
    return 0


def print_status(document: dict[str, Any], now: float) -> None:
    live = "live" if document.get("live") else "from the database only"
    sys.stdout.write(
        f"nbwss {document.get('version')}, pid {document.get('pid')}, "
        f"up {duration(document.get('uptime_s'))} ({live})\n"
    )
    poller = document.get("poller")
    if poller:
        sys.stdout.write(f"poller: {poller_line(poller, now)}\n")
    groups = group_views(document)
    if not groups:
        sys.stdout.write("no server groups: add an endpoint with 'nbwss endpoint add'\n")
        return
    print_table(HEADERS, [group_row(group, now) for group in groups])


def poller_line(poller: dict[str, Any], now: float) -> str:
    """`API 12.0 (auto), 1 record set aside`, and since when the API is down, if it is."""
    version = poller.get("api_version") or "not negotiated yet"
    line = f"API {version} ({poller.get('api_version_setting', 'auto')})"
    aside = poller.get("records_set_aside", 0)
    line += f", {aside} record{'s' if aside != 1 else ''} set aside"
    if poller.get("api_down_since") is not None:
        line += f", API down since {ago(now, poller['api_down_since'])}"
    return line


def group_row(group: GroupView, now: float) -> list[str]:
    outstanding = group.outstanding
    in_flight = "-"
    if outstanding:
        in_flight = f"{outstanding.message_id[:8]} ({duration(outstanding.age_s)})"
        if outstanding.stalled:
            in_flight += f" STALLED after {outstanding.sends} sends"
    return [
        group.group_id,
        group.endpoint or "-",
        "CONNECTED" if group.connected else "DISCONNECTED",
        ago(now, group.since),
        in_flight,
        str(group.backlog),
        duration(group.oldest_unacked_age_s),
        ago(now, group.last_ack),
        group.last_error or "-",
    ]


def duration(seconds: float | None) -> str:
    """A short human duration: 0.4s, 12s, 5m, 3h, 2d."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def ago(now: float, then: float | None) -> str:
    return "-" if then is None else f"{duration(max(0.0, now - then))} ago"
