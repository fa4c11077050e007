"""docs/security.md names, for each defence, the tests behind it: they must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECURITY = ROOT / "docs" / "security.md"
# `tests/test_x.py` or `tests/test_x.py::test_name`, and bare `test_name`s after it.
_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`|`(test_\w+)`")


def referenced_tests() -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = []
    for line in SECURITY.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        current: str | None = None
        for path, name, bare in _REFERENCE.findall(line.rsplit("|", 2)[-2]):
            if path:
                current = path
                found.append((path, name or None))
            elif current is not None:
                found.append((current, bare))
    return found


def test_every_test_named_in_the_security_page_exists() -> None:
    references = referenced_tests()
    assert len(references) > 20
    for path, name in references:
        source = ROOT / path
        assert source.is_file(), path
        if name is not None:
            assert re.search(rf"^(async )?def {name}\(", source.read_text(), re.M), (path, name)
