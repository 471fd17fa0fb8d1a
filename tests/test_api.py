"""The OpenAI-compatible API of a real `tunehub serve` process: models, chat and text completions (plain and
streamed as SSE), sampling controls, /health and /metrics, checked with the official `openai` client and
against OpenAI's own JSON schemas.

Run: .venv/bin/python -m pytest tests/test_api.py -q
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.openai_schema import validate

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def base_id(hub) -> str:
    return httpx.get(f"{hub.url}/v1/models").json()["data"][0]["id"]


@pytest.fixture(scope="module")
def client(hub) -> openai.OpenAI:
    return openai.OpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def post(hub, path: str, body: dict) -> dict:
    response = httpx.post(f"{hub.url}{path}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def sse_events(hub, path: str, body: dict) -> list[str]:
    """The payloads of every `data:` line of a streamed answer, in order (the last one is "[DONE]")."""
    with httpx.stream("POST", f"{hub.url}{path}", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read().decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [line.removeprefix("data: ") for line in lines]


def metric_samples(hub) -> dict[str, list]:
    """Every sample of /metrics, by metric family name, with the family type under "<name>:type"."""
    response = httpx.get(f"{hub.url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {}
    for family in text_string_to_metric_families(response.text):
        families[family.name] = family.samples
        families[f"{family.name}:type"] = family.type
    return families


def sample_value(families: dict, sample_name: str, **labels) -> float:
    family = sample_name.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
    return sum(
        s.value
        for s in families.get(family, [])
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())
    )


# ----- models and health ------------------------------------------------------------------------------------


def test_health(hub, base_id):
    response = httpx.get(f"{hub.url}/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["model"] == base_id


def test_models_list_the_base(hub, client, demo_model):
    body = httpx.get(f"{hub.url}/v1/models").json()
    validate(body, "ListModelsResponse")
    bases = [card for card in body["data"] if "parent" not in card]
    assert [card["id"] for card in bases] == [demo_model.name]
    validate(bases[0], "Model")
    assert demo_model.name in [m.id for m in client.models.list().data]
    one = httpx.get(f"{hub.url}/v1/models/{demo_model.name}").json()
    validate(one, "Model")
    assert one["id"] == demo_model.name


# ----- chat completions -------------------------------------------------------------------------------------


def test_chat_through_the_openai_client(hub, client, base_id):
    completion = client.chat.completions.create(
        model=base_id, messages=QUESTION, max_tokens=12, temperature=0
    )
    assert completion.object == "chat.completion"
    assert completion.model == base_id
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 0 < usage.completion_tokens <= 12 and usage.prompt_tokens > 5

    raw = post(
        hub,
        "/v1/chat/completions",
        {"model": base_id, "messages": QUESTION, "max_tokens": 12, "temperature": 0},
    )
    validate(raw, "CreateChatCompletionResponse")
    assert raw["choices"][0]["message"]["content"] == choice.message.content  # greedy: same answer


def test_chat_stream_through_the_openai_client(client, base_id):
    plain = client.chat.completions.create(model=base_id, messages=QUESTION, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(
        model=base_id, messages=QUESTION, max_tokens=12, temperature=0, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == plain.choices[0].message.content
    assert finish == [plain.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1


def test_chat_stream_raw_sse_with_usage(hub, base_id):
    body = {"model": base_id, "messages": QUESTION, "max_tokens": 6, "temperature": 0}
    events = sse_events(
        hub, "/v1/chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert events[-1] == "[DONE]"
    assert "[DONE]" not in events[:-1]
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
        assert chunk["object"] == "chat.completion.chunk"
    *content_chunks, usage_chunk = chunks
    assert usage_chunk["choices"] == []
    assert all(c["usage"] is None for c in content_chunks)
    assert content_chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["choices"][0]["finish_reason"] is None for c in content_chunks[:-1])

    plain = post(hub, "/v1/chat/completions", body)
    usage = usage_chunk["usage"]
    assert usage == plain["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if content_chunks[-1]["choices"][0]["finish_reason"] == "length":
        assert usage["completion_tokens"] == 6
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in content_chunks)
    assert text == plain["choices"][0]["message"]["content"]


def test_stream_without_usage_has_no_usage_chunk(hub, base_id):
    events = sse_events(
        hub, "/v1/chat/completions", {"model": base_id, "messages": QUESTION, "max_tokens": 3, "stream": True}
    )
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["choices"] for c in chunks)
    assert all(c.get("usage") is None for c in chunks)


def test_n_choices(client, hub, base_id):
    completion = client.chat.completions.create(
        model=base_id, messages=QUESTION, max_tokens=6, temperature=1, seed=7, n=3
    )
    assert sorted(c.index for c in completion.choices) == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") for c in completion.choices)
    assert completion.usage.completion_tokens <= 3 * 6

    events = sse_events(
        hub,
        "/v1/chat/completions",
        {"model": base_id, "messages": QUESTION, "max_tokens": 4, "n": 3, "stream": True},
    )
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    finished = sorted(c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"])
    assert finished == [0, 1, 2]


def test_seed_makes_sampling_reproducible(client, base_id):
    def sample(seed: int) -> str:
        completion = client.chat.completions.create(
            model=base_id,
            messages=[{"role": "user", "content": "Tell me about yourself."}],
            max_tokens=10,
            temperature=1,
            seed=seed,
        )
        return completion.choices[0].message.content

    assert sample(1234) == sample(1234)
    # the same seed agreeing means something only if different seeds sample differently
    assert len({sample(seed) for seed in (1, 2, 3, 4)}) > 1


def test_stop_string_truncates(client, base_id):
    full = client.chat.completions.create(model=base_id, messages=QUESTION, max_tokens=16, temperature=0)
    text = full.choices[0].message.content
    words = text.split()
    assert len(words) >= 3, text
    stop = " " + words[1]
    stopped = client.chat.completions.create(
        model=base_id, messages=QUESTION, max_tokens=16, temperature=0, stop=[stop, "\u2603never"]
    )
    assert stopped.choices[0].message.content == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens < full.usage.completion_tokens


def test_max_tokens_gives_length(client, base_id):
    completion = client.chat.completions.create(model=base_id, messages=QUESTION, max_tokens=2, temperature=0)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 2
    # max_completion_tokens is OpenAI's newer name for the same limit
    newer = client.chat.completions.create(
        model=base_id, messages=QUESTION, max_completion_tokens=3, temperature=0
    )
    assert newer.choices[0].finish_reason == "length"
    assert newer.usage.completion_tokens == 3


# ----- text completions -------------------------------------------------------------------------------------


def test_completions(hub, client, base_id):
    prompt = "The capital of France is"
    body = {"model": base_id, "prompt": prompt, "max_tokens": 8, "temperature": 0}
    raw = post(hub, "/v1/completions", body)
    validate(raw, "CreateCompletionResponse")
    assert raw["object"] == "text_completion"
    assert raw["choices"][0]["finish_reason"] in ("stop", "length")
    text = raw["choices"][0]["text"]
    assert raw["usage"]["completion_tokens"] <= 8

    echoed = post(hub, "/v1/completions", {**body, "echo": True})
    validate(echoed, "CreateCompletionResponse")
    assert echoed["choices"][0]["text"] == prompt + text

    through_client = client.completions.create(model=base_id, prompt=prompt, max_tokens=8, temperature=0)
    assert through_client.choices[0].text == text


def test_completions_stream(hub, base_id):
    prompt = "The capital of France is"
    body = {"model": base_id, "prompt": prompt, "max_tokens": 8, "temperature": 0}
    plain = post(hub, "/v1/completions", body)
    events = sse_events(
        hub,
        "/v1/completions",
        {**body, "stream": True, "echo": True, "stream_options": {"include_usage": True}},
    )
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    *content_chunks, usage_chunk = chunks
    for chunk in content_chunks[:-1]:
        assert chunk["choices"][0]["finish_reason"] is None
        # OpenAI's own stream sends finish_reason null until the last chunk, which its (non-stream) schema
        # does not allow: validate everything else of these chunks
        patched = {**chunk, "choices": [{**c, "finish_reason": "stop"} for c in chunk["choices"]]}
        validate(patched, "CreateCompletionResponse")
    validate(content_chunks[-1], "CreateCompletionResponse")
    validate(usage_chunk, "CreateCompletionResponse")
    assert content_chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    text = "".join(c["choices"][0]["text"] for c in content_chunks)
    assert text == prompt + plain["choices"][0]["text"]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == plain["usage"]


def test_text_chunks_are_the_bytes_the_protocol_models_make():
    """Text-only chunks (one per token) are filled into a pre-rendered event: byte for byte what building the
    chunk model gives, for any text, and a model name holding the marker falls back to building it."""
    from hub.api import protocol as p
    from hub.api.openai_compat import _sse, _TextEvents

    for model in ("demo", "odd \x00tunehub-text\x00 name"):

        def render(index: int, text: str, model: str = model) -> str:
            chunk = p.ChatCompletionChunk(
                id="chatcmpl-1",
                created=1,
                model=model,
                choices=[p.ChunkChoice(index=index, delta=p.ChunkDelta(content=text))],
            )
            return _sse(p.dump(chunk))

        events = _TextEvents(render)
        for index in (0, 1):
            for text in ("Paris", ' "quoted"\n\\ é 日本 \U0001f600', "\x00tunehub-text\x00", "\ufffd"):
                assert events(index, text) == render(index, text)


# ----- metrics ----------------------------------------------------------------------------------------------


def test_metrics_after_traffic(hub, client, base_id):
    before = metric_samples(hub)
    completion = client.chat.completions.create(model=base_id, messages=QUESTION, max_tokens=5, temperature=0)
    list(client.chat.completions.create(model=base_id, messages=QUESTION, max_tokens=3, stream=True))
    after = metric_samples(hub)

    route = {"route": "/v1/chat/completions", "status": "200"}
    assert after["tunehub_requests:type"] == "counter"
    assert (
        sample_value(after, "tunehub_requests_total", **route)
        >= sample_value(before, "tunehub_requests_total", **route) + 2
    )
    label = {"model": base_id}
    prompt_delta = sample_value(after, "tunehub_prompt_tokens_total", **label) - sample_value(
        before, "tunehub_prompt_tokens_total", **label
    )
    completion_delta = sample_value(after, "tunehub_completion_tokens_total", **label) - sample_value(
        before, "tunehub_completion_tokens_total", **label
    )
    assert prompt_delta == 2 * completion.usage.prompt_tokens
    assert completion.usage.completion_tokens < completion_delta <= completion.usage.completion_tokens + 3
    for histogram in ("tunehub_time_to_first_token_seconds", "tunehub_generation_seconds"):
        assert after[f"{histogram}:type"] == "histogram"
        assert (
            sample_value(after, f"{histogram}_count", **label)
            == sample_value(before, f"{histogram}_count", **label) + 2
        )
        assert any(s.name == f"{histogram}_bucket" for s in after[histogram])
    assert after["tunehub_batch_size:type"] == "histogram"
    assert (
        sample_value(after, "tunehub_batch_size_count")
        >= sample_value(before, "tunehub_batch_size_count") + 5
    )
    assert after["tunehub_loaded_adapters:type"] == "gauge"
    loaded = httpx.get(f"{hub.url}/health").json()["adapters"]
    assert sample_value(after, "tunehub_loaded_adapters") == loaded


# ----- a client that goes away ------------------------------------------------------------------------------


@pytest.fixture
def talkative_adapter(hub, adapters_dir):
    """Adapter `c` on the quick demo model; asked with ignore_eos, its stream would go on to max_tokens."""
    name = "talkative"
    response = httpx.post(
        f"{hub.url}/v1/load_lora_adapter",
        json={"lora_name": name, "lora_path": str(adapters_dir / "c")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    yield name
    httpx.post(f"{hub.url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)


def test_client_disconnect_mid_stream(hub, client, base_id, talkative_adapter):
    body = {
        "model": talkative_adapter,
        "messages": [{"role": "user", "content": "Tell me a long story"}],
        "max_tokens": 400,
        "temperature": 0,
        "ignore_eos": True,  # a stream that would certainly run to the 400 tokens
        "stream": True,
    }
    # what the adapter answers before any client went away, to find it unharmed afterwards
    short = {"model": talkative_adapter, "messages": body["messages"], "max_tokens": 20, "temperature": 0}
    before = client.chat.completions.create(**short, extra_body={"ignore_eos": True})
    steps_before = sample_value(metric_samples(hub), "tunehub_batch_size_count")
    received = 0
    with httpx.stream("POST", f"{hub.url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                received += 1
                if received == 2:
                    break  # leaving the block closes the connection mid-stream
    # the server drops the row: decode steps stop well before the 400 tokens asked for
    deadline, steps, previous = time.monotonic() + 15, None, -1.0
    while time.monotonic() < deadline:
        steps = sample_value(metric_samples(hub), "tunehub_batch_size_count")
        if steps == previous:
            break
        previous = steps
        time.sleep(0.5)
    assert steps == previous, "decode steps kept running after the client went away"
    assert steps - steps_before < 200

    assert httpx.get(f"{hub.url}/health").json()["status"] == "ok"
    answer = client.chat.completions.create(model=base_id, messages=QUESTION, max_tokens=4, temperature=0)
    assert answer.choices[0].message.content
    # the adapter itself is unharmed too: greedy, the same answer as before, to max_tokens
    after = client.chat.completions.create(**short, extra_body={"ignore_eos": True})
    assert after.choices[0].finish_reason == "length"
    assert after.choices[0].message.content == before.choices[0].message.content
