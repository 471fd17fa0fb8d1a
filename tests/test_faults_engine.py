"""Faults (issue 7, item 2): the engine dies in the middle of streams. Clients get a clean error (an error
event in a started stream, the OpenAI envelope otherwise), never a hang, and the hub serves the next request.

- The local engine: a decode step raises (as a CUDA OOM or a PEFT error would) while streamed and plain
  requests share the batch; the hub's app runs in process on a real LocalEngine (httpx.ASGITransport).
- An external engine process: a real `tunehub engine` behind `tunehub serve --engine vllm --vllm-url` is
  killed with SIGKILL by its pid mid-stream; the hub's /health answers 503 naming the engine (/health/live
  stays 200), requests while it is gone get 503, and a new engine on the same port is served again (and
  /health is 200 again) without restarting the hub.

Run: .venv/bin/python -m pytest tests/test_faults_engine.py -q   (the external engine test is marked slow)
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest

from feedback.store import Store
from hub.app import build_app
from hub.settings import Settings
from serving.loader import load_local_engine
from tests.support.engine import EngineProcess
from tests.support.server import HubProcess


def sse_payloads(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]


def chat_body(model: str, prompt: str, **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **fields}


# ----- the local engine -------------------------------------------------------------------------------------


def fail_one_step_with_rows(engine, rows: int) -> threading.Event:
    """Make the first decode step that runs with `rows` rows raise once; the returned event is set then."""
    forward, failed = engine._forward, threading.Event()

    def forward_that_fails_once(*args):
        if not failed.is_set() and len(engine._rows) >= rows:  # the worker thread: _rows is its own
            failed.set()
            raise RuntimeError("injected decode failure")
        return forward(*args)

    engine._forward = forward_that_fails_once
    return failed


def test_a_failing_local_engine_step_ends_streams_with_an_error_and_the_hub_recovers(tmp_path, demo_model):
    engine = load_local_engine(demo_model)
    store = Store(tmp_path / "feedback.db")
    app = build_app(Settings(data_dir=tmp_path), engine, store=store, with_ui=False, run_jobs=False)
    model = engine.model_name
    long = {"max_tokens": 200, "ignore_eos": True, "temperature": 0}  # still running when the step fails

    async def scenario():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://hub", timeout=60) as client:
                failed = fail_one_step_with_rows(engine, rows=4)
                requests = [
                    client.post("/v1/chat/completions", json=chat_body(model, "Hi", stream=True, **long)),
                    client.post(
                        "/v1/chat/completions", json=chat_body(model, "Who?", stream=True, n=2, **long)
                    ),
                    client.post("/v1/chat/completions", json=chat_body(model, "Paris?", **long)),
                ]
                answers = await asyncio.wait_for(asyncio.gather(*requests), 60)
                assert failed.is_set()
                after = await client.post("/v1/chat/completions", json=chat_body(model, "Hi", max_tokens=8))
                health = await client.get("/health")
                return answers, after, health

    answers, after, health = asyncio.run(scenario())
    for streamed in answers[:2]:
        assert streamed.status_code == 200  # the stream had begun: the error is its last event
        events = sse_payloads(streamed.text)
        assert "[DONE]" not in events
        contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
        assert any(contents), "the failure came before any text: not mid-stream"
        error = json.loads(events[-1])["error"]
        assert error["type"] == "server_error" and "injected decode failure" in error["message"]
    plain = answers[2]
    assert plain.status_code >= 500, plain.text
    assert "injected decode failure" in plain.json()["error"]["message"]
    assert after.status_code == 200, after.text
    assert after.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert health.status_code == 200 and health.json()["status"] == "ok"


# ----- an external engine process ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_engine_process_ends_the_stream_and_a_new_one_is_served(tmp_path, demo_model):
    engine = EngineProcess(model=demo_model, log_path=tmp_path / "engine.log").start()
    hub = None
    try:
        hub = HubProcess(
            model=demo_model,
            data_dir=tmp_path / "hub",
            extra_args=["--engine", "vllm", "--vllm-url", engine.url],
        ).start()
        model = demo_model.name
        body = chat_body(model, "Tell me about Paris.", stream=True, max_tokens=400, ignore_eos=True)
        events, killed_at = [], None
        with httpx.stream("POST", f"{hub.url}/v1/chat/completions", json=body, timeout=30) as response:
            assert response.status_code == 200
            for line in response.iter_lines():  # a hang would end in httpx.ReadTimeout
                if not line.startswith("data: "):
                    continue
                events.append(line.removeprefix("data: "))
                delta = json.loads(events[-1]).get("choices", [{}])
                if killed_at is None and delta and delta[0].get("delta", {}).get("content"):
                    engine.process.kill()  # SIGKILL mid-stream: no goodbye on the engine's connection
                    killed_at = time.monotonic()
        assert killed_at is not None, events
        assert time.monotonic() - killed_at < 10, "the client waited long after the engine died"
        assert "[DONE]" not in events and "error" in events[-1], events[-3:]
        error = json.loads(events[-1])["error"]
        assert error["code"] == "engine_unavailable" and engine.url in error["message"]
        engine.process.wait(10)

        health = httpx.get(f"{hub.url}/health", timeout=10)  # the probe's cache may still say ok: poll
        deadline = time.monotonic() + 10
        while health.status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            health = httpx.get(f"{hub.url}/health", timeout=10)
        assert health.status_code == 503, health.text  # the engine's death shows, naming it
        assert health.json()["error"]["code"] == "engine_unavailable"
        assert engine.url in health.json()["error"]["message"], health.text
        assert httpx.get(f"{hub.url}/health/live", timeout=10).status_code == 200  # the hub itself lives
        gone = httpx.post(
            f"{hub.url}/v1/chat/completions", json=chat_body(model, "Hi", max_tokens=4), timeout=30
        )
        assert gone.status_code == 503, gone.text
        assert gone.json()["error"]["code"] == "engine_unavailable"

        engine = EngineProcess(model=demo_model, log_path=tmp_path / "engine.log", port=engine.port).start()
        deadline = time.monotonic() + 10
        while httpx.get(f"{hub.url}/health", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "/health did not recover with the new engine"
            time.sleep(0.2)
        again = httpx.post(
            f"{hub.url}/v1/chat/completions", json=chat_body(model, "Hi", max_tokens=4), timeout=30
        )
        assert again.status_code == 200, again.text
        assert again.json()["choices"][0]["finish_reason"] in ("stop", "length")
        streamed = httpx.post(
            f"{hub.url}/v1/chat/completions",
            json=chat_body(model, "Hi", max_tokens=4, stream=True),
            timeout=30,
        )
        assert sse_payloads(streamed.text)[-1] == "[DONE]"
    finally:
        if hub is not None:
            hub.stop()
        engine.stop()
