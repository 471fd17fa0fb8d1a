"""Limits (issue 7, item 5): per-key and per-rater rate limits (429 with Retry-After), a cap on running and
queued generations (503 at once when full, never a hang), a generation timeout that cancels the
generation, and a request body limit (413) — the pieces in-process, then against a real `tunehub serve`.

Run: .venv/bin/python -m pytest tests/test_limits.py -q
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import httpx
import pytest

from hub.errors import ApiError
from hub.limits import GenerationGate, RateLimiter, ServerBusy
from tests.support.openai_schema import validate
from tests.support.server import InProcessHub

API_KEY, ADMIN = "limits-key", "limits-admin"


def expect_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    validate(body, "ErrorResponse")
    return body["error"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ----- the pieces ----------------------------------------------------------------------------------------


def test_token_bucket_allows_a_burst_then_the_rate():
    now = [0.0]
    limiter = RateLimiter({"api": 60, "rater": 30}, burst=3, clock=lambda: now[0])
    for _ in range(3):
        limiter.check("api", "api")
    with pytest.raises(ApiError) as raised:
        limiter.check("api", "api")
    assert raised.value.status == 429 and raised.value.headers == {"Retry-After": "1"}
    assert "60 requests per minute" in raised.value.message
    now[0] += 1.0  # 60 per minute: one more a second
    limiter.check("api", "api")
    # each rater has a bucket of their own, with their own rate (30/min: 2 s for the next one)
    for _ in range(3):
        limiter.check("rater", "alice")
    with pytest.raises(ApiError) as raised:
        limiter.check("rater", "alice")
    assert raised.value.headers == {"Retry-After": "2"} and "'alice'" in raised.value.message
    limiter.check("rater", "bob")
    # admins are not limited
    for _ in range(100):
        limiter.check("admin", "admin")


def test_rate_limits_are_off_by_default():
    assert not RateLimiter({"api": 0, "rater": 0}).enabled


def test_the_gate_runs_queues_and_refuses_in_order():
    async def scenario():
        gate = GenerationGate(max_running=2, max_queued=2)
        await gate.acquire(1, None)
        await gate.acquire(1, None)
        order = []

        async def wait(name: str, n: int) -> None:
            await gate.acquire(n, 5)
            order.append(name)

        first = asyncio.create_task(wait("first", 1))
        second = asyncio.create_task(wait("second", 1))
        await asyncio.sleep(0)
        assert gate.queued == 2
        with pytest.raises(ServerBusy) as raised:  # the queue is full: refused at once
            await gate.acquire(1, 5)
        assert raised.value.status == 503 and raised.value.headers == {"Retry-After": "1"}
        gate.release(1)
        await first
        gate.release(1)
        await second
        assert order == ["first", "second"] and gate.running == 2 and gate.queued == 0
        # waiting longer than the timeout is a 503 too, and leaves nothing behind
        with pytest.raises(ServerBusy, match="within 0.05 s"):
            await gate.acquire(1, 0.05)
        assert gate.queued == 0 and gate.running == 2
        # a client that goes away while waiting leaves the queue
        gone = asyncio.create_task(gate.acquire(1, 5))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        assert gate.queued == 0
        gate.release(2)
        # more choices than max_running still run, alone
        await gate.acquire(5, None)
        assert gate.running == 5

    asyncio.run(scenario())


# ----- against a real server -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited_hub(tmp_path_factory, demo_model):
    """Rate limits on: 3 at once, then 60/min for the shared key and 30/min for each rater."""
    with InProcessHub(
        model=demo_model,
        data_dir=tmp_path_factory.mktemp("limited"),
        api_key=API_KEY,
        admin_password=ADMIN,
        extra_args=["--rate-limit-key", "60", "--rate-limit-rater", "30", "--rate-limit-burst", "3"],
    ) as process:
        yield process


def rater_key(hub) -> str:
    from feedback.store import Store

    name = f"rater-{uuid.uuid4().hex[:6]}"
    with Store(hub.data_dir / "feedback.db") as store:
        store.add_rater(name)
        return store.create_api_key(name)[1]


def test_rate_limits_answer_429_with_retry_after(limited_hub):
    url = f"{limited_hub.url}/v1/models"
    key = rater_key(limited_hub)
    statuses = [httpx.get(url, headers=bearer(API_KEY)).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    response = httpx.get(url, headers=bearer(API_KEY))
    error = expect_error(response, 429)
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert int(response.headers["retry-after"]) >= 1
    assert "shared API key" in error["message"]
    # a rater's key has a bucket of its own; the admin is never limited
    for _ in range(3):
        assert httpx.get(url, headers=bearer(key)).status_code == 200
    error = expect_error(httpx.get(url, headers=bearer(key)), 429)
    assert "rater" in error["message"]
    for _ in range(6):
        assert httpx.get(url, headers=bearer(ADMIN)).status_code == 200
    # a wrong key is a 401, not counted against anyone
    expect_error(httpx.get(url, headers=bearer("wrong")), 401)
    # the bucket refills: 60 per minute is one a second
    time.sleep(int(response.headers["retry-after"]) + 0.2)
    assert httpx.get(url, headers=bearer(API_KEY)).status_code == 200


@pytest.fixture(scope="module")
def busy_hub(tmp_path_factory, demo_model):
    """One generation at a time, one more waiting, half a second per generation, 64 KiB bodies."""
    with InProcessHub(
        model=demo_model,
        data_dir=tmp_path_factory.mktemp("busy"),
        extra_args=[
            "--max-concurrent-generations",
            "1",
            "--max-queued-generations",
            "1",
            "--generation-timeout",
            "0.5",
            "--max-body-bytes",
            "65536",
        ],
    ) as process:
        yield process


def long_chat(model: str, **fields) -> dict:
    # ignore_eos and the whole context: seconds of decoding for the demo model, well past 0.5 s
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 480,
        "ignore_eos": True,
        "n": 8,
        **fields,
    }


def short_chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def test_a_full_server_answers_503_at_once_and_times_out_a_long_generation(busy_hub):
    url = busy_hub.url
    model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
    events: list[dict] = []
    started = threading.Event()

    def stream_long() -> None:
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=long_chat(model, stream=True), timeout=60
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    events.append(json.loads(line[6:]))
                    started.set()

    holder = threading.Thread(target=stream_long)
    holder.start()
    assert started.wait(30)
    # the one slot is taken: one request may wait, the next is refused at once
    queued: list[httpx.Response] = []
    waiter = threading.Thread(
        target=lambda: queued.append(
            httpx.post(f"{url}/v1/chat/completions", json=short_chat(model), timeout=60)
        )
    )
    waiter.start()
    time.sleep(0.05)
    began = time.monotonic()
    refused = httpx.post(f"{url}/v1/chat/completions", json=short_chat(model), timeout=60)
    assert time.monotonic() - began < 5
    if refused.status_code == 503:  # else the long stream already timed out (a very slow machine)
        error = expect_error(refused, 503)
        assert error["code"] == "server_busy" and "busy" in error["message"]
        assert refused.headers["retry-after"] == "1"
    holder.join(30)
    waiter.join(30)
    # the streamed generation was cut at the deadline with an error event in the stream
    assert events and "error" in events[-1], events[-3:]
    validate(events[-1], "ErrorResponse")
    assert events[-1]["error"]["code"] == "generation_timeout"
    assert "0.5 s" in events[-1]["error"]["message"]
    # the queued request was either served once the slot was free or refused after waiting: never hung
    assert queued and queued[0].status_code in (200, 503), queued[0].text

    # a long non-streamed generation is a 504
    error = expect_error(httpx.post(f"{url}/v1/chat/completions", json=long_chat(model), timeout=60), 504)
    assert error["code"] == "generation_timeout" and "--generation-timeout" in error["message"]
    # the slot and the queue are free again
    response = httpx.post(f"{url}/v1/chat/completions", json=short_chat(model), timeout=60)
    assert response.status_code == 200, response.text


def test_bodies_over_the_limit_are_413(busy_hub):
    url = busy_hub.url
    big = {"model": "x", "messages": [{"role": "user", "content": "a" * 70_000}]}
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/feedback", "/v1/jobs"):
        error = expect_error(httpx.post(f"{url}{path}", json=big, timeout=30), 413)
        assert "65536 bytes" in error["message"] and error["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b"a" * 8192

    response = httpx.post(
        f"{url}/v1/feedback", content=chunks(), headers={"content-type": "application/json"}, timeout=30
    )
    expect_error(response, 413)
    assert httpx.get(f"{url}/health").status_code == 200


@pytest.mark.parametrize(
    "field,value,flag",
    [
        ("rate_limit_key", -1, "--rate-limit-key"),
        ("rate_limit_burst", 0, "--rate-limit-burst"),
        ("max_concurrent_generations", 0, "--max-concurrent-generations"),
        ("max_queued_generations", -1, "--max-queued-generations"),
        ("generation_timeout_s", 0, "--generation-timeout"),
        ("max_body_bytes", 0, "--max-body-bytes"),
    ],
)
def test_bad_limit_settings_refuse_to_start_naming_the_flag(field, value, flag):
    from hub.settings import Settings, SettingsError

    Settings().check()  # the defaults are valid: rate limits off, generous caps
    with pytest.raises(SettingsError, match=f"{flag} {value}"):
        Settings(**{field: value}).check()
