"""Bad requests to a real `tunehub serve`: each gets OpenAI's error envelope (validated against OpenAI's
ErrorResponse schema) with the right status and a message that names the problem, the `openai` client
raises the matching exception class, and the server keeps serving afterwards.

Run: .venv/bin/python -m pytest tests/test_api_errors.py -q
"""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.openai_schema import validate

MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def base_id(hub) -> str:
    return httpx.get(f"{hub.url}/v1/models").json()["data"][0]["id"]


@pytest.fixture(scope="module")
def client(hub) -> openai.OpenAI:
    return openai.OpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def expect_error(response: httpx.Response, status: int) -> dict:
    """The `error` object of a response that must be an OpenAI error envelope with `status`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    validate(body, "ErrorResponse")
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return error


def chat_error(hub, body: dict, status: int = 400) -> dict:
    return expect_error(httpx.post(f"{hub.url}/v1/chat/completions", json=body, timeout=60), status)


def test_malformed_json(hub, base_id):
    response = httpx.post(
        f"{hub.url}/v1/chat/completions",
        content=b'{"model": "' + base_id.encode() + b'", "messages": [',
        headers={"content-type": "application/json"},
    )
    error = expect_error(response, 400)
    assert "JSON" in error["message"]
    assert error["type"] == "invalid_request_error"


# each case: the fields that replace the good request's, the `param` the error must name, and words of its
# message (besides the parameter's name)
INVALID_CHAT_FIELDS = {
    "messages a string": ({"messages": "hi"}, "messages", ["list"]),
    "temperature a word": ({"temperature": "hot"}, "temperature", ["number", "'hot'"]),
    "temperature too high": ({"temperature": 2.5}, "temperature", ["2.5"]),
    "temperature negative": ({"temperature": -1}, "temperature", ["-1"]),
    "top_p zero": ({"top_p": 0}, "top_p", ["greater than 0"]),
    "top_p above one": ({"top_p": 1.5}, "top_p", ["1.5"]),
    "max_tokens zero": ({"max_tokens": 0}, "max_tokens", ["greater than or equal to 1", "0"]),
    "max_tokens negative": ({"max_tokens": -5}, "max_tokens", ["-5"]),
    "n zero": ({"n": 0}, "n", ["greater than or equal to 1"]),
    "n too many": ({"n": 100}, "n", ["100"]),
    "empty messages": ({"messages": []}, "messages", ["at least 1"]),
    "unknown role": ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role", ["'wizard'"]),
    "message without content": ({"messages": [{"role": "user"}]}, "messages.0.content", ["required"]),
    "unknown field": ({"best_of": 2}, "best_of", ["unrecognized"]),
    "presence penalty": ({"presence_penalty": 1}, "presence_penalty", ["not supported"]),
    "frequency penalty": ({"frequency_penalty": -0.5}, "frequency_penalty", ["not supported"]),
    "logprobs": ({"logprobs": True}, "logprobs", ["not supported"]),
    "stream_options without stream": ({"stream_options": {"include_usage": True}}, None, ["stream_options"]),
    "seed negative": ({"seed": -1}, "seed", ["-1"]),
    "model missing": ({"model": None}, "model", ["string"]),
}


@pytest.mark.parametrize("fields, param, words", INVALID_CHAT_FIELDS.values(), ids=INVALID_CHAT_FIELDS)
def test_invalid_chat_request(hub, base_id, fields, param, words):
    body = {"model": base_id, "messages": MESSAGES, "max_tokens": 4, **fields}
    error = chat_error(hub, body)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    for word in [param or "", *words]:
        assert word in error["message"], error["message"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_temperature_not_a_finite_number(hub, base_id, literal):
    # Python's json (and the server's) read these JavaScript literals; they are still not temperatures
    messages = '[{"role": "user", "content": "Hi"}]'
    body = f'{{"model": "{base_id}", "messages": {messages}, "temperature": {literal}}}'
    response = httpx.post(
        f"{hub.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    error = expect_error(response, 400)
    assert error["param"] == "temperature"
    assert "finite" in error["message"]


def test_too_many_stop_strings(hub, base_id):
    error = chat_error(hub, {"model": base_id, "messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]})
    assert error["param"].startswith("stop")
    assert "stop" in error["message"] and "at most 4" in error["message"]


def test_unknown_model(hub, client):
    error = chat_error(hub, {"model": "no-such-model", "messages": MESSAGES}, status=404)
    assert error["param"] == "model"
    assert error["code"] == "model_not_found"
    assert "no-such-model" in error["message"]
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=4)
    assert raised.value.status_code == 404
    assert raised.value.param == "model"
    assert "no-such-model" in raised.value.message

    error = expect_error(httpx.get(f"{hub.url}/v1/models/no-such-model"), 404)
    assert error["param"] == "model" and "no-such-model" in error["message"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_prompt_longer_than_the_context(hub, base_id, client):
    long_message = [{"role": "user", "content": "word " * 2000}]
    error = chat_error(hub, {"model": base_id, "messages": long_message, "max_tokens": 4})
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "messages"
    assert "maximum context length" in error["message"] and "512" in error["message"]
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=base_id, messages=long_message, max_tokens=4)
    assert raised.value.code == "context_length_exceeded"

    prompt_error = expect_error(
        httpx.post(
            f"{hub.url}/v1/completions",
            json={"model": base_id, "prompt": "word " * 2000, "max_tokens": 4},
            timeout=60,
        ),
        400,
    )
    assert prompt_error["code"] == "context_length_exceeded"


def test_max_tokens_beyond_the_context(hub, base_id):
    error = chat_error(hub, {"model": base_id, "messages": MESSAGES, "max_tokens": 600})
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "max_tokens"
    assert "600" in error["message"] and "512" in error["message"]


def test_openai_client_raises_bad_request(client, base_id):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=base_id, messages=MESSAGES, temperature=2.5)
    assert raised.value.status_code == 400
    assert raised.value.param == "temperature"
    assert raised.value.type == "invalid_request_error"
    assert "temperature" in raised.value.message
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=base_id, messages=MESSAGES, extra_body={"nonsense": 1})
    assert raised.value.param == "nonsense"
    with pytest.raises(openai.BadRequestError):  # errors come as HTTP errors before a stream starts
        client.chat.completions.create(model=base_id, messages=[], stream=True)


INVALID_COMPLETION_FIELDS = {
    "two prompts": ({"prompt": ["a", "b"]}, "prompt", ["at most 1"]),
    "suffix": ({"suffix": "end"}, "suffix", ["not supported"]),
    "max_tokens zero": ({"max_tokens": 0}, "max_tokens", ["0"]),
    "unknown field": ({"messages": MESSAGES}, "messages", ["unrecognized"]),
}


@pytest.mark.parametrize(
    "fields, param, words", INVALID_COMPLETION_FIELDS.values(), ids=INVALID_COMPLETION_FIELDS
)
def test_invalid_completion_request(hub, base_id, fields, param, words):
    body = {"model": base_id, "prompt": "Hello", **fields}
    error = expect_error(httpx.post(f"{hub.url}/v1/completions", json=body), 400)
    assert error["param"].startswith(param)
    for word in [param, *words]:
        assert word in error["message"], error["message"]


def test_unknown_route(hub):
    error = expect_error(httpx.get(f"{hub.url}/v1/no-such-route"), 404)
    assert "/v1/no-such-route" in error["message"]
    assert error["type"] == "not_found_error"
    error = expect_error(httpx.post(f"{hub.url}/v1/embeddings", json={"input": "x"}), 404)
    assert "/v1/embeddings" in error["message"]


def test_wrong_method(hub):
    error = expect_error(httpx.get(f"{hub.url}/v1/chat/completions"), 405)
    assert "GET" in error["message"] and "POST" in error["message"]


def test_still_serves_after_the_errors(client, base_id):
    completion = client.chat.completions.create(model=base_id, messages=MESSAGES, max_tokens=4, temperature=0)
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
