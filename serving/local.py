"""LocalEngine: transformers + peft in process, with continuous batching and a LoRA adapter per row.

One worker thread owns the model. Requests from the event loop go into its inbox; between decode steps it
admits waiting requests (prefilled together, then merged into the running batch), applies adapter loads and
unloads, and runs one forward step for every running row with `adapter_names=[...]`, so rows on different
adapters (or on the base, "__base__") share a batch. Each row samples with its own temperature, top-p,
top-k, seed and stop strings, and streams its text back through its own asyncio queue. Nothing here runs on
the event loop except queue hand-offs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import kvbatch
from .adapters import (
    AdapterSpec,
    check_adapter_for_model,
    check_adapter_name,
    check_weight_shapes,
    inspect_adapter,
)
from .cpu_share import CpuShare
from .engine import BASE_ADAPTER, AdapterInfo, Delta, GenerationRequest, ScoreRequest, TokenScores
from .errors import (
    AdapterConflict,
    ContextTooLong,
    EngineError,
    EngineUnavailable,
    InvalidRequest,
    ModelNotFound,
)
from .lora_model import MultiLoraModel
from .sampling import make_generator, sample_next
from .scoring import score_sequences
from .textstream import TextStream

log = logging.getLogger(__name__)


@dataclass
class _Adapter:
    info: AdapterInfo
    key: str  # the name inside the PeftModel (served names may hold '.', which module dicts refuse)
    users: int = 0  # rows queued or running on it
    retiring: bool = False


@dataclass
class _Job:
    prompt_ids: list[int]
    request: GenerationRequest
    max_new_tokens: int
    adapter: _Adapter | None
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    cancelled: bool = False
    generated: int = 0
    pending_token: int = -1
    stream: TextStream | None = None
    generator: torch.Generator | None = None
    unsent: Delta | None = None  # its delta in the outbox, which later tokens of the row join


@dataclass
class _Command:
    action: Callable[[], object]
    done: Future = field(default_factory=Future)


_STOP = object()


def _deliver(items: list[tuple[_Job, Delta | Exception]]) -> None:
    """On the event loop: put each delta into its row's queue."""
    for job, item in items:
        job.out.put_nowait(item)


