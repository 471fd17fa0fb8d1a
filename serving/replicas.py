"""ReplicaSet: one base model served by several vLLM-protocol servers (vLLM, or `tunehub engine` on a CPU),
behind the same Engine interface as a single VLLMEngine, so the hub routes without knowing there are several.

    engine = ReplicaSet(["http://gpu-a:8000", "http://gpu-b:8000"], api_key="...")
    await engine.start()           # at least one replica must answer; the others join when they do
    async for delta in engine.generate(GenerationRequest(messages=[...])): ...

- Routing: each request goes to the replica in rotation with the fewest outstanding requests (ties: the one
  sent fewer so far) among those that have the request's adapter loaded.
- Adapters are loaded on (and unloaded from) every replica in rotation at once. Where some fail, the adapter
  is served by the others only and `AdapterInfo.failed_on` names each failing replica's URL and reason; where
  all fail, the error names every URL.
- Health: every replica's /health is asked each `health_interval_s`, and at once after a request to it fails
  to connect. A failed replica leaves the rotation; when it answers again its adapters are loaded into it
  again (it may have restarted empty) before it rejoins.
- Failover: a request whose replica fails before the first token is retried once on another replica; one
  that already streamed raises (the hub ends the stream with an error event).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from .engine import BASE_ADAPTER, AdapterInfo, Delta, GenerationRequest, ScoreRequest, TokenScores
from .errors import AdapterConflict, EngineError, EngineUnavailable, ModelNotFound
from .probe import PROBE_INTERVAL_S
from .vllm import VLLMEngine

log = logging.getLogger(__name__)

WAKE_POLL_S = 0.05  # how soon the health loop notices that a request failed on a replica


@dataclass(eq=False)
class Replica:
    """One server of the set and what the router knows of it."""

    engine: VLLMEngine
    healthy: bool = False
    problem: str | None = "not started"  # why it is out of rotation
    outstanding: int = 0  # requests in flight on it now
    requests: int = 0  # requests sent to it so far

    @property
    def url(self) -> str:
        return self.engine.url

    def loaded(self) -> set[str]:
        return {a.name for a in self.engine.adapters()}

    def status(self) -> dict:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "outstanding": self.outstanding,
            "requests": self.requests,
            "adapters": sorted(self.loaded()),
            "problem": self.problem,
        }


def _failure(exc: BaseException) -> str:
    return exc.message if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"


def _retryable(exc: EngineError) -> bool:
    """A failure of the replica (unreachable, dropped stream, 5xx), not of the request (4xx)."""
    return isinstance(exc, EngineUnavailable) or exc.status >= 500


class ReplicaSet:
    """Replicas of one base model behind one Engine. Every URL must serve the same base model."""

    def __init__(
        self,
        urls: list[str],
        *,
        api_key: str | None = None,
        model_name: str | None = None,
        model_path: str = "",
        max_lora_rank: int = 64,
        health_interval_s: float = PROBE_INTERVAL_S,
    ) -> None:
        cleaned = [u.rstrip("/") for u in urls]
        repeated = sorted({u for u in cleaned if cleaned.count(u) > 1})
        if repeated:
            raise ValueError(f"--vllm-url {repeated[0]} is given more than once; give each replica once")
        if not cleaned:
            raise ValueError("a replica set needs at least one --vllm-url")
        self.replicas = [
            Replica(
                VLLMEngine(
                    url,
                    api_key=api_key,
                    model_name=model_name,
                    model_path=model_path,
                    max_lora_rank=max_lora_rank,
                )
            )
            for url in cleaned
        ]
        self.model_name = model_name or ""
        self.model_path = model_path
        self.max_context = 0
        self.health_interval_s = health_interval_s
        # the adapters the hub serves, each loaded on at least one replica; re-loaded into a replica that
        # rejoins. Loads, unloads and re-joins hold the lock, so a replica never misses one.
        self._adapters: dict[str, AdapterInfo] = {}
        self._lock = asyncio.Lock()
        self._check_now = False  # set after a request failed on a replica: check them all at once
        self._watcher: asyncio.Task | None = None

    # ----- lifecycle -----------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return any(r.healthy for r in self.replicas)

    def _down_report(self) -> str:
        return "; ".join(f"{r.url}: {r.problem}" for r in self.replicas if not r.healthy)

    def observe_steps(self, callback) -> None:
        """The replicas' steps are their own: nothing to observe here."""

    @property
    def chat_template(self) -> str | None:
        return None  # each server applies its model's template

    @property
    def can_sleep(self) -> bool:
        return False  # servers tunehub did not start hold GPUs of their own

    async def sleep(self, level: int = 1) -> None:
        raise EngineUnavailable("replicas are servers of their own: they do not sleep for the hub's jobs")

    async def wake_up(self) -> None:
        raise EngineUnavailable("replicas are servers of their own: they do not sleep for the hub's jobs")

    async def health_problem(self) -> str | None:
        """None while at least one replica is in rotation, else each replica's problem."""
        if self.ready:
            return None
        return f"no replica of {self.model_name or 'the model'} is in rotation ({self._down_report()})"

    def replica_status(self) -> list[dict]:
        """Each replica: URL, healthy, outstanding requests, requests so far, adapters loaded, problem."""
        return [r.status() for r in self.replicas]

    async def start(self) -> None:
        results = await asyncio.gather(*(r.engine.start() for r in self.replicas), return_exceptions=True)
        for replica, result in zip(self.replicas, results, strict=True):
            if isinstance(result, BaseException):
                replica.problem = _failure(result)
                log.warning("replica %s is not in rotation yet: %s", replica.url, replica.problem)
            else:
                replica.healthy, replica.problem = True, None
        up = [r for r in self.replicas if r.healthy]
        if not up:
            await self._close_engines()
            raise EngineUnavailable(f"no replica answers ({self._down_report()})")
        names = {r.engine.model_name for r in up}
        if len(names) > 1:
            await self._close_engines()
            served = ", ".join(f"{r.url} serves {r.engine.model_name!r}" for r in up)
            raise EngineUnavailable(f"the replicas serve different base models ({served}); give one base")
        first = up[0].engine
        self.model_name, self.max_context = first.model_name, first.max_context
        self.model_path = self.model_path or first.model_path
        for replica in self.replicas:  # a replica that joins later must serve this base
            replica.engine.model_name = self.model_name
        for replica in up:  # adapters the servers already had (their --lora-modules)
            for info in replica.engine.adapters():
                self._adapters.setdefault(info.name, info)
        self._watcher = asyncio.create_task(self._watch(), name="tunehub-replica-health")
        log.info(
            "replica set: serving %s through %d of %d replicas (%s)",
            self.model_name,
            len(up),
            len(self.replicas),
            ", ".join(r.url for r in up),
        )

    async def _close_engines(self) -> None:
        await asyncio.gather(*(r.engine.close() for r in self.replicas), return_exceptions=True)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        for replica in self.replicas:
            replica.healthy, replica.problem = False, "closed"
        await self._close_engines()

    # ----- health --------------------------------------------------------------------------------------

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # a short sleep loop rather than wait_for(event): Python 3.11's wait_for can swallow the cancel of
            # close() when the event is set at that moment (seen here: close() then waited forever)
            next_check = loop.time() + self.health_interval_s
            while not self._check_now and loop.time() < next_check:
                await asyncio.sleep(WAKE_POLL_S)
            self._check_now = False
            await asyncio.gather(*(self._check(r) for r in self.replicas), return_exceptions=True)

    async def _check(self, replica: Replica) -> None:
        problem = await replica.engine.check_health()
        if problem is not None:
            self._take_out(replica, problem)
            return
        if not replica.healthy:
            await self._rejoin(replica)

    def _take_out(self, replica: Replica, problem: str) -> None:
        if replica.healthy:
            log.warning("replica %s taken out of rotation: %s", replica.url, problem)
            self._check_now = True  # check it (and the others) now rather than at the next interval
        replica.healthy, replica.problem = False, problem

    async def _rejoin(self, replica: Replica) -> None:
        """It answers /health again: read what it serves, load the set's adapters it lacks, unload those the
        set no longer serves, then put it back in rotation."""
        async with self._lock:
            try:
                await replica.engine.resync()
            except EngineError as exc:
                replica.problem = exc.message
                return
            loaded = replica.loaded()
            reloaded = []
            for name, info in self._adapters.items():
                if name in loaded:
                    continue
                try:
                    await replica.engine.load_adapter(name, info.path)
                    reloaded.append(name)
                except EngineError as exc:
                    info.failed_on[replica.url] = exc.message
                    log.error("replica %s: adapter %s not re-loaded: %s", replica.url, name, exc.message)
            for name in loaded - set(self._adapters):  # unloaded from the set while it was away
                with contextlib.suppress(EngineError):
                    await replica.engine.unload_adapter(name)
            replica.healthy, replica.problem = True, None
        log.info(
            "replica %s back in rotation%s",
            replica.url,
            f" (adapters re-loaded: {', '.join(reloaded)})" if reloaded else "",
        )

    # ----- routing -------------------------------------------------------------------------------------

    def _pick(self, adapters: set[str], exclude: list[Replica]) -> Replica:
        """The least busy replica in rotation that has every adapter in `adapters`."""
        for name in adapters:
            if name not in self._adapters:
                raise ModelNotFound(f"the model {name!r} does not exist", param="model")
        healthy = [r for r in self.replicas if r.healthy and r not in exclude]
        if not healthy:
            others = " other" if exclude else ""
            raise EngineUnavailable(f"no{others} replica is in rotation ({self._down_report()})")
        having = [r for r in healthy if adapters <= r.loaded()]
        if not having:
            raise EngineUnavailable(
                f"no{' other' if exclude else ''} replica in rotation has {', '.join(sorted(adapters))} "
                f"loaded (in rotation: {', '.join(r.url for r in healthy)})"
            )
        return min(having, key=lambda r: (r.outstanding, r.requests))

    @staticmethod
    def _adapter_names(*names: str | None) -> set[str]:
        return {n for n in names if n and n != BASE_ADAPTER}

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream from the least busy replica; retried once on another if it fails before the first delta."""
        tried: list[Replica] = []
        failure: EngineError | None = None
        while True:
            try:
                replica = self._pick(self._adapter_names(request.adapter), tried)
            except EngineUnavailable as exc:
                if failure is None:
                    raise
                raise EngineUnavailable(f"{failure.message}; not retried: {exc.message}") from failure
            tried.append(replica)
            replica.outstanding += 1
            replica.requests += 1
            stream = replica.engine.generate(request)
            streamed = False
            try:
                async for delta in stream:
                    streamed = True
                    yield delta
                return
            except EngineError as exc:
                if not _retryable(exc):
                    raise
                self._take_out(replica, exc.message)
                if streamed or failure is not None:
                    raise
                failure = exc
                log.warning(
                    "replica %s failed before the first token (%s); retrying", replica.url, exc.message
                )
            finally:
                replica.outstanding -= 1
                await stream.aclose()

    async def score(self, requests: list[ScoreRequest]) -> list[TokenScores]:
        """Scored on one replica that has every adapter the requests name; retried once on another."""
        names = self._adapter_names(*(r.adapter for r in requests))
        replica = self._pick(names, [])
        try:
            return await self._score_on(replica, requests)
        except EngineError as exc:
            if not _retryable(exc):
                raise
            self._take_out(replica, exc.message)
            return await self._score_on(self._pick(names, [replica]), requests)

    @staticmethod
    async def _score_on(replica: Replica, requests: list[ScoreRequest]) -> list[TokenScores]:
        replica.outstanding += 1
        replica.requests += 1
        try:
            return await replica.engine.score(requests)
        finally:
            replica.outstanding -= 1

    # ----- adapters ------------------------------------------------------------------------------------

    def adapters(self) -> list[AdapterInfo]:
        return list(self._adapters.values())

    async def load_adapter(self, name: str, path: Path) -> AdapterInfo:
        """Load on every replica in rotation (replicas out of rotation get it when they rejoin). Served where it
        loaded; `failed_on` of the answer names the replicas where it did not, and why."""
        async with self._lock:
            if name in self._adapters:
                raise AdapterConflict(
                    f"an adapter named {name!r} is already loaded; a retrained adapter needs a new name "
                    "(name@v2): vLLM could answer from cache blocks of the old weights",
                    param="lora_name",
                )
            # checked once here, so a bad adapter gets one clear error rather than one per replica
            await asyncio.to_thread(self.replicas[0].engine.check_adapter, name, Path(path))
            targets = [r for r in self.replicas if r.healthy]
            if not targets:
                raise EngineUnavailable(f"no replica is in rotation to load {name!r} ({self._down_report()})")
            results = await asyncio.gather(
                *(r.engine.load_adapter(name, Path(path)) for r in targets), return_exceptions=True
            )
            loaded = [x for x in results if isinstance(x, AdapterInfo)]
            failed = {r.url: x for r, x in zip(targets, results, strict=True) if isinstance(x, BaseException)}
            for url, exc in failed.items():
                if not isinstance(exc, EngineError):  # a bug, not a replica's answer: do not hide it
                    log.error("loading adapter %s on %s failed", name, url, exc_info=exc)
            reasons = {url: _failure(exc) for url, exc in failed.items()}
            if not loaded:
                first = next(iter(failed.values()))
                detail = "; ".join(f"{url}: {reason}" for url, reason in reasons.items())
                message = f"adapter {name!r} loaded on no replica ({detail})"
                if not isinstance(first, EngineError):
                    raise EngineError(message, param="lora_name") from first
                error = type(first)(message, param=first.param)
                error.status = first.status
                raise error from first
            info = replace(loaded[0], failed_on=reasons)
            self._adapters[name] = info
            if reasons:
                log.warning(
                    "adapter %s loaded on %d of %d replicas in rotation; not on %s",
                    name,
                    len(loaded),
                    len(targets),
                    "; ".join(f"{url} ({reason})" for url, reason in reasons.items()),
                )
            return info

    async def unload_adapter(self, name: str) -> None:
        """Unload from every replica in rotation that has it (one out of rotation drops it when it rejoins)."""
        async with self._lock:
            if name not in self._adapters:
                raise ModelNotFound(f"no adapter named {name!r} is loaded", param="lora_name")
            del self._adapters[name]  # no new request goes to it from here on
            targets = [r for r in self.replicas if r.healthy and name in r.loaded()]
            results = await asyncio.gather(
                *(r.engine.unload_adapter(name) for r in targets), return_exceptions=True
            )
            failed = {
                r.url: _failure(x)
                for r, x in zip(targets, results, strict=True)
                if isinstance(x, BaseException) and not isinstance(x, ModelNotFound)
            }
            if failed:
                detail = "; ".join(f"{url}: {reason}" for url, reason in failed.items())
                error = EngineError(
                    f"adapter {name!r} is no longer served, but these replicas did not unload it ({detail})",
                    param="lora_name",
                )
                error.status = 502
                raise error
