"""Which NetBackup REST API version to ask for, and what changes with it. Pure.

A NetBackup primary server serves a window of API versions and answers **406** to an
`Accept` (media type `application/vnd.netbackup+json;version=<v>`) outside it (Veritas's
OpenAPI files, 10.3 to 11.2: "Invalid `Accept` type"). The releases raised the version
one by one; the documents show 1.0 (8.1.1, the code samples), 10.0 (10.3), 12.0 (10.5),
13.0 (11.0) and 14.0 (11.2). docs/poller.md has the table and what is unverified.

`restApi.apiVersion=auto` starts from the newest version nbwss knows and steps down one
version on each 406 until one is accepted; that one is remembered until a later 406
(the server was upgraded and dropped it), which starts the search again from the top.
A fixed version is never changed: a 406 for it is reported as the API refusing it.

What changed at a version and matters to the poller: `/admin/jobs` pages by cursor from
9.0 ("a breaking change ... starting with version 9.0", admin.yaml), by offset before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

# Newest first: the order `auto` tries them in.
KNOWN_VERSIONS: Final = tuple(f"{major}.0" for major in range(14, 0, -1))
NEWEST: Final = KNOWN_VERSIONS[0]
# /admin/jobs: cursor paging (page[after], a string meta.pagination.next) from this version.
JOBS_CURSOR_FROM: Final = (9, 0)


def as_tuple(version: str) -> tuple[int, int]:
    """"12.0" -> (12, 0), for comparisons."""
    major, _, minor = version.partition(".")
    return int(major), int(minor or "0")


def media_type(version: str) -> str:
    """The `Accept` / `Content-Type` value for `version`."""
    return f"application/vnd.netbackup+json;version={version}"


def jobs_use_cursor(version: str) -> bool:
    """Whether `/admin/jobs` pages by cursor at this version (from 9.0) or by offset."""
    return as_tuple(version) >= JOBS_CURSOR_FROM


@dataclass(slots=True)
class VersionNegotiation:
    """The version to send next, and what the server last accepted.

    `setting` is `auto` or a fixed version (`restApi.apiVersion`). Two polls share one
    negotiation; a 406 for a version that another call already stepped past is ignored.
    """

    setting: str = "auto"
    current: str = field(init=False)
    accepted: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.current = NEWEST if self.setting == "auto" else self.setting

    @property
    def fixed(self) -> bool:
        return self.setting != "auto"

    def on_accepted(self, version: str) -> bool:
        """The server answered `version`; True when that is news (log it once)."""
        if self.accepted == version:
            return False
        self.accepted = version
        return True

    def on_refused(self, version: str) -> str | None:
        """A 406 for `version`: the version to try now, or None when none is left.

        After None the search starts again from the newest at the next call.
        """
        if self.fixed:
            return None
        if version != self.current:
            return self.current  # another call has already moved on
        if self.accepted == version:
            self.accepted = None  # accepted before, refused now: the server changed
            if version != NEWEST:
                self.current = NEWEST
                return self.current
        self.accepted = None
        index = KNOWN_VERSIONS.index(version) if version in KNOWN_VERSIONS else -1
        if 0 <= index < len(KNOWN_VERSIONS) - 1:
            self.current = KNOWN_VERSIONS[index + 1]
            return self.current
        self.current = NEWEST
        return None
