"""Prometheus metrics of the daemon, in one registry, defined once.

Modules increment these; the status server renders `REGISTRY` at /metrics. The
per-group state (connected, backlog, oldest unacknowledged age, last ack) is rendered
at scrape time from the `/status` document (`status.group_families`), and the queued
total is read from the database, since `nbwss notify` queues from another process. As
Prometheus users expect: `nbwss_build_info`, the standard `process_*` collector, and no
`_created` series (they double the series count and no alert uses them).
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

from nbwss import __version__

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)

ProcessCollector(registry=REGISTRY)
BUILD_INFO = Info("nbwss_build", "The running nbwss: its version.", registry=REGISTRY)
BUILD_INFO.info({"version": __version__})

HANDSHAKES = Counter(
    "nbwss_handshakes", "CONNECT handshakes by result (valid, invalid, timeout, error).",
    ["group", "host", "result"], registry=REGISTRY,
)
FAILOVERS = Counter(
    "nbwss_failovers", "Connections made to an endpoint other than the group's last one.",
    ["group"], registry=REGISTRY,
)
PONG_MISSES = Counter(
    "nbwss_pong_misses", "Keepalive pings that got no pong in time.",
    ["group", "host"], registry=REGISTRY,
)
NOTIFICATIONS_SENT = Counter(
    "nbwss_notifications_sent", "Notifications sent for the first time (per event).",
    ["group"], registry=REGISTRY,
)
NOTIFICATIONS_RESENT = Counter(
    "nbwss_notifications_resent", "Notifications sent again for want of an ack (per event).",
    ["group"], registry=REGISTRY,
)
NOTIFICATIONS_ACKED = Counter(
    "nbwss_notifications_acked", "Notifications acknowledged (per event).",
    ["group"], registry=REGISTRY,
)
BATCHES_STALLED = Counter(
    "nbwss_notification_batches_stalled",
    "NOTIFICATION messages sent notification.stallAfterSends times without an ack.",
    ["group"], registry=REGISTRY,
)
DECODE_ERRORS = Counter(
    "nbwss_decode_errors", "Frames from an endpoint that could not be decoded.",
    ["group", "host"], registry=REGISTRY,
)
COMMANDS = Counter(
    "nbwss_commands", "COMMAND requests answered, by HTTP status of the answer.",
    ["status"], registry=REGISTRY,
)
COMMAND_SECONDS = Histogram(
    "nbwss_command_duration_seconds", "Time from COMMAND request to response.",
    registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
POLLER_UP = Gauge(
    "nbwss_poller_up", "1 while the REST poller's last poll of that list succeeded, else 0.",
    ["poll"], registry=REGISTRY,
)
POLLER_SET_ASIDE = Counter(
    "nbwss_poller_records_set_aside",
    "API records the REST poller could not map and set aside (once each, again if one "
    "changes and still cannot be mapped).",
    ["object"], registry=REGISTRY,
)
