"""The layers hold: the pure modules import nothing that does I/O, and value types sit
at the bottom (the store imports them; they import nothing of nbwss).

Each check runs in a fresh interpreter, since this test process has loaded everything.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import nbwss

# The sans-I/O core: protocol rules, codecs and decisions, fed values and the time.
PURE_MODULES = (
    "nbwss.values",
    "nbwss.strictjson",
    "nbwss.messages",
    "nbwss.notifications",
    "nbwss.delivery",
    "nbwss.protocol",
    "nbwss.backoff",
    "nbwss.failover",
    "nbwss.health",
    "nbwss.statusview",
    "nbwss.sources.mapping",
    "nbwss.sources.setaside",
    "nbwss.sources.apiversion",
)
IO_MODULES = ("asyncio", "socket", "ssl", "sqlite3", "aiohttp")
SOURCE = Path(nbwss.__file__).parent


def loaded_io_modules(module: str) -> list[str]:
    probe = (
        f"import {module}, sys; "
        f"print(' '.join(n for n in {IO_MODULES!r} if n in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    return result.stdout.split()


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_loads_no_io(module: str) -> None:
    assert loaded_io_modules(module) == []


def nbwss_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nbwss"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("nbwss")}
    return found


def test_value_types_import_nothing_of_nbwss() -> None:
    assert nbwss_imports(SOURCE / "values.py") == set()


def test_delivery_does_not_reach_up_to_the_store() -> None:
    assert nbwss_imports(SOURCE / "delivery.py").isdisjoint(
        {"nbwss.store", "nbwss.outbox", "nbwss.vault"}
    )


def test_sql_is_written_only_in_the_store_modules() -> None:
    allowed = {"store.py", "outbox.py", "intake.py", "pollerstore.py"}
    offenders = [
        str(path.relative_to(SOURCE))
        for path in SOURCE.rglob("*.py")
        if path.name not in allowed and ".execute(" in path.read_text()
    ]
    assert offenders == []
