"""Stores every served answer in the feedback store, so that whoever got it can rate it by its response id."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from feedback.store import Store

from .chat_service import GenerationRecord, Recorder


def store_recorder(store: Store) -> Recorder:
    async def record(item: GenerationRecord) -> None:
        request = item.request
        prompt = (
            request.messages
            if request.messages is not None
            else [{"role": "user", "content": request.prompt or ""}]
        )
        params = {k: v for k, v in asdict(request.sampling).items() if v not in (None, [], False)}
        if request.messages is None:
            params["raw_prompt"] = True  # a /v1/completions prompt, stored as one user turn
        await asyncio.to_thread(
            store.add_generation,
            prompt=prompt,
            model=item.model,
            text=item.text,
            conversation_id=item.conversation_id,
            response_id=item.response_id or None,
            choice_index=item.choice,
            params=params,
            prompt_tokens=item.prompt_tokens,
            completion_tokens=item.completion_tokens,
            latency_ms=item.latency_s * 1000,
            ttft_ms=None if item.ttft_s is None else item.ttft_s * 1000,
            finish_reason=item.finish_reason,
            source=item.source,
            rater=item.rater,
        )

    return record
