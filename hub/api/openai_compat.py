"""OpenAI-compatible routes: models, chat and text completions (streamed as SSE), adapter load/unload, health."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel

from feedback.errors import StoreError
from serving.engine import Delta, GenerationRequest, SamplingParams
from serving.errors import EngineError

from ..auth import Auth, Principal
from ..chat_service import ChatService, Choice
from ..errors import ApiError, error_body
from . import protocol as p


def _sampling(body: p._SamplingFields, max_tokens: int | None) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        stop=body.stop_list(),
        seed=body.seed,
        ignore_eos=body.ignore_eos,
    )


def _usage(choices: list[Choice]) -> p.Usage:
    prompt = choices[0].prompt_tokens if choices else 0
    completion = sum(c.completion_tokens for c in choices)
    return p.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, separators=(',', ':'))}\n\n"


def _sse_error(exc: EngineError | StoreError) -> str:
    """An error after the stream began (a timeout, a failed engine, a full disk when the answer is stored):
    one `data: {"error": ...}` event, as OpenAI and vLLM send it, and no [DONE]."""
    kind = getattr(exc, "error_type", None)  # a StoreError's type follows from its status
    return _sse(error_body(exc.status, exc.message, exc.param, exc.code, kind))


def _event_stream(
    stream: AsyncIterator,
    n: int,
    include_usage: bool,
    chunk: Callable[..., str],
    event: Callable[[int, Delta], str | None],
    opening: list[str] | None = None,
) -> StreamingResponse:
    """The SSE answer of a streamed chat or completion: `opening` events, one `event` per delta (None: nothing
    to send), the usage `chunk` when asked for, then [DONE]. An engine or store error (a full disk) after the
    status line was sent ends the stream with one error event and no [DONE]."""

    async def events():
        for opened in opening or ():
            yield opened
        totals = [Choice(index=i) for i in range(n)]
        try:
            async for index, delta in stream:
                totals[index].prompt_tokens = delta.prompt_tokens
                totals[index].completion_tokens = delta.completion_tokens
                sent = event(index, delta)
                if sent is not None:
                    yield sent
        except (EngineError, StoreError) as exc:
            yield _sse_error(exc)
            return
        if include_usage:
            yield chunk([], usage=_usage(totals))
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


class _TextEvents:
    """The SSE events of chunks that carry only text (one per token: the hot path of a stream). Each choice's
    event is rendered once through the protocol models with a marker for the text, then filled in by string
    concatenation: the same bytes, without building and dumping pydantic models for every token."""

    _MARK = "\x00tunehub-text\x00"

    def __init__(self, render: Callable[[int, str], str]) -> None:
        self._render = render
        self._parts: dict[int, tuple[str, str] | None] = {}

    def __call__(self, index: int, text: str) -> str:
        if index not in self._parts:
            rendered, mark = self._render(index, self._MARK), json.dumps(self._MARK)
            # a request whose model name holds the marker keeps the slow path
            self._parts[index] = tuple(rendered.split(mark)) if rendered.count(mark) == 1 else None
        parts = self._parts[index]
        if parts is None:
            return self._render(index, text)
        return parts[0] + json.dumps(text) + parts[1]


async def _primed(stream: AsyncIterator) -> AsyncIterator:
    """Pull the first item now, so request errors become HTTP errors instead of a broken stream."""
    first = await stream.__anext__()

    async def rest():
        try:
            yield first
            async for item in stream:
                yield item
        finally:
            await stream.aclose()

    return rest()


@dataclass(frozen=True)
class _Shape:
    """How one endpoint writes its answers: chat completions and text completions differ only here."""

    id_prefix: str
    whole: type[BaseModel]  # the unstreamed answer: id, model, choices, usage
    choice: Callable[[Choice], BaseModel]  # one finished choice of it
    chunk: type[BaseModel]  # a streamed event: id, created, model, choices, usage
    piece: Callable[[int, str, str | None], BaseModel]  # one choice's part of a chunk: (index, text, finish)
    opening: Callable[[int], BaseModel] | None = None  # the part that opens each choice's stream


_CHAT = _Shape(
    "chatcmpl",
    whole=p.ChatCompletion,
    choice=lambda c: p.ChatChoice(
        index=c.index, message=p.ResponseMessage(content=c.text), finish_reason=c.finish_reason
    ),
    chunk=p.ChatCompletionChunk,
    piece=lambda index, text, finish: p.ChunkChoice(
        index=index, delta=p.ChunkDelta(content=(text or None) if finish else text), finish_reason=finish
    ),
    opening=lambda index: p.ChunkChoice(index=index, delta=p.ChunkDelta(role="assistant", content="")),
)

_TEXT = _Shape(
    "cmpl",
    whole=p.Completion,
    choice=lambda c: p.CompletionChoice(index=c.index, text=c.text, finish_reason=c.finish_reason),
    chunk=p.Completion,
    piece=lambda index, text, finish: p.CompletionChoice(index=index, text=text, finish_reason=finish),
)


async def _answer(
    service: ChatService,
    request: GenerationRequest,
    body: p._SamplingFields,
    rater: str | None,
    shape: _Shape,
    echo: str = "",
) -> JSONResponse | StreamingResponse:
    """One chat or text completion request answered whole, or streamed as SSE. `echo` opens each choice's
    text (a text completion's `echo`: its prompt)."""
    response_id = p.new_id(shape.id_prefix)
    if not body.stream:
        choices = await service.complete(request, body.n, response_id=response_id, rater=rater)
        usage = _usage(choices)  # counted before the echo joins the text
        if echo:
            choices = [replace(c, text=echo + c.text) for c in choices]
        answer = shape.whole(
            id=response_id, model=body.model, choices=[shape.choice(c) for c in choices], usage=usage
        )
        return JSONResponse(p.dump(answer))
    stream = await _primed(service.stream(request, body.n, response_id=response_id, rater=rater))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    created = int(time.time())

    def chunk(pieces: list[BaseModel], usage: p.Usage | None = None) -> str:
        return _sse(
            p.dump(
                shape.chunk(id=response_id, created=created, model=body.model, choices=pieces, usage=usage)
            )
        )

    text_events = _TextEvents(lambda index, text: chunk([shape.piece(index, text, None)]))
    echoed: set[int] = set()

    def event(index: int, delta: Delta) -> str | None:
        text = delta.text
        if echo and index not in echoed:
            echoed.add(index)
            text = echo + text
        if not (text or delta.finish_reason):
            return None
        if delta.finish_reason is None:
            return text_events(index, text)
        return chunk([shape.piece(index, text, delta.finish_reason)])

    opening = [chunk([shape.opening(i)]) for i in range(body.n)] if shape.opening else None
    return _event_stream(stream, body.n, include_usage, chunk, event, opening)


def build_router(service: ChatService, auth: Auth) -> APIRouter:
    router = APIRouter()
    api = Depends(auth.require_api)
    admin = Depends(auth.require_admin)

    @router.get("/health")
    async def health():
        """Readiness: 503 naming the engine and why when it cannot serve (an engine in another process is
        probed, cached for a few seconds). Container health checks that must not fail with a remote engine
        use /health/live."""
        engine = service.engine
        problem = await engine.health_problem()
        if problem is not None:
            raise ApiError(503, problem, code="engine_unavailable")
        body = {"status": "ok", "model": engine.model_name, "adapters": len(engine.adapters())}
        replicas = engine.replica_status()  # replicas of one base: each one's state
        if replicas:
            body["replicas"] = replicas
        return body

    @router.get("/health/live")
    async def liveness():
        """Liveness: 200 while this process answers, whatever the engine's state."""
        return {"status": "alive"}

    @router.get("/v1/models", response_model=None)
    async def list_models(principal: Principal = api):
        cards = [p.ModelCard(**vars(m)) for m in service.models()]
        return JSONResponse(p.dump(p.ModelList(data=cards)))

    @router.get("/v1/models/{model_id:path}", response_model=None)
    async def get_model(model_id: str, principal: Principal = api):
        for m in service.models():
            if m.id == model_id:
                return JSONResponse(
                    {k: v for k, v in p.dump(p.ModelCard(**vars(m))).items() if v is not None}
                )
        raise ApiError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: p.ChatCompletionRequest, principal: Principal = api):
        request = GenerationRequest(
            messages=[m.as_template_message() for m in body.messages],
            sampling=_sampling(body, body.token_limit()),
            adapter=service.adapter_for(body.model),
        )
        return await _answer(service, request, body, principal.name, _CHAT)

    @router.post("/v1/completions", response_model=None)
    async def completions(body: p.CompletionRequest, principal: Principal = api):
        prompt = body.prompt_text()
        request = GenerationRequest(
            prompt=prompt, sampling=_sampling(body, body.max_tokens), adapter=service.adapter_for(body.model)
        )
        return await _answer(service, request, body, principal.name, _TEXT, echo=prompt if body.echo else "")

    @router.post("/v1/load_lora_adapter", response_model=None)
    async def load_lora_adapter(body: p.LoadLoraAdapterRequest, principal: Principal = admin):
        info = await service.load_adapter(body.lora_name, Path(body.lora_path))
        answer = {
            "object": "lora_adapter",
            "name": info.name,
            "path": str(info.path),
            "rank": info.rank,
            "kind": info.kind,  # "model": a full or freeze fine-tune, served by an engine of its own
        }
        if info.failed_on:  # replicas: loaded on some only; each failing replica's URL and reason
            return {**answer, "status": "partial", "failed_on": info.failed_on}
        return {**answer, "status": "loaded"}

    @router.post("/v1/unload_lora_adapter", response_model=None)
    async def unload_lora_adapter(body: p.UnloadLoraAdapterRequest, principal: Principal = admin):
        await service.unload_adapter(body.lora_name)
        return {"object": "lora_adapter", "name": body.lora_name, "status": "unloaded"}

    @router.get("/metrics", response_model=None)
    async def metrics(principal: Principal = api):
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    return router
