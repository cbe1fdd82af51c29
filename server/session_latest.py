"""The last settings win: one request of a kind at a time per session, superseded ones dropped.

Each of the page's clip controls (frames, fps, size, fit, times) starts its own "prepare the clip" request.
Run side by side, a slow earlier one (a 512x512 clip) could finish after a quick later one (64x64) and leave a
stale clip under sliders showing other values. Requests take a ticket in the order they start (Gradio's queue
starts a session's events in the order they were triggered, and each carries every control's value at that
moment, so the last ticket holds the settings shown). Then they run one at a time per session; one whose ticket
is no longer the latest is dropped before it runs, and its result dropped after, so only the last one's clip,
preview and caption reach the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator

MAX_SESSIONS = 10_000


class LatestWins:
    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._latest: OrderedDict[str, int] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        # forget() comes from the unload handler, which Gradio runs in a worker thread; the rest on the event loop
        self._guard = threading.Lock()

    def ticket(self, session: str) -> int:
        """A new request of `session`: it supersedes every earlier one."""
        with self._guard:
            number = next(self._counter)
            self._latest[session] = number
            self._latest.move_to_end(session)
            while len(self._latest) > MAX_SESSIONS:
                old, _ = self._latest.popitem(last=False)
                lock = self._locks.get(old)
                if lock is not None and not lock.locked():
                    del self._locks[old]
            return number

    def is_latest(self, session: str, ticket: int) -> bool:
        with self._guard:
            return self._latest.get(session) == ticket

    @contextlib.asynccontextmanager
    async def turn(self, session: str, ticket: int) -> AsyncIterator[bool]:
        """Wait for the session's running request to end; yield whether this one is still the latest (False:
        drop it, a later request will show its own result)."""
        with self._guard:
            lock = self._locks.setdefault(session, asyncio.Lock())
        if not self.is_latest(session, ticket):
            yield False
            return
        async with lock:
            yield self.is_latest(session, ticket)

    def forget(self, session: str) -> None:
        with self._guard:
            self._latest.pop(session, None)
            lock = self._locks.get(session)
            if lock is not None and not lock.locked():
                del self._locks[session]