class LocalEngine:
    """The embedded engine. Build it with `serving.loader.load_local_engine(...)`."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        model_name: str,
        model_path: str = "",
        max_batch_size: int = 32,
        max_lora_rank: int = 64,
        batch_wait_s: float = 0.004,
        batch_max_wait_s: float = 0.05,
        on_step: Callable[[int], None] | None = None,
        turn_end: str | None = None,
        threads: int | None = None,
        cpu_share: CpuShare | None = None,
        stream_interval_s: float = 0.01,
    ) -> None:
        self.model_name = model_name
        self.model_path = model_path
        self.tokenizer = tokenizer
        self.max_context = int(getattr(model.config, "max_position_embeddings", 2048))
        self.max_batch_size = max_batch_size
        self.max_lora_rank = max_lora_rank
        self.batch_wait_s = batch_wait_s
        self.batch_max_wait_s = batch_max_wait_s
        self._on_step = on_step
        self.threads = threads  # the worker's CPU threads, fixed; None: cpu_share's count at each step
        self.cpu_share = cpu_share  # None with no threads either: torch's count
        self._threads_now = threads
        # a row's tokens within this long of its last hand-over go out together (first and last at once)
        self.stream_interval_s = stream_interval_s
        self._model = MultiLoraModel(model)
        self._device = self._model.device
        eos = tokenizer.eos_token_id
        config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos_ids = {eos} if eos is not None else set()
        eos_ids |= set(
            config_eos if isinstance(config_eos, list) else [config_eos] if config_eos is not None else []
        )
        # a --chat-template's turn end: one token of the model's stops like EOS, anything else as a stop string
        self._turn_stops: list[str] = []
        if turn_end and turn_end in tokenizer.get_vocab():
            eos_ids.add(tokenizer.convert_tokens_to_ids(turn_end))
        elif turn_end:
            self._turn_stops.append(turn_end)
        self._eos_ids = eos_ids
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
        self._adapters: dict[str, _Adapter] = {}
        self._retiring: list[_Adapter] = []  # unloaded, weights kept until their last row finishes
        self._lock = threading.Lock()  # guards _adapters and the users counts
        self._keys = (f"adapter{i}" for i in itertools.count())
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: deque[_Job] = deque()
        self._rows: list[_Job] = []
        self._batch: kvbatch.KVBatch | None = None
        self._outbox: list[tuple[_Job, Delta | Exception]] = []  # emitted, not yet handed over
        self._outbox_urgent = False  # it holds a first token, a last one or an error: hand over now
        self._handed_at = 0.0
        self._thread: threading.Thread | None = None
        self._healthy = True

    # ----- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tunehub-local-engine", daemon=True)
            self._thread.start()

    async def close(self) -> None:
        if self._thread is not None:
            self._inbox.put(_STOP)
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None

    def observe_steps(self, callback: Callable[[int], None]) -> None:
        """Call `callback(rows)` before every decode step (the hub feeds its batch-size histogram)."""
        self._on_step = callback

    def weight_bytes(self) -> int:
        """Memory held by the base model's parameters and buffers (quantized weights count as stored)."""
        return self._model.base.get_memory_footprint()

    @property
    def ready(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._healthy

    async def health_problem(self) -> str | None:
        return None if self.ready else "the engine is not ready"

    def replica_status(self) -> list[dict]:
        return []

    @property
    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or None

    @property
    def can_sleep(self) -> bool:
        return False  # its weights stay where they are: there is no GPU memory to hand to a job on CPU

    async def sleep(self, level: int = 1) -> None:
        raise EngineUnavailable("the local engine does not sleep")

    async def wake_up(self) -> None:
        raise EngineUnavailable("the local engine does not sleep")

    # ----- requests -------------------------------------------------------------------------------------

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """Tokenise a request the way the model will see it (chat template for messages)."""
        if request.messages is not None:
            try:
                ids = self.tokenizer.apply_chat_template(
                    request.messages, add_generation_prompt=True, tokenize=True, return_dict=False
                )
            except Exception as exc:  # jinja errors, unknown roles, ...
                raise InvalidRequest(
                    f"the chat template could not format these messages: {exc}", param="messages"
                ) from exc
            if hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return list(ids)
        return list(self.tokenizer(request.prompt or "", add_special_tokens=False)["input_ids"])

    def _resolve_adapter(self, name: str | None) -> _Adapter | None:
        if name is None or name == self.model_name:
            return None
        adapter = self._adapters.get(name)
        if adapter is None or adapter.retiring:
            raise ModelNotFound(f"the model {name!r} does not exist", param="model")
        return adapter

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream the completion. Errors about the request are raised before the first delta."""
        if not self.ready:
            raise EngineUnavailable("the local engine is not running")
        prompt_ids = self.prompt_ids(request)
        if not prompt_ids:
            raise InvalidRequest("the prompt is empty", param="prompt")
        room = self.max_context - len(prompt_ids)
        wanted = request.sampling.max_tokens
        if room <= 0 or (wanted is not None and wanted > room):
            raise ContextTooLong(
                f"this model's maximum context length is {self.max_context} tokens; the prompt has "
                f"{len(prompt_ids)} tokens" + (f" and max_tokens asks for {wanted} more" if wanted else ""),
                param="max_tokens" if room > 0 else "messages",
            )
        with self._lock:
            adapter = self._resolve_adapter(request.adapter)
            if adapter is not None:
                adapter.users += 1
        job = _Job(
            prompt_ids=prompt_ids,
            request=request,
            max_new_tokens=wanted if wanted is not None else room,
            adapter=adapter,
            loop=asyncio.get_running_loop(),
            out=asyncio.Queue(),
        )
        self._inbox.put(job)
        finished = False
        try:
            while True:
                item = await job.out.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if item.finish_reason is not None:
                    finished = True
                    return
        finally:
            if not finished:
                job.cancelled = True  # the client went away: the worker drops the row at its next step

    async def score(self, requests: list[ScoreRequest]) -> list[TokenScores]:
        """Each sequence's token log-probabilities under its adapter (or the base), batched in the worker."""
        if not self.ready:
            raise EngineUnavailable("the local engine is not running")
        sequences, prompt_lengths = [], []
        for request in requests:
            prompt = self.prompt_ids(GenerationRequest(messages=request.messages, prompt=request.prompt))
            sequence = prompt + list(request.continuation_ids)
            if request.continuation:
                sequence += self.tokenizer(request.continuation, add_special_tokens=False)["input_ids"]
            if len(sequence) > self.max_context:
                raise ContextTooLong(
                    f"this model's maximum context length is {self.max_context} tokens; a sequence to score "
                    f"has {len(sequence)}",
                    param="prompt",
                )
            sequences.append(sequence)
            prompt_lengths.append(len(prompt))
        with self._lock:
            adapters = [self._resolve_adapter(r.adapter) for r in requests]
            for adapter in adapters:
                if adapter is not None:
                    adapter.users += 1  # not unloaded while scored
        keys = [a.key if a is not None else BASE_ADAPTER for a in adapters]
        vocab = int(getattr(self._model.base.config, "vocab_size", 0) or len(self.tokenizer))
        try:
            scored = await self._call_in_worker(
                lambda: score_sequences(self._model, sequences, keys, self._pad_id, self._device, vocab)
            )
        finally:
            with self._lock:
                for adapter in adapters:
                    if adapter is not None:
                        adapter.users -= 1
            self._inbox.put(_Command(self._collect_retired))
        return [
            TokenScores(sequence, logprobs, length)
            for sequence, logprobs, length in zip(sequences, scored, prompt_lengths, strict=True)
        ]

    # ----- adapters -------------------------------------------------------------------------------------

    def adapters(self) -> list[AdapterInfo]:
        with self._lock:
            return [a.info for a in self._adapters.values() if not a.retiring]

    def _served_names(self) -> set[str]:
        names = {self.model_name}
        if self.model_path:
            names |= {self.model_path, str(Path(self.model_path).resolve())}
        base_name = getattr(self._model.base.config, "_name_or_path", "")
        if base_name:
            names.add(base_name)
        return names

    def check_adapter(self, name: str, path: Path) -> AdapterSpec:
        """Every check short of loading; raises InvalidAdapter naming what is wrong."""
        check_adapter_name(name, reserved={self.model_name})
        spec = inspect_adapter(Path(path))
        check_adapter_for_model(
            spec,
            module_names=self._model.module_names,
            served_names=self._served_names(),
            max_rank=self.max_lora_rank,
        )
        check_weight_shapes(spec, self._model.module_shapes)
        return spec

    async def load_adapter(self, name: str, path: Path) -> AdapterInfo:
        spec = await asyncio.to_thread(self.check_adapter, name, Path(path))
        with self._lock:
            if name in self._adapters:
                raise AdapterConflict(
                    f"an adapter named {name!r} is already loaded; unload it first", param="lora_name"
                )
            key = next(self._keys)
        info = AdapterInfo(
            name=name,
            path=spec.path,
            base_model=spec.base_model or self.model_name,
            rank=spec.rank,
            target_modules=spec.target_modules,
            loaded_at=time.time(),
        )
        await self._call_in_worker(lambda: self._model.load(key, spec.path))
        with self._lock:
            if name in self._adapters:  # a concurrent load of the same name won the race
                self._inbox.put(_Command(lambda: self._model.delete(key)))
                raise AdapterConflict(
                    f"an adapter named {name!r} is already loaded; unload it first", param="lora_name"
                )
            self._adapters[name] = _Adapter(info=info, key=key)
        return info

    async def unload_adapter(self, name: str) -> None:
        """Stop routing to the adapter now; its weights go once the rows still using it have finished."""
        with self._lock:
            adapter = self._adapters.get(name)
            if adapter is None or adapter.retiring:
                raise ModelNotFound(f"no adapter named {name!r} is loaded", param="lora_name")
            adapter.retiring = True
            # the name is free at once (unload then load the same name updates an adapter in place)
            self._retiring.append(self._adapters.pop(name))
        self._inbox.put(_Command(self._collect_retired))

    async def _call_in_worker(self, action: Callable[[], object]) -> object:
        if not self.ready:
            raise EngineUnavailable("the local engine is not running")
        command = _Command(action)
        self._inbox.put(command)
        return await asyncio.wrap_future(command.done)

    # ----- worker thread: everything below touches the model --------------------------------------------

    def _collect_retired(self) -> None:
        with self._lock:
            keys = [a.key for a in self._retiring if a.users == 0]
            self._retiring = [a for a in self._retiring if a.users > 0]
        for key in keys:
            self._model.delete(key)

    def _release(self, job: _Job) -> None:
        if job.adapter is not None:
            with self._lock:
                job.adapter.users -= 1
                retire = job.adapter.retiring and job.adapter.users == 0
            if retire:
                self._collect_retired()

    def _forward(self, ids, mask, positions, cache, adapter_names: list[str]) -> torch.Tensor:
        return self._model.forward(ids, mask, positions, cache, adapter_names)

    def _run(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)  # from the worker: OpenMP and MKL keep the count per thread
        with torch.inference_mode():
            while True:
                idle = not self._rows and not self._waiting
                if idle:
                    self._hand_over(force=True)  # nothing will step: what is left goes now
                    if self.cpu_share is not None:
                        self.cpu_share.idle(self)
                if not self._take_from_inbox(block=idle):
                    break
                try:
                    if self._rows or self._waiting:
                        self._fit_threads()
                    self._admit()
                    self._hand_over()  # first tokens go out now, not after the next step
                    if self._rows:
                        self._step()
                except Exception as exc:  # never leave a client hanging: fail the batch, keep serving
                    log.exception("decode step failed")
                    self._fail_all(EngineError(f"generation failed: {exc}"))
                finally:
                    self._hand_over()
            self._hand_over(force=True)
        if self.cpu_share is not None:
            self.cpu_share.idle(self)

    def _fit_threads(self) -> None:
        """Decode with the share's thread count from this step on (it changes as jobs, other processes and
        other engines of the process come and go)."""
        if self.cpu_share is None:
            return
        wanted = self.cpu_share.threads_for(self)
        if wanted != self._threads_now:
            torch.set_num_threads(wanted)
            self._threads_now = wanted

    def _take_from_inbox(self, block: bool) -> bool:
        """Move new jobs to the waiting line and run commands. Returns False when asked to stop."""
        items = []
        if block:
            items.append(self._inbox.get())
            # gather requests that arrive together: a burst of HTTP requests reaches the inbox a few ms apart
            # (the event loop parses and templates them in turn), so wait while they keep coming, up to
            # batch_max_wait_s; a row admitted alone would take a prefill of its own and the rest another
            start = time.monotonic()
            deadline = start + self.batch_wait_s
            while (now := time.monotonic()) < deadline:
                try:
                    items.append(self._inbox.get(timeout=deadline - now))
                except queue.Empty:
                    break
                deadline = min(start + self.batch_max_wait_s, time.monotonic() + self.batch_wait_s)
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for item in items:
            if item is _STOP:
                self._fail_all(EngineUnavailable("the engine is shutting down"))
                return False
            if isinstance(item, _Command):
                try:
                    item.done.set_result(item.action())
                except Exception as exc:
                    item.done.set_exception(exc)
            else:
                self._waiting.append(item)
        return True

    def _admit(self) -> None:
        room = self.max_batch_size - len(self._rows)
        jobs = []
        while self._waiting and len(jobs) < room:
            job = self._waiting.popleft()
            if job.cancelled:
                self._release(job)
                continue
            jobs.append(job)
        if not jobs:
            return
        for job in jobs:
            params = job.request.sampling
            job.stream = TextStream(self._decode, [*params.stop, *self._turn_stops])
            job.generator = make_generator(params.seed)
        names = [self._adapter_key(job) for job in jobs]
        try:
            logits, batch = kvbatch.prefill(
                self._forward, [j.prompt_ids for j in jobs], names, self._pad_id, self._device
            )
            tokens = sample_next(logits, [j.request.sampling for j in jobs], [j.generator for j in jobs])
        except Exception:
            self._waiting.extendleft(reversed(jobs))  # back in line, so _fail_all tells their clients
            raise
        keep = [
            i
            for i, (job, token) in enumerate(zip(jobs, tokens, strict=True))
            if not self._advance(job, token)
        ]
        batch = kvbatch.keep_rows(batch, keep)
        if batch is not None:
            self._batch = kvbatch.merge(self._batch, batch)
            self._rows.extend(jobs[i] for i in keep)

    def _step(self) -> None:
        rows = self._rows
        if self._on_step is not None:
            self._on_step(len(rows))
        logits = kvbatch.step(
            self._forward, self._batch, [j.pending_token for j in rows], [self._adapter_key(j) for j in rows]
        )
        tokens = sample_next(logits, [j.request.sampling for j in rows], [j.generator for j in rows])
        keep = [
            i
            for i, (job, token) in enumerate(zip(rows, tokens, strict=True))
            if not self._advance(job, token)
        ]
        self._batch = kvbatch.keep_rows(self._batch, keep)
        self._rows = [rows[i] for i in keep]

    def _adapter_key(self, job: _Job) -> str:
        return job.adapter.key if job.adapter is not None else BASE_ADAPTER

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _advance(self, job: _Job, token: int) -> bool:
        """Take the row's new token; emit its text. Returns True when the row is finished."""
        if job.cancelled:
            self._release(job)
            return True
        job.generated += 1
        finish = None
        if token in self._eos_ids and not job.request.sampling.ignore_eos:
            finish, text = "stop", job.stream.finish()
        else:
            text = job.stream.push(token)
            if job.stream.stopped:
                finish = "stop"
            elif job.generated >= job.max_new_tokens:
                finish, text = "length", text + job.stream.finish()
        job.pending_token = token
        delta = Delta(
            text=text,
            token_ids=[token],
            finish_reason=finish,
            prompt_tokens=len(job.prompt_ids),
            completion_tokens=job.generated,
        )
        self._emit(job, delta)
        if finish is not None:
            self._release(job)
            return True
        return False

    def _emit(self, job: _Job, item: Delta | Exception) -> None:
        unsent = job.unsent
        if isinstance(item, Delta) and unsent is not None:  # the row's last delta is still here: extend it
            unsent.text += item.text
            unsent.token_ids += item.token_ids
            unsent.finish_reason = item.finish_reason
            unsent.completion_tokens = item.completion_tokens
        else:
            self._outbox.append((job, item))
            job.unsent = item if isinstance(item, Delta) else None
        if not isinstance(item, Delta) or item.finish_reason is not None or item.completion_tokens == 1:
            self._outbox_urgent = True

    def _hand_over(self, force: bool = False) -> None:
        """Give the deltas to their event loops: one wake-up per loop, not one per row (each wake-up runs the
        loop's Python while this thread waits for the GIL), and at most one per stream interval while every
        row is mid-answer: a fast step (the demo model's take a few ms) then sends a few tokens per event,
        and each event costs the event loop about as much CPU as a step of the model costs per row."""
        if not self._outbox:
            return
        now = time.monotonic()
        if not (force or self._outbox_urgent) and now - self._handed_at < self.stream_interval_s:
            return
        self._handed_at, self._outbox_urgent = now, False
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Delta | Exception]]] = {}
        for job, item in self._outbox:
            job.unsent = None
            by_loop.setdefault(job.loop, []).append((job, item))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the clients' event loop is gone
                for job, _ in items:
                    job.cancelled = True

    def _fail_all(self, error: Exception) -> None:
        for job in [*self._rows, *self._waiting]:
            self._emit(job, error)
            self._release(job)
        self._rows, self._batch = [], None
        self._waiting.clear()
