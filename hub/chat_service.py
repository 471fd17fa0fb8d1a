"""The service layer both the API routes and the UI call: generate (n choices), list models, manage adapters."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from feedback.connections import new_id
from serving.engine import AdapterInfo, Delta, Engine, GenerationRequest
from serving.model_set import ModelSet

from .limits import GenerationGate, GenerationTimeout
from .metrics import Metrics

_timeout_at = getattr(asyncio, "timeout_at", None)  # Python 3.11+


@dataclass
class Choice:
    """One finished choice of a non-streamed request."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class ModelEntry:
    id: str
    created: int
    parent: str | None = None  # the base model, for adapters
    root: str | None = None
    max_model_len: int | None = None


@dataclass
class GenerationRecord:
    """What was served, handed to the recorder (the feedback store) when a choice ends."""

    response_id: str
    choice: int
    model: str  # the base model's or the adapter's served name
    request: GenerationRequest
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    ttft_s: float | None
    source: str
    rater: str | None = None
    conversation_id: str | None = None  # None: the generation starts a conversation of its own


Recorder = Callable[[GenerationRecord], Awaitable[None]]

STOPPED_CLAIM_S = 10.0  # a stopped answer nobody claims is stored as taken after this
DEFAULT_MODEL = "tunehub-default"  # the model name that means "the promoted adapter, else the base"


