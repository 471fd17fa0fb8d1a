"""ModelSet: the served base model's engine, plus whole models loaded beside it while the hub runs, so full
and freeze fine-tunes are chatted with, compared, replayed and promoted as adapters are, without a restart.

A full (or freeze) fine-tune is a complete model, not a delta on the base, so it needs an engine of its own.
`load_adapter(name, path)` looks at the directory: one that holds a whole model (a config.json, no
adapter_config.json) is opened through `open_model(name, path)` (the hub's opener checks memory first, in a
worker thread: loading takes seconds) and served under `name`; an adapter goes to the base engine as before.
Requests and scores that name a whole model go to its engine, as requests for its base; everything else goes
to the base engine. Unloading a whole model refuses new requests for it, lets the running ones finish and
closes its engine, which frees its memory.

    engines = ModelSet(base_engine, open_model=opener)
    await engines.load_adapter("full-sft", Path("adapters/full-sft/job_1"))   # a whole model: its own engine
    engines.generate(GenerationRequest(adapter="full-sft", messages=[...]))   # answered by that engine
    engines.adapters()                        # the base engine's adapters, then the whole models (kind "model")

Anything else the hub asks of an engine (its model path, tokenizer, health, replicas, step observer) is the
base engine's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .engine import AdapterInfo, Delta, Engine, GenerationRequest, ScoreRequest, TokenScores
from .errors import AdapterConflict, InvalidAdapter, ModelNotFound

OpenModel = Callable[[str, Path], Engine]  # (served name, directory) -> an engine, not started; blocking
UNLOAD_WAIT_S = 120.0  # how long an unload waits for the whole model's running requests


def holds_whole_model(path: Path) -> bool:
    """Whether a directory holds a complete model (a full or freeze fine-tune) rather than an adapter."""
    return (path / "config.json").is_file() and not (path / "adapter_config.json").is_file()


@dataclass
class _WholeModel:
    info: AdapterInfo
    engine: Engine
    users: int = 0  # requests and scores running on it
    retiring: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def enter(self) -> None:
        if self.retiring:
            raise ModelNotFound(f"model {self.info.name!r} is being unloaded", param="model")
        self.users += 1
        self.idle.clear()

    def leave(self) -> None:
        self.users -= 1
        if self.users == 0:
            self.idle.set()


class ModelSet:
    """The hub's engine: the base engine and the whole models loaded beside it, routed by served name."""

    def __init__(self, base: Engine, *, open_model: OpenModel) -> None:
        self.base = base
        self.open_model = open_model
        self._models: dict[str, _WholeModel] = {}
        self._loading: set[str] = set()

    # ----- what the base engine says ----------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.base.model_name

    @property
    def max_context(self) -> int:
        return self.base.max_context

    def __getattr__(self, name: str) -> Any:
        """The base engine's optional parts (model_path, tokenizer, ready, health_problem, replica_status,
        observe_steps, process): the hub asks the base for them, as it did before whole models."""
        if name.startswith("_") or name in ("base", "open_model"):
            raise AttributeError(name)
        return getattr(self.base, name)

    # ----- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.base.start()

    async def close(self) -> None:
        models, self._models = list(self._models.values()), {}
        for model in models:
            await model.engine.close()
        await self.base.close()

    # ----- adapters and whole models -----------------------------------------------------------------

    def adapters(self) -> list[AdapterInfo]:
        return [*self.base.adapters(), *(m.info for m in self._models.values())]

    def whole_models(self) -> list[AdapterInfo]:
        return [m.info for m in self._models.values()]

    async def load_adapter(self, name: str, path: Path) -> AdapterInfo:
        path = Path(path)
        if not holds_whole_model(path):
            if name in self._models or name in self._loading:
                raise AdapterConflict(f"{name!r} is already served as a whole model", param="name")
            return await self.base.load_adapter(name, path)
        taken = {self.base.model_name, *self._loading, *(a.name for a in self.adapters())}
        if name in taken:
            raise AdapterConflict(f"the name {name!r} is already served", param="name")
        self._loading.add(name)
        try:
            engine = await asyncio.to_thread(self.open_model, name, path)
            try:
                await engine.start()
            except BaseException:
                await engine.close()
                raise
        except (OSError, ValueError) as exc:
            raise InvalidAdapter(f"model {str(path)!r} cannot be served: {exc}", param="path") from exc
        finally:
            self._loading.discard(name)
        info = AdapterInfo(
            name=name,
            path=path,
            base_model=str(path),
            rank=0,
            target_modules=[],
            loaded_at=time.time(),
            kind="model",
        )
        self._models[name] = _WholeModel(info, engine)
        return info

    async def unload_adapter(self, name: str) -> None:
        model = self._models.get(name)
        if model is None:
            return await self.base.unload_adapter(name)
        model.retiring = True
        if model.users:
            try:
                await asyncio.wait_for(model.idle.wait(), UNLOAD_WAIT_S)
            except TimeoutError:
                model.retiring = False
                raise AdapterConflict(
                    f"model {name!r} still has {model.users} running requests after {UNLOAD_WAIT_S:.0f} s",
                    param="name",
                ) from None
        del self._models[name]
        await model.engine.close()

    # ----- generation and scoring --------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        model = self._models.get(request.adapter) if request.adapter else None
        if model is None:
            async for delta in self.base.generate(request):
                yield delta
            return
        model.enter()
        try:
            async for delta in model.engine.generate(replace(request, adapter=None)):
                yield delta
        finally:
            model.leave()

    async def score(self, requests: list[ScoreRequest]) -> list[TokenScores]:
        """Each request scored by the engine it names; the results in the order asked."""
        groups: dict[str | None, list[int]] = {}
        for i, request in enumerate(requests):
            key = request.adapter if request.adapter in self._models else None
            groups.setdefault(key, []).append(i)
        results: list[TokenScores | None] = [None] * len(requests)

        async def run(key: str | None, indices: list[int]) -> None:
            if key is None:
                scored = await self.base.score([requests[i] for i in indices])
            else:
                model = self._models[key]
                model.enter()
                try:
                    scored = await model.engine.score([replace(requests[i], adapter=None) for i in indices])
                finally:
                    model.leave()
            for i, scores in zip(indices, scored, strict=True):
                results[i] = scores

        await asyncio.gather(*(run(key, indices) for key, indices in groups.items()))
        return [r for r in results if r is not None]
