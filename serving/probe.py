"""A cached health probe of an engine in another process: however many callers ask (the hub's /health under a
load balancer's polling), at most one request goes out per interval, and callers arriving while one is in
flight share its answer. A probe that fails names the engine and why, for /health's 503 body.

    probe = HealthProbe(check, interval_s=2.0)   # check: async () -> None when healthy, else the reason
    problem = await probe.problem()
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

PROBE_INTERVAL_S = 2.0  # a dead engine shows in /health within this, and a revived one too
PROBE_TIMEOUT_S = (
    2.0  # an engine that accepts connections but does not answer (hung, stopped) fails after this
)


@dataclass(frozen=True)
class ProbeResult:
    problem: str | None  # None: the engine answered its health check
    checked_at: float  # on the probe's clock


class HealthProbe:
    def __init__(
        self,
        check: Callable[[], Awaitable[str | None]],
        *,
        interval_s: float = PROBE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self.interval_s = interval_s
        self._clock = clock
        self._last: ProbeResult | None = None
        self._lock: asyncio.Lock | None = None  # made on first use, on the loop that uses it

    def _fresh(self) -> ProbeResult | None:
        last = self._last
        if last is not None and self._clock() - last.checked_at < self.interval_s:
            return last
        return None

    async def result(self) -> ProbeResult:
        cached = self._fresh()
        if cached is not None:
            return cached
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            cached = self._fresh()  # another caller probed while this one waited
            if cached is not None:
                return cached
            problem = await self._check()
            self._last = ProbeResult(problem, self._clock())
            return self._last

    async def problem(self) -> str | None:
        return (await self.result()).problem
