"""The engine interface every backend implements, and the request/stream types it speaks.

Besides generation, an engine scores: `score` returns the log-probability of every token of a given
sequence (a prompt, then optional continuation tokens) under the base or an adapter, by teacher forcing.
The regression replay measures KL and perplexity with it (`training.replay`), so the served engine answers
and judges, and no second copy of the model is loaded for that."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

BASE_ADAPTER = "__base__"  # the adapter name that means "no adapter" inside a mixed batch


@dataclass
class SamplingParams:
    """Per-request sampling; each row of a batch keeps its own."""

    max_tokens: int | None = None  # None: up to the context length
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: no top-k cut
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False  # keep generating past EOS (benchmarks that need a fixed length)


@dataclass
class GenerationRequest:
    """One completion to produce: either chat `messages` (templated by the engine) or a raw `prompt`."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    messages: list[dict] | None = None
    prompt: str | None = None
    adapter: str | None = None  # None: the base model


@dataclass
class Delta:
    """A piece of streamed output. The last delta of a stream has `finish_reason` set."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" (EOS or stop string) | "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class AdapterInfo:
    name: str
    path: Path
    base_model: str
    rank: int
    target_modules: list[str]
    loaded_at: float
    # replica URL -> why the adapter did not load there: a replica set's partial load (serving/replicas.py);
    # the adapter is served by the other replicas only
    failed_on: dict[str, str] = field(default_factory=dict)
    # "adapter", or "model": a whole model (a full or freeze fine-tune) served by an engine of its own beside
    # the base (serving/model_set.py); its `base_model` is its own directory
    kind: str = "adapter"
    # the served name of the base it answers on, where a hub serves several (serving/model_set.py); None: the
    # engine's own base
    parent: str | None = None


@dataclass
class ScoreRequest:
    """A token sequence to score: the prompt (chat `messages`, templated with the generation prompt as
    `generate` does, or a raw `prompt`), then `continuation_ids` appended as they are (or the tokens of the
    `continuation` text, for an engine whose answers come without token ids)."""

    messages: list[dict] | None = None
    prompt: str | None = None
    continuation_ids: list[int] = field(default_factory=list)
    adapter: str | None = None  # None: the base model
    continuation: str | None = None  # text tokenised and appended after `continuation_ids`


@dataclass
class TokenScores:
    """Log-probabilities of a scored sequence: ``logprobs[i]`` is log p(token_ids[i] | token_ids[:i]) in
    nats; the first token has none (None). The continuation starts at `prompt_tokens`."""

    token_ids: list[int]
    logprobs: list[float | None]
    prompt_tokens: int

    @property
    def continuation_logprobs(self) -> list[float]:
        return [lp for lp in self.logprobs[self.prompt_tokens :] if lp is not None]


class Engine(Protocol):
    """What the hub needs from a serving backend: everything it asks of one, so it never probes."""

    model_name: str  # the name the base model is served under
    max_context: int
    model_path: str  # where the base model was loaded from ("" when the engine does not say)

    @property
    def ready(self) -> bool:
        """Started and able to answer (cheap; `health_problem` asks further for an engine elsewhere)."""
        ...

    async def health_problem(self) -> str | None:
        """Why it cannot serve now, or None; for an engine in another process a probe (cached briefly)."""
        ...

    def replica_status(self) -> list[dict]:
        """Each replica's state (URL, health, requests in flight, adapters), or [] for a single engine."""
        ...

    def observe_steps(self, callback: Callable[[int], None]) -> None:
        """Call `callback(rows)` after each decode step (an engine without steps of its own never calls it)."""
        ...

    @property
    def chat_template(self) -> str | None:
        """The chat template it applies when it templates chats itself (None: the server's own, or none)."""
        ...

    @property
    def can_sleep(self) -> bool:
        """Whether `sleep` frees this machine's GPU for a training job (a vLLM tunehub started with sleep
        mode); the others keep serving while jobs train."""
        ...

    async def sleep(self, level: int = 1) -> None: ...

    async def wake_up(self) -> None: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]: ...

    async def load_adapter(self, name: str, path: Path) -> AdapterInfo: ...

    async def unload_adapter(self, name: str) -> None: ...

    def adapters(self) -> list[AdapterInfo]: ...

    async def score(self, requests: list[ScoreRequest]) -> list[TokenScores]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...
