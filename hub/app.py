"""The app factory: one FastAPI server with the OpenAI-compatible API and the Gradio UI mounted at /."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from serving.engine import Engine

from .api import build_router
from .auth import Auth
from .errors import install_error_handlers
from .metrics import Metrics
from .service import ChatService
from .settings import Settings


def build_app(settings: Settings, engine: Engine, *, with_ui: bool = True) -> FastAPI:
    """Wire services around a constructed engine; the lifespan starts and stops it. Nothing runs at import."""
    metrics = Metrics(adapter_count=lambda: len(engine.adapters()))
    if hasattr(engine, "observe_steps"):
        engine.observe_steps(metrics.batch_size.observe)
    service = ChatService(engine, metrics)
    auth = Auth(settings.api_key, settings.admin_password)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        try:
            yield
        finally:
            await engine.close()

    app = FastAPI(title="tunehub", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.settings = settings
    install_error_handlers(app)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", None)
        if path and not path.startswith("/gradio") and path != "/":
            metrics.requests.labels(path, str(response.status_code)).inc()
        return response

    app.include_router(build_router(service, auth))
    if with_ui:
        import gradio as gr

        from .ui import build_ui

        app = gr.mount_gradio_app(app, build_ui(service), path="/")
    return app
