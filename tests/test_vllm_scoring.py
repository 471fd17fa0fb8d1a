"""VLLMEngine.score (issue 13, item 4c): the replay's log-probabilities through vLLM's /tokenize and the
``prompt_logprobs`` of /v1/completions. No vLLM runs here and `tunehub engine` does not answer those two, so
a stand-in transport answers in vLLM's documented shapes (TokenizeResponse ``{"tokens"}``; a completion
choice's ``prompt_logprobs``: None for the first token, then ``{token_id: {"logprob", "rank",
"decoded_token"}}`` per position) from a real local engine; the vLLM client must give the local engine's
own figures back.

Run: .venv/bin/python -m pytest tests/test_vllm_scoring.py -q
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from serving.engine import GenerationRequest, ScoreRequest
from serving.vllm import VLLMEngine

MESSAGES = [{"role": "user", "content": "What is the capital of Spain?"}]


def vllm_stand_in(local, seen: list[dict]):
    """An httpx transport answering /tokenize and scoring /v1/completions the way vLLM does."""

    async def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append({"path": request.url.path, **body})
        if request.url.path == "/tokenize":
            if "messages" in body:
                tokens = local.prompt_ids(GenerationRequest(messages=body["messages"]))
            else:
                add = body.get("add_special_tokens", True)
                tokens = local.tokenizer(body["prompt"], add_special_tokens=add)["input_ids"]
            return httpx.Response(200, json={"count": len(tokens), "max_model_len": 512, "tokens": tokens})
        assert request.url.path == "/v1/completions" and body["prompt_logprobs"] == 0
        adapter = None if body["model"] == "base" else body["model"]
        [scored] = await local.score(
            [ScoreRequest(prompt="", continuation_ids=body["prompt"], adapter=adapter)]
        )
        prompt_logprobs = [None] + [
            {str(token): {"logprob": lp, "rank": 1, "decoded_token": "?"}}
            for token, lp in zip(scored.token_ids[1:], scored.logprobs[1:], strict=True)
        ]
        choice = {"index": 0, "text": "x", "finish_reason": "length", "prompt_logprobs": prompt_logprobs}
        return httpx.Response(200, json={"object": "text_completion", "choices": [choice]})

    return httpx.MockTransport(handle)


def test_vllm_scores_give_the_engines_own_log_probabilities(demo_model, adapters_dir):
    from serving.loader import load_local_engine

    async def both():
        local = load_local_engine(demo_model, model_name="base", dtype="float32")
        await local.start()
        try:
            await local.load_adapter("b", adapters_dir / "b")
            seen: list[dict] = []
            remote = VLLMEngine("http://vllm.test", model_name="base")
            remote._client = httpx.AsyncClient(
                transport=vllm_stand_in(local, seen), base_url="http://vllm.test"
            )
            remote._up = True
            answer = local.tokenizer.encode(" Madrid is the capital.", add_special_tokens=False)
            requests = [
                ScoreRequest(messages=MESSAGES, continuation_ids=answer, adapter="b"),
                ScoreRequest(messages=MESSAGES, continuation=" Madrid is the capital."),
                ScoreRequest(prompt="The market opens early on Saturday mornings."),
            ]
            return await remote.score(requests), await local.score(requests), seen
        finally:
            await local.close()

    through_vllm, local, seen = asyncio.run(both())
    for remote_scores, local_scores in zip(through_vllm, local, strict=True):
        assert remote_scores.token_ids == local_scores.token_ids
        assert remote_scores.prompt_tokens == local_scores.prompt_tokens
        assert remote_scores.logprobs[0] is None
        assert remote_scores.logprobs[1:] == pytest.approx(local_scores.logprobs[1:], abs=1e-5)
    assert through_vllm[0].continuation_logprobs != through_vllm[1].continuation_logprobs  # adapter vs base
    completions = [s for s in seen if s["path"] == "/v1/completions"]
    assert {c["model"] for c in completions} == {"b", "base"} and all(
        c["max_tokens"] == 1 for c in completions
    )