class ChatService:
    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        recorder: Recorder | None = None,
        *,
        gate: GenerationGate | None = None,
        timeout_s: float | None = None,
        default_adapter: Callable[[], str | None] | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.recorder = recorder
        self.gate = gate  # caps running and queued generations (hub/limits.py)
        self.timeout_s = timeout_s  # a generation, queueing included, is cancelled after this
        self.started = int(time.time())
        self._adapter_locks: dict[str, asyncio.Lock] = {}
        # the served name of the promoted adapter (None: the base), for requests naming DEFAULT_MODEL;
        # hub/promotion_service.py's promoted_route in the hub. None (`tunehub engine`, no store):
        # DEFAULT_MODEL is neither listed nor routed, as vLLM would not know it
        self.default_adapter = default_adapter
        # answers stopped by their consumer (keep_partial), waiting for it to say what it showed
        self._stopped: dict[str, _StoppedAnswer] = {}
        self._unclaimed: set[asyncio.Task] = set()

    # ----- models --------------------------------------------------------------------------------------

    def base_engines(self) -> list[Engine]:
        """The engines of the base models served, the primary first (several: `tunehub serve --model A
        --model B`, serving/model_set.py)."""
        return self.engine.bases() if isinstance(self.engine, ModelSet) else [self.engine]

    def models(self) -> list[ModelEntry]:
        """Each base model, `tunehub-default` after the primary base (when a store routes it), then every
        adapter and whole model with the base it answers on as its parent."""
        bases = [
            ModelEntry(
                id=engine.model_name,
                created=self.started,
                root=engine.model_path or None,
                max_model_len=engine.max_context,
            )
            for engine in self.base_engines()
        ]
        if self.default_adapter is not None:
            engine = self.engine
            promoted = self.default_adapter()
            bases.insert(
                1,
                ModelEntry(
                    id=DEFAULT_MODEL,
                    created=self.started,
                    parent=engine.model_name,  # an alias of the promoted adapter or of the base itself
                    root=promoted or engine.model_path or None,
                    max_model_len=engine.max_context,
                ),
            )
        return [*bases, *self._adapter_entries()]

    def _adapter_entries(self) -> list[ModelEntry]:
        engine = self.engine
        return [
            ModelEntry(
                id=a.name,
                created=int(a.loaded_at),
                parent=a.parent or engine.model_name,
                root=str(a.path),
                max_model_len=engine.max_context,
            )
            for a in engine.adapters()
        ]

    def adapter_for(self, model: str) -> str | None:
        """The engine adapter a request's `model` names (None: the base); DEFAULT_MODEL names the promoted
        adapter, or the base when none is promoted. Unknown names fail in the engine."""
        if model == DEFAULT_MODEL and self.default_adapter is not None:
            return self.default_adapter()
        return None if model == self.engine.model_name else model

    # ----- generation ----------------------------------------------------------------------------------

    async def stream(
        self,
        request: GenerationRequest,
        n: int = 1,
        *,
        response_id: str = "",
        source: str = "api",
        rater: str | None = None,
        conversation_id: str | None = None,
        keep_partial: bool = False,
    ) -> AsyncIterator[tuple[int, Delta]]:
        """Yield (choice index, delta) for n choices. Errors about the request raise before the first yield.

        With a gate, the n choices wait for room first (503 when the queue is full); with a timeout, the
        generation is cancelled (the engine drops its rows) and GenerationTimeout raised once it passes.
        `keep_partial`: a choice the consumer stops early (the Chat tab's Stop) is stored with the text it
        got so far and finish_reason "abort", so it can be rated as it was shown."""
        started = time.perf_counter()
        # on the loop's clock (uvloop's is not time.monotonic's)
        deadline = None if self.timeout_s is None else asyncio.get_running_loop().time() + self.timeout_s
        if self.gate is not None:
            await self.gate.acquire(n, self.timeout_s)
        inner = self._stream(
            request, n, started, deadline, response_id, source, rater, conversation_id, keep_partial
        )
        try:
            async for item in inner:
                yield item
        finally:
            # closed here, not when collected: a reader that stops frees the engine's rows at once
            await inner.aclose()
            if self.gate is not None:
                self.gate.release(n)

    async def _stream(
        self,
        request: GenerationRequest,
        n: int,
        started: float,
        deadline: float | None,
        response_id: str,
        source: str,
        rater: str | None,
        conversation_id: str | None,
        keep_partial: bool = False,
    ) -> AsyncIterator[tuple[int, Delta]]:
        if conversation_id is None and n > 1:
            conversation_id = new_id("conv")  # the n answers to one prompt belong to one conversation
        requests = [self._choice_request(request, i) for i in range(n)]
        streams = [self.engine.generate(r) for r in requests]
        try:
            firsts = await self._before(deadline, asyncio.gather(*(s.__anext__() for s in streams)), request)
        except BaseException:
            for s in streams:
                await s.aclose()
            raise
        self.metrics.ttft.labels(self._label(request)).observe(time.perf_counter() - started)
        trackers = [_ChoiceTracker(i, requests[i], started) for i in range(n)]
        deltas = _single(streams[0], firsts[0]) if n == 1 else _merged(streams, firsts)
        try:
            while True:
                try:
                    index, delta = await self._before(deadline, deltas.__anext__(), request)
                except StopAsyncIteration:
                    break
                record = self._track(trackers[index], delta, response_id, source, rater, conversation_id)
                if record is not None and self.recorder is not None:
                    # stored before the client sees the end, so it can vote at once
                    await self.recorder(record)
                    trackers[index].stored = True
                yield index, delta
                trackers[index].taken = len(trackers[index].text)  # the consumer came back for more
        finally:
            await deltas.aclose()
            for s in streams:
                await s.aclose()
            if keep_partial and self.recorder is not None:
                for tracker in trackers:
                    if not tracker.stored and tracker.text:
                        pieces, taken = list(tracker.text), tracker.taken
                        stopped = Delta(text="", finish_reason="abort", completion_tokens=taken)
                        record = self._track(tracker, stopped, response_id, source, rater, conversation_id)
                        self._hold_stopped(_StoppedAnswer(record, pieces, taken))

    def _hold_stopped(self, answer: _StoppedAnswer) -> None:
        """Keep a stopped answer until its consumer says what it showed (`store_stopped`); store it as taken
        after STOPPED_CLAIM_S if nobody does (a closed page)."""
        key = answer.record.response_id
        self._stopped[key] = answer
        loop = asyncio.get_running_loop()
        loop.call_later(STOPPED_CLAIM_S, self._store_unclaimed, key)

    def _store_unclaimed(self, response_id: str) -> None:
        # the loop keeps only weak references to tasks: hold this one until it has written
        task = asyncio.get_running_loop().create_task(self.store_stopped(response_id))
        self._unclaimed.add(task)
        task.add_done_callback(self._unclaimed.discard)

    async def store_stopped(self, response_id: str, shown: str | None = None) -> bool:
        """Store the stopped answer `response_id` with the text the consumer showed (`shown`: a prefix of what
        it was handed, delta by delta; None or no match: what it took) and finish_reason "abort". False when
        there is none (already stored, or it finished before it was stopped). One choice (n=1) per id."""
        answer = self._stopped.pop(response_id, None)
        if answer is None:
            return False
        taken = answer.taken
        if shown is not None:  # the page drops an update in flight when it stops listening
            prefixes = itertools.accumulate(answer.pieces, initial="")
            taken = next((k for k, text in enumerate(prefixes) if text == shown), taken)
        record = replace(answer.record, text="".join(answer.pieces[:taken]), completion_tokens=taken)
        await asyncio.shield(self.recorder(record))  # the consumer may be cancelled: the write still happens
        return True

    async def _before(self, deadline: float | None, step: Awaitable, request: GenerationRequest):
        """Await `step`, or cancel it and raise GenerationTimeout when the deadline passes first."""
        if deadline is None:
            return await step
        try:
            if _timeout_at is not None:  # a timer handle per step; wait_for would add a task per token
                async with _timeout_at(deadline):
                    return await step
            return await asyncio.wait_for(step, max(0.0, deadline - asyncio.get_running_loop().time()))
        except asyncio.TimeoutError:
            raise GenerationTimeout(
                f"the generation took longer than this server's limit of {self.timeout_s:g} s and was "
                f"cancelled (max_tokens {request.sampling.max_tokens}); ask for fewer tokens or retry "
                "when the server is less busy (tunehub serve --generation-timeout)"
            ) from None

    async def complete(
        self,
        request: GenerationRequest,
        n: int = 1,
        *,
        response_id: str = "",
        source: str = "api",
        rater: str | None = None,
        conversation_id: str | None = None,
    ) -> list[Choice]:
        choices = [Choice(index=i) for i in range(n)]
        stream = self.stream(
            request, n, response_id=response_id, source=source, rater=rater, conversation_id=conversation_id
        )
        async for index, delta in stream:
            choice = choices[index]
            choice.text += delta.text
            choice.prompt_tokens = delta.prompt_tokens
            choice.completion_tokens = delta.completion_tokens
            if delta.finish_reason:
                choice.finish_reason = delta.finish_reason
        return choices

    def _choice_request(self, request: GenerationRequest, index: int) -> GenerationRequest:
        seed = request.sampling.seed
        if index == 0 or seed is None:
            return request
        return replace(request, sampling=replace(request.sampling, seed=seed + index))

    def _label(self, request: GenerationRequest) -> str:
        return request.adapter or self.engine.model_name

    def _track(
        self,
        tracker: _ChoiceTracker,
        delta: Delta,
        response_id: str,
        source: str,
        rater: str | None,
        conversation_id: str | None,
    ) -> GenerationRecord | None:
        tracker.text.append(delta.text)
        tracker.prompt_tokens = delta.prompt_tokens or tracker.prompt_tokens
        if tracker.ttft is None:
            tracker.ttft = time.perf_counter() - tracker.started
        if delta.finish_reason is None:
            return None
        label = self._label(tracker.request)
        latency = time.perf_counter() - tracker.started
        self.metrics.latency.labels(label).observe(latency)
        self.metrics.prompt_tokens.labels(label).inc(tracker.prompt_tokens)
        self.metrics.completion_tokens.labels(label).inc(delta.completion_tokens)
        return GenerationRecord(
            response_id=response_id,
            choice=tracker.index,
            model=label,
            request=tracker.request,
            text="".join(tracker.text),
            finish_reason=delta.finish_reason,
            prompt_tokens=tracker.prompt_tokens,
            completion_tokens=delta.completion_tokens,
            latency_s=latency,
            ttft_s=tracker.ttft,
            source=source,
            rater=rater,
            conversation_id=conversation_id,
        )

    # ----- adapters ------------------------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        return self._adapter_locks.setdefault(name, asyncio.Lock())

    async def load_adapter(self, name: str, path: Path) -> AdapterInfo:
        async with self._lock(name):  # load/unload of one name are serialised
            return await self.engine.load_adapter(name, Path(path))

    async def unload_adapter(self, name: str) -> None:
        async with self._lock(name):
            await self.engine.unload_adapter(name)


