"""Side-by-side answers for judging: arena battles (two anonymous models answer one context) and rank samples
(one model answers one prompt N times). Both generate through ChatService, so every answer is stored.

New candidate adapters need votes before the leaderboard can place them, so the arena draws them
``candidate_boost`` times as often as the other models (``TUNEHUB_ARENA_BOOST``, default 3).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass

from feedback.connections import new_id
from feedback.store import Store, generation_id
from serving.engine import GenerationRequest, SamplingParams

from .chat_service import DEFAULT_MODEL, ChatService


def pick_pair(
    models: Sequence[str], candidates: Collection[str], boost: float, rng: random.Random
) -> tuple[str, str]:
    """Two different models, drawn without replacement with weight ``boost`` for candidates and 1 for the
    rest, in random sides. Fewer than two: NoPair (a model against itself teaches the leaderboard nothing)."""
    if len(models) < 2:
        raise NoPair(pair_missing(models))
    weights = [boost if m in candidates else 1.0 for m in models]
    first = rng.choices(range(len(models)), weights)[0]
    rest = [i for i in range(len(models)) if i != first]
    second = rng.choices(rest, [weights[i] for i in rest])[0]
    pair = (models[first], models[second])
    return pair if rng.random() < 0.5 else (pair[1], pair[0])


class NoPair(ValueError):
    """Fewer than two models are served, so there is nothing to compare."""


def pair_missing(models: Sequence[str]) -> str:
    """Why the arena cannot battle, and what to do about it."""
    served = f"only {models[0]!r} is served" if models else "no model is served"
    return (
        f"The arena compares two different models, and {served}. Load an adapter in the Adapters tab or "
        "train one in the Train tab, then come back."
    )


@dataclass(frozen=True)
class Contestant:
    model: str
    generation_id: str  # also the response id its answer is stored under


class ArenaService:
    def __init__(
        self,
        chat: ChatService,
        store: Store,
        *,
        candidate_boost: float = 3.0,
        rng: random.Random | None = None,
    ) -> None:
        if not candidate_boost > 0:
            raise ValueError(f"the arena's candidate boost must be > 0, got {candidate_boost!r}")
        self.chat = chat
        self.store = store
        self.candidate_boost = candidate_boost
        self.rng = rng or random.Random()

    def models(self) -> list[str]:
        """The served models that can meet in the arena: not `tunehub-default`, an alias of one of them."""
        return [m.id for m in self.chat.models() if m.id != DEFAULT_MODEL]

    def candidates(self) -> set[str]:
        """Served models that the store lists as candidate adapters (by name or name@version)."""
        names = set()
        for adapter in self.store.list_adapters(status="candidate"):
            names |= {adapter.name, adapter.ref}
        return names & set(self.models())

    def new_battle(self) -> tuple[Contestant, Contestant]:
        a, b = pick_pair(self.models(), self.candidates(), self.candidate_boost, self.rng)
        return Contestant(a, new_id("chatcmpl")), Contestant(b, new_id("chatcmpl"))

    async def battle(
        self,
        context: list[dict],
        contestants: tuple[Contestant, Contestant],
        sampling: SamplingParams,
        *,
        rater: str,
        conversation_id: str | None = None,
    ) -> AsyncIterator[tuple[str, str]]:
        """Stream both answers to ``context`` at once; yields (text of A, text of B) as either grows."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(side: int, contestant: Contestant) -> None:
            request = GenerationRequest(
                messages=context, sampling=sampling, adapter=self.chat.adapter_for(contestant.model)
            )
            try:
                stream = self.chat.stream(
                    request,
                    response_id=contestant.generation_id,
                    source="ui",
                    rater=rater,
                    conversation_id=conversation_id,
                )
                async for _, delta in stream:
                    await queue.put((side, delta.text))
            except Exception as exc:
                await queue.put((side, exc))
            finally:
                await queue.put((side, None))

        tasks = [asyncio.create_task(pump(side, c)) for side, c in enumerate(contestants)]
        texts, finished = ["", ""], 0
        try:
            while finished < 2:
                side, item = await queue.get()
                if item is None:
                    finished += 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    texts[side] += item
                    yield texts[0], texts[1]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def sample(
        self,
        messages: list[dict],
        model: str,
        n: int,
        sampling: SamplingParams,
        *,
        rater: str,
        conversation_id: str | None = None,
    ) -> list[tuple[str, str]]:
        """``n`` answers of ``model`` to ``messages``: (stored generation id, text) for each."""
        response_id = new_id("chatcmpl")
        request = GenerationRequest(
            messages=messages, sampling=sampling, adapter=self.chat.adapter_for(model)
        )
        choices = await self.chat.complete(
            request, n, response_id=response_id, source="ui", rater=rater, conversation_id=conversation_id
        )
        return [(generation_id(response_id, c.index), c.text) for c in choices]
