"""The NetBackup releases the stand-in imitates, and what differs between them.

Each release serves a window of API versions and answers 406 to an `Accept` outside it
(every OpenAPI file, 10.3 to 11.2, lists 406 "Invalid `Accept` type"). What the answer
looks like follows the version asked for, not the release: `/admin/jobs` pages by cursor
from API 9.0 and by offset before (admin.yaml: "A breaking change has been made to this
API starting with version 9.0"). Sources and what is unverified: docs/poller.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from nbwss.sources.apiversion import as_tuple


@dataclass(frozen=True, slots=True)
class Release:
    """A release: its name and the API versions it serves (`oldest`..`newest`)."""

    name: str
    newest: str
    oldest: str

    def serves(self, version: str) -> bool:
        try:
            wanted = as_tuple(version)
        except ValueError:
            return False
        return as_tuple(self.oldest) <= wanted <= as_tuple(self.newest)


# 8.1.1: API 1.0 (the code samples' version=1.0 against "NetBackup 8.1.1 or higher").
RELEASE_8_1_1: Final = Release("8.1.1", newest="1.0", oldest="1.0")
# 10.5: API 12.0 (the 10.5 OpenAPI files). Which older versions a real 10.5 still serves
# is not documented; 9.0 is the first with today's jobs paging.
RELEASE_10_5: Final = Release("10.5", newest="12.0", oldest="9.0")

RELEASES: Final = {release.name: release for release in (RELEASE_8_1_1, RELEASE_10_5)}
NEWEST_RELEASE: Final = RELEASE_10_5
