"""Give the C allocator's free memory back to the system: glibc's `malloc_trim`.

The connection process re-reads every endpoint each `connectionInfo.period` in a worker
thread. glibc serves a worker thread from its own arena and keeps the pages the read
freed, so a daemon of 1,000 idle groups grew by about 1 KiB of RSS per connection a
minute with nothing to show for it (`python -m bench idle`, docs/benchmarks.md).
`malloc_trim(0)` returns them; elsewhere (musl, macOS) there is nothing to call and
nothing is done.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

_malloc_trim: Callable[[int], int] | None = None
_looked_up = False


def trim() -> bool:
    """Return the allocator's free pages to the system; whether there was a way to.

    Blocking (it walks every arena): call it from a worker thread, where ctypes lets
    the event loop run meanwhile."""
    global _malloc_trim, _looked_up
    if not _looked_up:
        _looked_up = True
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim  # the process's own C library
        except (OSError, AttributeError):
            _malloc_trim = None
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
