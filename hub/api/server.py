"""The FastAPI app both of tunehub's servers start from (the hub, hub/app.py, and `tunehub engine`,
hub/engine_server.py): no docs pages, FastAPI's own telemetry off, the OpenAI error envelope for every error,
the chat service on `app.state`."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI

from ..chat_service import ChatService
from ..errors import install_error_handlers

# FastAPI's own OpenTelemetry hooks look up the global providers on every request, about 8% of a vote's CPU
# in bench/store.py; the hub's own metrics (GET /metrics, hub/metrics.py) are its observability: switched off
FASTAPI_TELEMETRY_OFF = {"tracing": False, "metrics": False, "logs": False}


def api_app(
    title: str, lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]], service: ChatService
) -> FastAPI:
    app = FastAPI(
        title=title, lifespan=lifespan, docs_url=None, redoc_url=None, telemetry=FASTAPI_TELEMETRY_OFF
    )
    app.state.service = service
    install_error_handlers(app)
    return app
