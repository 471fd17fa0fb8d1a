"""OpenAI-compatible routes: models, chat and text completions (streamed as SSE), adapter load/unload, health."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from serving.engine import GenerationRequest, SamplingParams
from serving.errors import EngineError

from . import protocol as p
from .auth import Auth, Principal
from .errors import ApiError, error_body
from .service import ChatService, Choice


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


def _sse_error(exc: EngineError) -> str:
    """An error after the stream began (a timeout, a failed engine): one `data: {"error": ...}` event, as
    OpenAI and vLLM send it, and no [DONE]."""
    return _sse(error_body(exc.status, exc.message, exc.param, exc.code, exc.error_type))


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


def build_router(service: ChatService, auth: Auth) -> APIRouter:
    router = APIRouter()
    api = Depends(auth.require_api)
    admin = Depends(auth.require_admin)

    @router.get("/health")
    async def health():
        ready = getattr(service.engine, "ready", True)
        if not ready:
            raise ApiError(503, "the engine is not ready", code="engine_unavailable")
        return {
            "status": "ok",
            "model": service.engine.model_name,
            "adapters": len(service.engine.adapters()),
        }

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
        response_id = p.new_id("chatcmpl")
        if not body.stream:
            choices = await service.complete(request, body.n, response_id=response_id, rater=principal.name)
            return JSONResponse(
                p.dump(
                    p.ChatCompletion(
                        id=response_id,
                        model=body.model,
                        choices=[
                            p.ChatChoice(
                                index=c.index,
                                message=p.ResponseMessage(content=c.text),
                                finish_reason=c.finish_reason,
                            )
                            for c in choices
                        ],
                        usage=_usage(choices),
                    )
                )
            )
        stream = await _primed(service.stream(request, body.n, response_id=response_id, rater=principal.name))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        created = int(time.time())

        def chunk(choices: list[p.ChunkChoice], usage: p.Usage | None = None) -> str:
            return _sse(
                p.dump(
                    p.ChatCompletionChunk(
                        id=response_id, created=created, model=body.model, choices=choices, usage=usage
                    )
                )
            )

        async def events():
            totals = [Choice(index=i) for i in range(body.n)]
            for i in range(body.n):
                yield chunk([p.ChunkChoice(index=i, delta=p.ChunkDelta(role="assistant", content=""))])
            try:
                async for index, delta in stream:
                    totals[index].prompt_tokens = delta.prompt_tokens
                    totals[index].completion_tokens = delta.completion_tokens
                    if delta.text or delta.finish_reason:
                        content = delta.text if delta.text else None
                        yield chunk(
                            [
                                p.ChunkChoice(
                                    index=index,
                                    delta=p.ChunkDelta(content=content),
                                    finish_reason=delta.finish_reason,
                                )
                            ]
                        )
            except EngineError as exc:  # the status line is sent: the error goes in the stream
                yield _sse_error(exc)
                return
            if include_usage:
                yield chunk([], usage=_usage(totals))
            yield _sse("[DONE]")

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @router.post("/v1/completions", response_model=None)
    async def completions(body: p.CompletionRequest, principal: Principal = api):
        prompt = body.prompt_text()
        request = GenerationRequest(
            prompt=prompt, sampling=_sampling(body, body.max_tokens), adapter=service.adapter_for(body.model)
        )
        response_id = p.new_id("cmpl")
        prefix = prompt if body.echo else ""
        if not body.stream:
            choices = await service.complete(request, body.n, response_id=response_id, rater=principal.name)
            return JSONResponse(
                p.dump(
                    p.Completion(
                        id=response_id,
                        model=body.model,
                        choices=[
                            p.CompletionChoice(
                                index=c.index, text=prefix + c.text, finish_reason=c.finish_reason
                            )
                            for c in choices
                        ],
                        usage=_usage(choices),
                    )
                )
            )
        stream = await _primed(service.stream(request, body.n, response_id=response_id, rater=principal.name))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        created = int(time.time())

        def chunk(choices: list[p.CompletionChoice], usage: p.Usage | None = None) -> str:
            return _sse(
                p.dump(
                    p.Completion(
                        id=response_id, created=created, model=body.model, choices=choices, usage=usage
                    )
                )
            )

        async def events():
            totals = [Choice(index=i) for i in range(body.n)]
            echoed = set()
            try:
                async for index, delta in stream:
                    totals[index].prompt_tokens = delta.prompt_tokens
                    totals[index].completion_tokens = delta.completion_tokens
                    text = delta.text
                    if prefix and index not in echoed:
                        echoed.add(index)
                        text = prefix + text
                    if text or delta.finish_reason:
                        yield chunk(
                            [p.CompletionChoice(index=index, text=text, finish_reason=delta.finish_reason)]
                        )
            except EngineError as exc:  # the status line is sent: the error goes in the stream
                yield _sse_error(exc)
                return
            if include_usage:
                yield chunk([], usage=_usage(totals))
            yield _sse("[DONE]")

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @router.post("/v1/load_lora_adapter", response_model=None)
    async def load_lora_adapter(body: p.LoadLoraAdapterRequest, principal: Principal = admin):
        info = await service.load_adapter(body.lora_name, Path(body.lora_path))
        return {
            "object": "lora_adapter",
            "name": info.name,
            "path": str(info.path),
            "rank": info.rank,
            "status": "loaded",
        }

    @router.post("/v1/unload_lora_adapter", response_model=None)
    async def unload_lora_adapter(body: p.UnloadLoraAdapterRequest, principal: Principal = admin):
        await service.unload_adapter(body.lora_name)
        return {"object": "lora_adapter", "name": body.lora_name, "status": "unloaded"}

    @router.get("/metrics", response_model=None)
    async def metrics(principal: Principal = api):
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    return router
