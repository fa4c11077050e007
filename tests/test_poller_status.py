"""The poller's part of `nbwss status`: the `poller` field of /status and its line."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbwss.commands.status import print_status
from nbwss.status import StatusServer, fetch_status
from nbwss.store import Store
from tests.conftest import timeout


@pytest.fixture
def store(short_dir: Path) -> Iterator[Store]:
    db = Store(short_dir / "nbwss.db", short_dir / "nbwss.key")
    yield db
    db.close()


class PollerStub:
    """What the poller reports (its own figures are checked in test_poller.py)."""

    def __init__(self, **changes: object) -> None:
        self.view: dict[str, object] = {"api_version": "12.0", "api_version_setting": "auto",
                                        "api_down_since": None, "records_set_aside": 1}
        self.view.update(changes)

    def status_view(self) -> dict[str, object]:
        return self.view


async def status_of(short_dir: Path, store: Store, poller: PollerStub | None
                    ) -> tuple[dict[str, object], list[str]]:
    """The /status document and the lines `nbwss status` prints for it."""
    server = StatusServer(str(short_dir / "p.sock"), store, poller=poller)
    task = asyncio.create_task(server.run())
    try:
        async with asyncio.timeout(timeout(10)):
            await server.ready.wait()
        document = await fetch_status(str(short_dir / "p.sock"))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        print_status(document, time.time())
    return document, printed.getvalue().splitlines()


async def test_the_poller_has_its_field_and_its_line(short_dir: Path, store: Store) -> None:
    document, lines = await status_of(short_dir, store, PollerStub())
    assert document["poller"] == PollerStub().view
    assert "poller: API 12.0 (auto), 1 record set aside" in lines
    _, lines = await status_of(short_dir, store, PollerStub(
        api_version=None, records_set_aside=2, api_down_since=time.time() - 30))
    assert "poller: API not negotiated yet (auto), 2 records set aside, API down since " \
        "30s ago" in lines


async def test_without_a_poller_the_field_is_null(short_dir: Path, store: Store) -> None:
    document, lines = await status_of(short_dir, store, None)
    assert document["poller"] is None
    assert not any(line.startswith("poller:") for line in lines)
