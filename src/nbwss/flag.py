"""A lean `asyncio.Event`, for the events there is one of per server group.

`asyncio.Event` holds a `collections.deque` of waiters from birth: about 0.7 KiB, paid a
thousand times over by the events a daemon keeps per group (a group's kick in the
supervisor, its outbox's `released`), waited on by one task at a time if at all. A
`Flag` keeps the same contract with a list of waiters made on the first wait and
dropped once set (issue 14: memory per idle connection).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal


class Flag:
    """`asyncio.Event`'s contract: `set()` wakes every waiter and stays set until
    `clear()`; `wait()` returns at once while set; a cancelled wait leaves nothing."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def __repr__(self) -> str:
        waiting = len(self._waiters or ())
        return f"<Flag {'set' if self._value else 'unset'}, waiters:{waiting}>"

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> Literal[True]:
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            waiters = self._waiters  # another list if set meanwhile: ours is gone
            if waiters is not None:
                with contextlib.suppress(ValueError):
                    waiters.remove(waiter)
                if not waiters:
                    self._waiters = None
        return True
