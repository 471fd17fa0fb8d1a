"""The app factory: one FastAPI server with the OpenAI-compatible API and the Gradio UI mounted at /."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.routing import Match, Mount

from feedback.promotion_rule import PromotionRule
from feedback.records import Adapter
from feedback.store import Store
from serving.engine import Engine
from serving.model_set import ModelSet, OpenModel

from .adapters_service import AdapterService
from .api.adapters import build_adapters_router
from .api.feedback import build_feedback_router
from .api.jobs import build_jobs_router
from .api.openai_compat import build_router
from .api.promotion import build_promotion_router
from .api.server import api_app
from .arena_service import ArenaService
from .auth import Auth
from .chat_service import ChatService
from .conversations import Conversations
from .dataset_service import DatasetService
from .errors import ApiError
from .feedback_service import FeedbackService
from .jobs_service import JobsService, start_runner
from .limits import BodyLimit, GenerationGate, RateLimiter
from .metrics import Metrics, engine_metrics
from .promotion_service import PromotionService, promoted_route, run_auto_promotion
from .recording import store_recorder
from .settings import Settings
from .whole_models import no_opener

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


class CountRequests:
    """Counts API requests by route and status. Plain ASGI: `@app.middleware("http")` would cost each request
    a task group and memory streams, a third of a vote's time in bench/store.py."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            path = getattr(scope.get("route"), "path", None)
            if path and not path.startswith("/gradio") and path != "/":
                self.metrics.requests.labels(path, str(status)).inc()


def served_chat_template(engine: Engine, settings: Settings) -> str | None:
    """The template the engine was given with --chat-template (its tokenizer holds the text), for the jobs
    the hub starts: they train the base with the template it is served with. None without the option."""
    if not settings.chat_template:
        return None
    return engine.chat_template


def build_app(
    settings: Settings,
    engine: Engine,
    *,
    store: Store | None = None,
    with_ui: bool = True,
    run_jobs: bool = True,
    open_model: OpenModel | None = None,
    other_bases: list[Engine] | None = None,
) -> FastAPI:
    """Wire services around a constructed engine; the lifespan starts and stops it, and the training job
    runner with it (unless `run_jobs` is False). `open_model` opens a full or freeze fine-tune as a model of
    its own beside the base (hub/whole_models.py); without it, loading one is refused. `other_bases` are
    more base models served beside `engine`, each with its own adapters. Nothing runs at import."""
    engine = ModelSet(engine, open_model=open_model or no_opener, others=other_bases)
    metrics = engine_metrics(engine)
    if store is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(settings.data_dir / "feedback.db")
    service = ChatService(
        engine,
        metrics,
        recorder=store_recorder(store),
        gate=GenerationGate(settings.max_concurrent_generations, settings.max_queued_generations),
        timeout_s=settings.generation_timeout_s,
        default_adapter=promoted_route(store, engine),  # what `tunehub-default` serves
    )
    limiter = RateLimiter(
        {"api": settings.rate_limit_key, "rater": settings.rate_limit_rater}, burst=settings.rate_limit_burst
    )
    auth = Auth(
        settings.api_key, settings.admin_password, store, limiter=limiter if limiter.enabled else None
    )
    feedback = FeedbackService(store, anchor=lambda: engine.model_name)
    adapters = AdapterService(store, service)
    rule = PromotionRule(**settings.promotion_rule_values())
    promotion = PromotionService(
        store, adapters, feedback, settings.data_dir, rule, replay_prompts=settings.replay_prompts
    )
    chat_template = served_chat_template(engine, settings)
    jobs = JobsService(
        store,
        engine.model_path or None,
        settings.data_dir,
        chat_template,
        other_bases={e.model_name: e.model_path for e in engine.bases()[1:]},
        guard_bounds=settings.guard_bounds(),
    )

    def replay_live(adapter: Adapter) -> dict:
        """A finished job's last step (in the runner's thread): its regression replay, once it is live."""
        return promotion.replay(adapter.ref)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        promotion.attach_engine(engine, asyncio.get_running_loop())  # the replay answers through it
        # adapters registered before this start (earlier jobs, `tunehub train`) are served again; the
        # runner only loads those of jobs that finish from now on
        await adapters.reload_registered()
        runner = (
            start_runner(
                service,
                store,
                settings.data_dir,
                replay_live,
                chat_template,
                auto_train=settings.auto_train,
                guard_bounds=jobs.guard_bounds,
            )
            if run_jobs
            else None
        )
        auto = (
            asyncio.create_task(run_auto_promotion(promotion, settings.auto_promote_interval_s))
            if promotion.rule.auto
            else None
        )
        try:
            yield
        finally:
            if auto is not None:
                auto.cancel()
            if runner is not None:  # its workers stop; their jobs resume at the next start
                await asyncio.to_thread(runner.stop)
            await engine.close()
            store.close()

    app = api_app("tunehub", lifespan, service)
    app.state.store = store
    app.state.settings = settings

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # the API's bodies: 413 beyond it
    app.add_middleware(CountRequests, metrics=metrics)

    # votes are the most frequent request (bench/store.py): their router is matched first
    app.include_router(build_feedback_router(feedback, auth))
    app.include_router(build_router(service, auth))
    app.include_router(build_jobs_router(jobs, auth))
    app.include_router(build_adapters_router(adapters, promotion, auth))
    app.include_router(build_promotion_router(promotion, auth))
    # keep this after every API route: the UI is mounted at "/" and would answer any other /v1 path with
    # its own bare 404, so unknown API paths and wrong methods get the error envelope here instead
    app.add_api_route("/v1/{path:path}", _unknown_api_route, methods=_ALL_METHODS, include_in_schema=False)
    if with_ui:
        import gradio as gr

        from .ui import UiServices, build_ui
        from .ui.login import gradio_login

        exports_dir = settings.data_dir / "exports"
        exports_dir.mkdir(parents=True, exist_ok=True)
        services = UiServices(
            chat=service,
            feedback=feedback,
            arena=ArenaService(service, store, candidate_boost=settings.arena_candidate_boost),
            conversations=Conversations(store),
            datasets=DatasetService(store, exports_dir),
            auth=auth,
            jobs=jobs,
            adapters=adapters,
            promotion=promotion,
        )
        app = gr.mount_gradio_app(
            app,
            build_ui(services),
            path="/",
            auth=gradio_login(auth) if auth.login_required else None,
            auth_message="Sign in as admin with the admin password, or as a rater with your own password.",
            allowed_paths=[str(exports_dir)],  # the Data tab's downloads
            run_history=False,  # answers and votes stay out of the browser's storage
            # the UI takes no uploads, but Gradio's /gradio_api/upload is open to anyone signed in: bound it
            max_file_size=settings.max_body_bytes,
        )
    return app
