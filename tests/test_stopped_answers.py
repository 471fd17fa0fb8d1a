"""An answer its reader stops (the Chat tab's Stop, issue 14 finding 2) is stored as it was shown: the service
holds what it handed over until the reader says what it showed, and stores what was taken when nobody does."""

from __future__ import annotations

import asyncio

import pytest

from hub import chat_service as service_module
from hub.chat_service import ChatService
from hub.metrics import Metrics
from serving.engine import GenerationRequest, SamplingParams
from serving.loader import load_local_engine


@pytest.fixture(scope="module")
def engine(demo_model):
    # one delta per token (no grouping of tokens made within a few ms): the test counts tokens by deltas
    return load_local_engine(demo_model, dtype="float32", stream_interval_s=0)


def ask() -> GenerationRequest:
    return GenerationRequest(
        messages=[{"role": "user", "content": "Convert 3 km to m."}],
        sampling=SamplingParams(max_tokens=24, temperature=0, ignore_eos=True),
    )


async def stop_after(chat: ChatService, deltas: int, response_id: str) -> list[str]:
    """Read `deltas` deltas, then stop reading (as a cancelled page does); returns the texts read."""
    texts = []
    stream = chat.stream(ask(), response_id=response_id, source="ui", keep_partial=True)
    async for _, delta in stream:
        texts.append(delta.text)
        if len(texts) == deltas:
            break
    await stream.aclose()
    return texts


class Recorded(list):
    """The generations the service stored, in order (its recorder)."""

    async def __call__(self, item) -> None:
        self.append(item)


def test_a_stopped_answer_is_stored_with_the_text_its_reader_showed(engine):
    stored = Recorded()

    async def run():
        await engine.start()
        try:
            chat = ChatService(engine, Metrics(), recorder=stored)
            read = await stop_after(chat, 5, "chatcmpl-stop1")
            assert stored == []  # held until the reader says what it showed
            shown = "".join(read[:4])  # the page never drew the last delta it was sent
            assert await chat.store_stopped("chatcmpl-stop1", shown) is True
            assert await chat.store_stopped("chatcmpl-stop1", shown) is False  # stored once
            return shown
        finally:
            await engine.close()

    shown = asyncio.run(run())
    [record_] = stored
    assert (record_.text, record_.finish_reason, record_.completion_tokens) == (shown, "abort", 4)


def test_a_stopped_answer_nobody_claims_is_stored_as_taken(engine, monkeypatch):
    monkeypatch.setattr(service_module, "STOPPED_CLAIM_S", 0.2)
    stored = Recorded()

    async def run():
        await engine.start()
        try:
            chat = ChatService(engine, Metrics(), recorder=stored)
            read = await stop_after(chat, 3, "chatcmpl-stop2")
            await asyncio.sleep(0.6)
            return read
        finally:
            await engine.close()

    read = asyncio.run(run())
    [record_] = stored  # the third delta was handed over but the reader never came back for more
    assert (record_.text, record_.completion_tokens) == ("".join(read[:2]), 2)
