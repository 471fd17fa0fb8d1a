"""`tunehub engine`: the embedded engine alone behind the slice of vLLM's HTTP protocol that tunehub uses, so
the vLLM client code runs against a real server on CPU (and a CPU box can serve another hub).

    tunehub engine --model DIR --port 8000 [--api-key KEY] [--served-model-name NAME] [--max-lora-rank 64]

Routes: /health, /v1/models, /v1/chat/completions, /v1/completions (the hub's own routes, no store, no UI),
/v1/load_lora_adapter and /v1/unload_lora_adapter answering in plain text as vLLM does, /sleep, /wake_up,
/is_sleeping. With --api-key every /v1 path needs the Bearer key and a wrong one gets vLLM's
`{"error": "Unauthorized"}`.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse

from serving.engine import Delta, Engine, GenerationRequest
from serving.errors import EngineUnavailable

from .api import protocol as p
from .api.openai_compat import build_router
from .api.server import api_app
from .auth import Auth
from .chat_service import ChatService
from .metrics import engine_metrics


class SleepableEngine:
    """The engine with vLLM's sleep switch: asleep, it refuses generation with 503 (the local engine keeps
    its weights where they are: there is no GPU memory to hand to a training job on CPU). Everything else
    is the engine's."""

    def __init__(self, engine: Engine) -> None:
        self.inner = engine
        self.sleeping = False
        inner = engine  # its calls, as they are
        self.adapters, self.load_adapter, self.unload_adapter = (
            inner.adapters,
            inner.load_adapter,
            inner.unload_adapter,
        )
        self.score, self.start, self.close = inner.score, inner.start, inner.close
        self.health_problem, self.replica_status = inner.health_problem, inner.replica_status
        self.observe_steps = inner.observe_steps

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def max_context(self) -> int:
        return self.inner.max_context

    @property
    def model_path(self) -> str:
        return self.inner.model_path

    @property
    def ready(self) -> bool:
        return self.inner.ready

    @property
    def chat_template(self) -> str | None:
        return self.inner.chat_template

    @property
    def can_sleep(self) -> bool:
        return True  # the switch below: it stops answering, as a sleeping vLLM does

    async def sleep(self, level: int = 1) -> None:
        self.sleeping = True

    async def wake_up(self) -> None:
        self.sleeping = False

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if self.sleeping:
            raise EngineUnavailable("the engine is asleep; POST /wake_up first")
        stream = self.inner.generate(request)
        try:
            async for delta in stream:
                yield delta
        finally:
            await stream.aclose()  # at once, so a client that went away frees its row


class VllmApiKey:
    """vLLM's --api-key check: every /v1 path needs `Authorization: Bearer KEY`. Plain ASGI."""

    def __init__(self, app, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = JSONResponse({"error": "Unauthorized"}, status_code=401)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def build_engine_app(engine: Engine, *, api_key: str | None = None) -> FastAPI:
    """A FastAPI app serving `engine` (not yet started: the lifespan starts and stops it)."""
    sleepable = SleepableEngine(engine)
    service = ChatService(sleepable, engine_metrics(engine))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        try:
            yield
        finally:
            await engine.close()

    app = api_app("tunehub engine", lifespan, service)
    vllm_routes = APIRouter()

    # registered before the hub's router, so these answer load/unload: vLLM's success answers are plain text
    @vllm_routes.post("/v1/load_lora_adapter", response_model=None)
    async def load_lora_adapter(body: p.LoadLoraAdapterRequest):
        await service.load_adapter(body.lora_name, Path(body.lora_path))
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @vllm_routes.post("/v1/unload_lora_adapter", response_model=None)
    async def unload_lora_adapter(body: p.UnloadLoraAdapterRequest):
        await service.unload_adapter(body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    @vllm_routes.post("/sleep", response_model=None)
    async def sleep(level: int = 1):
        await sleepable.sleep(level)
        return PlainTextResponse("")

    @vllm_routes.post("/wake_up", response_model=None)
    async def wake_up():
        await sleepable.wake_up()
        return PlainTextResponse("")

    @vllm_routes.get("/is_sleeping")
    async def is_sleeping():
        return {"is_sleeping": sleepable.sleeping}

    app.include_router(vllm_routes)
    app.include_router(build_router(service, Auth(None, None)))  # the key is checked vLLM's way, below
    if api_key:
        app.add_middleware(VllmApiKey, api_key=api_key)
    return app
