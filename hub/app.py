"""The app factory: one FastAPI server with the OpenAI-compatible API and the Gradio UI mounted at /."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.routing import Match, Mount

from feedback.store import Store
from serving.engine import Engine

from .api import build_router
from .auth import Auth
from .errors import ApiError, install_error_handlers
from .metrics import Metrics
from .recording import store_recorder
from .service import ChatService
from .settings import Settings

_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


async def _unknown_api_route(request: Request, path: str):
    allowed = [
        method
        for method in _ALL_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
            if not isinstance(route, Mount) and getattr(route, "endpoint", None) is not _unknown_api_route
        )
    ]
    if allowed:
        raise ApiError(
            405, f"{request.method} is not allowed on {request.url.path}; use {', '.join(allowed)}"
        )
    raise ApiError(404, f"no route {request.method} {request.url.path}", code="unknown_url")


def build_app(settings: Settings, engine: Engine, *, store: Store | None = None, with_ui: bool = True) -> FastAPI:
    """Wire services around a constructed engine; the lifespan starts and stops it. Nothing runs at import."""
    metrics = Metrics(adapter_count=lambda: len(engine.adapters()))
    if hasattr(engine, "observe_steps"):
        engine.observe_steps(metrics.batch_size.observe)
    if store is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(settings.data_dir / "feedback.db")
    service = ChatService(engine, metrics, recorder=store_recorder(store))
    auth = Auth(settings.api_key, settings.admin_password)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        try:
            yield
        finally:
            await engine.close()
            store.close()

    app = FastAPI(title="tunehub", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.store = store
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
    # keep this after every API route: the UI is mounted at "/" and would answer any other /v1 path with
    # its own bare 404, so unknown API paths and wrong methods get the error envelope here instead
    app.add_api_route("/v1/{path:path}", _unknown_api_route, methods=_ALL_METHODS, include_in_schema=False)
    if with_ui:
        import gradio as gr

        from .ui import build_ui

        app = gr.mount_gradio_app(app, build_ui(service), path="/")
    return app
