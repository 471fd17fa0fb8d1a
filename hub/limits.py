"""Limits that keep one caller or one burst from taking the hub down: a token bucket per API key and per
rater (429 with Retry-After), a cap on running and queued generations (503 with Retry-After when full,
never an unbounded wait), and a deadline per generation (the engine drops the row when it passes).

The gate counts each requested choice (`n`) as one generation, since each is a row in the engine's batch.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from starlette.exceptions import HTTPException

from serving.errors import EngineError

from .errors import ApiError, error_response


class ServerBusy(EngineError):
    """Too many generations running and waiting; the client should retry after `retry_after` seconds."""

    status = 503
    code = "server_busy"
    error_type = "server_error"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class GenerationTimeout(EngineError):
    status = 504
    code = "generation_timeout"
    error_type = "server_error"


# ----- rate limits ---------------------------------------------------------------------------------------


@dataclass
class TokenBucket:
    """`capacity` requests at once, refilled at `rate` per second."""

    rate: float
    capacity: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take one token; returns 0 when allowed, else the seconds until one is available."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per caller. `per_minute` maps a role ("api" for the shared key, "rater") to its
    limit; a role without one (admin) is not limited. Thread-safe: plain `def` routes run in threads."""

    def __init__(
        self,
        per_minute: dict[str, float],
        burst: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = {role: rpm for role, rpm in per_minute.items() if rpm and rpm > 0}
        self.burst = max(1, burst)
        self._clock = clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.per_minute)

    def check(self, role: str, name: str) -> None:
        """Raise a 429 ApiError when `name` (of `role`) is over its limit."""
        rpm = self.per_minute.get(role)
        if rpm is None:
            return
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get((role, name))
            if bucket is None:
                bucket = self._buckets[(role, name)] = TokenBucket(rpm / 60, self.burst, self.burst, now)
            wait = bucket.take(now)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            who = "the shared API key" if role == "api" else f"rater {name!r}"
            raise ApiError(
                429,
                f"rate limit reached for {who}: {rpm:g} requests per minute (bursts of {self.burst}); "
                f"retry in {retry} s",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(retry)},
            )


# ----- running and queued generations --------------------------------------------------------------------


class GenerationGate:
    """At most `max_running` generations in the engine and `max_queued` waiting for room, first come first
    served; beyond that a request is refused at once with ServerBusy. Used on the event loop only."""

    def __init__(self, max_running: int, max_queued: int) -> None:
        self.max_running, self.max_queued = max_running, max_queued
        self.running = 0
        self._waiting: deque[tuple[int, asyncio.Future]] = deque()

    @property
    def queued(self) -> int:
        return sum(n for n, _ in self._waiting)

    def _fits(self, n: int) -> bool:
        # a request asking for more than max_running choices still runs, alone
        return self.running + n <= self.max_running or self.running == 0

    async def acquire(self, n: int, timeout_s: float | None) -> None:
        if not self._waiting and self._fits(n):
            self.running += n
            return
        queued = self.queued
        if queued + n > self.max_queued:
            raise ServerBusy(
                f"the server is busy: {self.running} generations running and {queued} waiting "
                f"(limits {self.max_running} and {self.max_queued}); retry shortly",
                retry_after=1,
            )
        future = asyncio.get_running_loop().create_future()
        entry = (n, future)
        self._waiting.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except BaseException as exc:  # timed out, or the client went away while waiting
            if entry in self._waiting:
                self._waiting.remove(entry)
                self._wake()  # it may have held back smaller requests behind it
            elif future.done():  # admitted just as it gave up: hand the room on
                self.release(n)
            future.cancel()
            if isinstance(exc, asyncio.TimeoutError):
                raise ServerBusy(
                    f"the server is busy: no room for this request within {timeout_s:g} s "
                    f"({self.running} generations running, {self.queued} more waiting); retry later",
                    retry_after=max(1, math.ceil(timeout_s or 1)),
                ) from None
            raise
        # admitted by release(), which counted it in `running`

    def release(self, n: int) -> None:
        self.running -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiting and self._fits(self._waiting[0][0]):
            wanted, future = self._waiting.popleft()
            self.running += wanted
            future.set_result(None)


# ----- request bodies ------------------------------------------------------------------------------------


class BodyTooLarge(HTTPException):
    """Raised while a route reads a body past the limit; FastAPI re-raises HTTPExceptions from body
    parsing as they are, so the app's handler renders it in the error envelope."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, body_too_large_message(limit))


def body_too_large_message(limit: int) -> str:
    return (
        f"the request body is larger than this server's limit of {limit} bytes "
        "(tunehub serve --max-body-bytes)"
    )


class BodyLimit:
    """413 for API request bodies over `max_bytes`: at once when Content-Length says so, else as the bytes
    arrive. Plain ASGI, API paths only (the UI's uploads are Gradio's). FastAPI 0.165 has its own
    `max_body_size`, but it answers a too-large Content-Length with a plain-text 413, not our envelope."""

    def __init__(self, app, max_bytes: int, prefixes: tuple[str, ...] = ("/v1/",)) -> None:
        self.app, self.max_bytes, self.prefixes = app, max_bytes, prefixes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(413, body_too_large_message(self.max_bytes), code="request_too_large")
            return await response(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)
