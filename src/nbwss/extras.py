"""The `demo` extra: what a base install leaves out, and the one line that says so.

A base install (`pip install nbwss`) carries the daemon and the admin commands. The
demo, and the throw-away certificates of the reference endpoint and the stand-in REST
API (`--self-signed`), need `trustme`, which `pip install 'nbwss[demo]'` brings. Nothing
the daemon or an admin command runs imports them (`tests/test_packaging.py`).
"""

from __future__ import annotations

import importlib.util
from typing import Final

from nbwss.errors import NbwssError

# The demo extra's packages, as named in pyproject.toml (a test keeps the two equal).
DEMO_PACKAGES: Final = frozenset({"trustme"})
DEMO_INSTALL: Final = "pip install 'nbwss[demo]'"


def require_demo_extra(needed_by: str) -> None:
    """Return when the demo extra is installed; else `NbwssError` naming what to install,
    so the user sees one line, not an `ImportError` traceback."""
    if all(importlib.util.find_spec(name) is not None for name in DEMO_PACKAGES):
        return
    raise NbwssError(f"{needed_by} needs the demo extra, which is not installed: {DEMO_INSTALL}")
