"""The FastAPI app both of tunehub's servers start from (the hub, hub/app.py, and `tunehub engine`,
hub/engine_server.py): no docs pages, FastAPI's own telemetry off, the OpenAI error envelope for every error,
non-finite numbers sent as null, the chat service on `app.state`."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from ..chat_service import ChatService
from ..errors import install_error_handlers

# FastAPI's own OpenTelemetry hooks look up the global providers on every request, about 8% of a vote's CPU
# in bench/store.py; the hub's own metrics (GET /metrics, hub/metrics.py) are its observability: switched off
FASTAPI_TELEMETRY_OFF = {"tracing": False, "metrics": False, "logs": False}


class FiniteJSONResponse(JSONResponse):
    """A route's JSON with every infinite or NaN number as null. JSON has neither, and training metrics can
    hold them: an evaluation stopped at the KL bound reports its loss as infinite (training.callbacks), which
    made `GET /v1/jobs/ID` fail with a 500 while that evaluation was the job's latest."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except ValueError:  # only a non-finite float makes the encoder refuse what FastAPI prepared
            return super().render(finite(content))


def finite(value: Any) -> Any:
    """`value` with each non-finite float inside it (dicts, lists) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def api_app(
    title: str, lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]], service: ChatService
) -> FastAPI:
    app = FastAPI(
        title=title,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        telemetry=FASTAPI_TELEMETRY_OFF,
        default_response_class=FiniteJSONResponse,
    )
    app.state.service = service
    install_error_handlers(app)
    return app
