"""ModelSet: the hub's engines behind one Engine, routed by served name: the base models it was started with
(`tunehub serve --model A --model B`: one engine each, each with adapters of its own), and whole models
loaded beside them while it runs, so full and freeze fine-tunes are chatted with, compared, replayed and
promoted as adapters are, without a restart.

The first base is the primary one: requests that name no model (and `tunehub-default` when nothing is
promoted) go to it, and the hub's base-model questions (its path, tokenizer, health) are its. A request
naming another base goes to that base's engine; one naming an adapter goes to the engine the adapter was
loaded on. `load_adapter(name, path)` looks at the directory: an adapter goes to the base it was trained on
(`base_model_name_or_path` in its adapter_config.json, matched against each base's path and name; with one
base, to it, whose own checks decide); a directory that holds a whole model (a config.json, no
adapter_config.json) is opened through `open_model(name, path)` (the hub's opener checks memory first, in a
worker thread: loading takes seconds) and served under `name`. A served name is unique across all engines.
Unloading a whole model refuses new requests for it, lets the running ones finish and closes its engine.

    engines = ModelSet(demo_engine, open_model=opener, others=[smollm2_engine])
    await engines.load_adapter("km", Path("adapters/km/job_1"))              # onto the base it names
    await engines.load_adapter("full-sft", Path("adapters/full-sft/job_2"))  # a whole model: its own engine
    engines.generate(GenerationRequest(adapter="full-sft", messages=[...]))  # answered by that engine
    engines.bases()                                                          # the base engines, primary first
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .adapters import check_adapter_name
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
    """The hub's engine: base engines (the primary first) and whole models beside them, routed by name."""

    def __init__(self, base: Engine, *, open_model: OpenModel, others: list[Engine] | None = None) -> None:
        self.base = base  # the primary base
        self.open_model = open_model
        self._bases: list[Engine] = [base, *(others or [])]
        names = [engine.model_name for engine in self._bases]
        if len(set(names)) != len(names):
            raise ValueError(f"two base models are served under one name: {', '.join(names)}")
        self._models: dict[str, _WholeModel] = {}
        self._loading: set[str] = set()

    # ----- what the primary base says ---------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.base.model_name

    @property
    def max_context(self) -> int:
        return self.base.max_context

    @property
    def model_path(self) -> str:
        return self.base.model_path

    @property
    def ready(self) -> bool:
        return self.base.ready

    async def health_problem(self) -> str | None:
        """The primary base's: the hub is up while it serves (another base that fails, fails its requests)."""
        return await self.base.health_problem()

    def replica_status(self) -> list[dict]:
        return self.base.replica_status()

    def observe_steps(self, callback: Callable[[int], None]) -> None:
        for engine in self._bases:
            engine.observe_steps(callback)

    @property
    def chat_template(self) -> str | None:
        return self.base.chat_template

    @property
    def can_sleep(self) -> bool:
        return self.base.can_sleep

    async def sleep(self, level: int = 1) -> None:
        await self.base.sleep(level)

    async def wake_up(self) -> None:
        await self.base.wake_up()

    def bases(self) -> list[Engine]:
        """The base models' engines, the primary first."""
        return list(self._bases)

    def base_of(self, name: str) -> Engine:
        """The base engine serving `name` (a base, or an adapter on it); the primary for any other name."""
        for engine in self._bases:
            if name == engine.model_name or any(a.name == name for a in engine.adapters()):
                return engine
        return self.base

    # ----- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        started: list[Engine] = []
        try:
            for engine in self._bases:
                await engine.start()
                started.append(engine)
        except BaseException:
            for engine in started:
                await engine.close()
            raise

    async def close(self) -> None:
        models, self._models = list(self._models.values()), {}
        for model in models:
            await model.engine.close()
        for engine in self._bases:
            await engine.close()

    # ----- adapters and whole models -----------------------------------------------------------------

    def adapters(self) -> list[AdapterInfo]:
        """Every adapter of every base (its `parent` the base's served name, with several bases), then the
        whole models."""
        found = [self._on(engine, info) for engine in self._bases for info in engine.adapters()]
        return [*found, *(m.info for m in self._models.values())]

    def _on(self, engine: Engine, info: AdapterInfo) -> AdapterInfo:
        """An adapter's info, naming the base it answers on where there are several."""
        return info if len(self._bases) == 1 else replace(info, parent=engine.model_name)

    def _taken(self) -> set[str]:
        return {*(e.model_name for e in self._bases), *self._loading, *(a.name for a in self.adapters())}

    async def load_adapter(self, name: str, path: Path) -> AdapterInfo:
        path = Path(path)
        check_adapter_name(name, reserved={e.model_name for e in self._bases})  # every base's name is taken
        if not holds_whole_model(path):
            engine = self._base_for_adapter(path)
            # the engine judges names on its own base (its reserved name, a reload); here, the other engines'
            others = self._taken() - {engine.model_name, *(a.name for a in engine.adapters())}
            if name in others:
                raise AdapterConflict(f"the name {name!r} is already served", param="lora_name")
            return self._on(engine, await engine.load_adapter(name, path))
        if name in self._taken():
            raise AdapterConflict(f"the name {name!r} is already served", param="lora_name")
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
            parent=self.base.model_name,
        )
        self._models[name] = _WholeModel(info, engine)
        return info

    def _base_for_adapter(self, path: Path) -> Engine:
        """The base an adapter was trained on: with one base, that one (its own checks decide); with several,
        the one its adapter_config.json names by path or served name."""
        if len(self._bases) == 1:
            return self.base
        named = trained_on(path)
        for engine in self._bases:
            if same_model(named, engine):
                return engine
        served = ", ".join(f"{e.model_name} ({e.model_path or '?'})" for e in self._bases)
        raise InvalidAdapter(
            f"adapter {str(path)!r} was trained on {named or 'an unnamed base'!r}, which is none of the served "
            f"base models: {served}",
            param="path",
        )

    async def unload_adapter(self, name: str) -> None:
        model = self._models.get(name)
        if model is None:
            return await self.base_of(name).unload_adapter(name)
        model.retiring = True
        if model.users:
            try:
                await asyncio.wait_for(model.idle.wait(), UNLOAD_WAIT_S)
            except TimeoutError:
                model.retiring = False
                raise AdapterConflict(
                    f"model {name!r} still has {model.users} running requests after {UNLOAD_WAIT_S:.0f} s",
                    param="lora_name",
                ) from None
        del self._models[name]
        await model.engine.close()

    # ----- generation and scoring --------------------------------------------------------------------

    def _route(self, name: str | None) -> tuple[Engine, str | None, _WholeModel | None]:
        """(engine, the adapter name it is asked for, the whole model if it is one) for a requested name."""
        if name is None:
            return self.base, None, None
        model = self._models.get(name)
        if model is not None:
            return model.engine, None, model
        engine = self.base_of(name)
        return engine, (None if name == engine.model_name else name), None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        engine, adapter, model = self._route(request.adapter)
        if adapter != request.adapter:
            request = replace(request, adapter=adapter)
        if model is None:
            async for delta in engine.generate(request):
                yield delta
            return
        model.enter()
        try:
            async for delta in engine.generate(request):
                yield delta
        finally:
            model.leave()

    async def score(self, requests: list[ScoreRequest]) -> list[TokenScores]:
        """Each request scored by the engine it names; the results in the order asked."""
        groups: dict[int, tuple[Engine, _WholeModel | None, list[int]]] = {}
        routed: list[ScoreRequest] = []
        for i, request in enumerate(requests):
            engine, adapter, model = self._route(request.adapter)
            routed.append(request if adapter == request.adapter else replace(request, adapter=adapter))
            groups.setdefault(id(engine), (engine, model, []))[2].append(i)
        results: list[TokenScores | None] = [None] * len(requests)

        async def run(engine: Engine, model: _WholeModel | None, indices: list[int]) -> None:
            if model is not None:
                model.enter()
            try:
                scored = await engine.score([routed[i] for i in indices])
            finally:
                if model is not None:
                    model.leave()
            for i, scores in zip(indices, scored, strict=True):
                results[i] = scores

        await asyncio.gather(*(run(*group) for group in groups.values()))
        return [r for r in results if r is not None]


def trained_on(path: Path) -> str:
    """The base an adapter directory names (`base_model_name_or_path`), or "" when it names none."""
    try:
        config = json.loads((Path(path) / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return ""
    return str(config.get("base_model_name_or_path") or "") if isinstance(config, dict) else ""


def same_model(named: str, engine: Engine) -> bool:
    """Whether `named` (an adapter's base) is the model `engine` serves: its served name, its path as given,
    or the same directory."""
    if not named:
        return False
    path = engine.model_path or ""
    if named in (engine.model_name, path):
        return True
    try:
        return bool(path) and Path(named).resolve() == Path(path).resolve()
    except OSError:
        return False