@dataclass
class _StoppedAnswer:
    record: GenerationRecord
    pieces: list[str]  # the text handed to the consumer, delta by delta
    taken: int  # deltas it came back from (the last one handed may never have reached its reader)


@dataclass
class _ChoiceTracker:
    index: int
    request: GenerationRequest
    started: float
    ttft: float | None = None
    text: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    stored: bool = False
    taken: int = 0  # deltas the consumer has come back from (for keep_partial)


async def _single(stream: AsyncIterator[Delta], first: Delta) -> AsyncIterator[tuple[int, Delta]]:
    yield 0, first
    if first.finish_reason is not None:
        return
    async for delta in stream:
        yield 0, delta


async def _merged(
    streams: list[AsyncIterator[Delta]], firsts: list[Delta]
) -> AsyncIterator[tuple[int, Delta]]:
    """Interleave n streams as their deltas arrive."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[Delta]) -> None:
        try:
            async for delta in stream:
                await queue.put((index, delta))
        except Exception as exc:
            await queue.put((index, exc))
        finally:
            await queue.put((index, None))

    open_streams = 0
    tasks = []
    for index, first in enumerate(firsts):
        yield index, first
        if first.finish_reason is None:
            open_streams += 1
            tasks.append(asyncio.create_task(pump(index, streams[index])))
    try:
        while open_streams:
            index, item = await queue.get()
            if item is None:
                open_streams -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
