"""Slow down password guessing at Gradio's login (ANYV2V_AUTH): per client address, a few free failures, then
an exponentially growing wait (1 s, 2 s, 4 s ... at most `max_delay`) before the next attempt is even checked.

Attempts of one client are checked one at a time, so 30 wrong passwords sent at once get 4 answers (the 4th
failure starts the wait) and 26 "429 Too Many Requests" (with Retry-After), not 30 checks. A correct login
clears the client's record.

The client is the address uvicorn gives the request: the TCP peer, or, when the peer is a trusted proxy
(uvicorn's FORWARDED_ALLOW_IPS, default 127.0.0.1 and ::1), the right-most untrusted address in
X-Forwarded-For. So behind a reverse proxy each visitor counts on their own when the proxy appends the peer it
saw to X-Forwarded-For (nginx: `proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;`) and, for a proxy
on another host, FORWARDED_ALLOW_IPS names that proxy's address. Never "*": uvicorn then takes the left-most
entry, which a client writes itself, and a guesser becomes a new visitor with every attempt. Without these, every
visitor shares the proxy's address and one guesser slows everyone's login.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_CLIENTS = 10_000


@dataclass
class _Record:
    failures: int = 0
    retry_at: float = 0.0
    last: float = 0.0


class LoginThrottle:
    """Failed-login bookkeeping per client, on an injectable clock."""

    def __init__(self, free_failures: int = 3, base_delay: float = 1.0, max_delay: float = 300.0,
                 forget_after: float = 3600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.free_failures = free_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def delay_after(self, failures: int) -> float:
        """The wait after the `failures`-th failure in a row."""
        if failures <= self.free_failures:
            return 0.0
        return min(self.base_delay * 2.0 ** (failures - self.free_failures - 1), self.max_delay)

    def wait_s(self, client: str) -> float:
        """Seconds until `client` may try again (0: now)."""
        record = self._records.get(client)
        if record is None:
            return 0.0
        now = self.clock()
        if now - record.last > self.forget_after:
            del self._records[client]
            return 0.0
        return max(record.retry_at - now, 0.0)

    def failed(self, client: str) -> float:
        """Note a failed login; the wait before the client's next attempt."""
        now = self.clock()
        record = self._records.pop(client, None) or _Record()
        record.failures += 1
        record.last = now
        record.retry_at = now + self.delay_after(record.failures)
        self._records[client] = record
        while len(self._records) > MAX_CLIENTS:
            self._records.popitem(last=False)
        return record.retry_at - now

    def succeeded(self, client: str) -> None:
        self._records.pop(client, None)


def _is_login(scope: dict[str, Any]) -> bool:
    path = (scope.get("path") or "").rstrip("/")
    return scope.get("type") == "http" and scope.get("method") == "POST" and (path == "/login" or path.endswith("/login"))


class LoginThrottleMiddleware:
    """ASGI middleware for Gradio's app: throttles POST /login by client address (see the module text)."""

    def __init__(self, app: Any, throttle: LoginThrottle | None = None) -> None:
        self.app = app
        self.throttle = throttle or LoginThrottle()
        self._locks: dict[str, asyncio.Lock] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not _is_login(scope):
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown", 0))[0] or "unknown"
        if len(self._locks) > MAX_CLIENTS:
            self._locks = {k: v for k, v in self._locks.items() if v.locked()}
        lock = self._locks.setdefault(client, asyncio.Lock())
        async with lock:  # one attempt per client at a time
            wait = self.throttle.wait_s(client)
            if wait > 0:
                await self._refuse(send, wait)
                return
            status: list[int] = []

            async def watch(message: dict[str, Any]) -> None:
                if message.get("type") == "http.response.start":
                    status.append(int(message.get("status", 0)))
                await send(message)

            await self.app(scope, receive, watch)
            if status and 200 <= status[0] < 400:
                self.throttle.succeeded(client)
            elif status and status[0] in (400, 401, 403):
                self.throttle.failed(client)

    @staticmethod
    async def _refuse(send: Any, wait: float) -> None:
        seconds = max(int(math.ceil(wait)), 1)
        body = json.dumps({"detail": f"Too many failed logins from this address; try again in {seconds} s."}).encode()
        await send({"type": "http.response.start", "status": 429, "headers": [
            (b"content-type", b"application/json"), (b"retry-after", str(seconds).encode()),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
