"""A reference cloud endpoint: the other end of NBWSS, for cloud-app developers.

`ReferenceEndpoint` (in `endpoint.py`) is the whole protocol as seen from the cloud;
`python -m nbwss.reference --help` runs it. `nbwss demo` and the tests use it too.
"""

from nbwss.reference.endpoint import (
    DEFAULT_PATH,
    Notification,
    ReferenceEndpoint,
    describe,
    notifications_of,
)
from nbwss.reference.tls import SelfSigned, self_signed

__all__ = [
    "DEFAULT_PATH",
    "Notification",
    "ReferenceEndpoint",
    "SelfSigned",
    "describe",
    "notifications_of",
    "self_signed",
]
