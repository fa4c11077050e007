"""systemd's readiness protocol (sd_notify) in a few lines, without libsystemd.

Under `Type=notify` systemd sets `$NOTIFY_SOCKET`, a Unix datagram socket (a path, or
an abstract name written with a leading '@'); the service sends `READY=1`, `STATUS=...`,
`STOPPING=1` and, with `WatchdogSec=`, `WATCHDOG=1` at least every `$WATCHDOG_USEC`.
Outside systemd every call is a no-op. A failed send is logged, never raised: the
service must not stop because its supervisor's socket went away.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from nbwss.logs import get_logger

log = get_logger("nbwss.sdnotify")


class Notifier:
    """Sends state lines to systemd when `address` is set."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send `fields` (e.g. "READY=1", "STATUS=3 groups connected") as one datagram."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode("utf-8"), target)
        except OSError as exc:
            log.warning("sdnotify.failed", address=self.address, reason=str(exc))
            return False
        return True


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """How often to send WATCHDOG=1 (half the timeout, as sd_watchdog_enabled advises)."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (e.g. our parent)
    return int(usec) / 1_000_000 / 2
