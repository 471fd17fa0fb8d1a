"""A hub on the vLLM engine, end to end with real processes: `tunehub serve --engine vllm --vllm-url` in front
of a `tunehub engine`, answering the official openai client and recording generations; and the managed
mode through a fake `vllm` executable (tests/support/fake_vllm.py) that becomes `tunehub engine`: start-up
flags and environment, the health wait with the log's tail, restart after a crash with adapters re-loaded,
and shutdown."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from feedback.generations import generation_id
from feedback.store import Store
from hub.cli.engine import choose_engine
from hub.settings import Settings
from tests.support.engine import EngineProcess
from tests.support.server import HubProcess, gone

KEY = "engine-key"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_vllm(tmp_path) -> Path:
    script = tmp_path / "bin" / "vllm"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{REPO}/tests/support/fake_vllm.py" "$@"\n')
    script.chmod(0o755)
    return script


def _args(**values) -> argparse.Namespace:
    return argparse.Namespace(**{"vllm_url": None, "vllm_bin": "vllm", **values})


def test_auto_engine_choice(monkeypatch, fake_vllm, tmp_path):
    import hub.cli.engine as cli_engine

    auto = Settings(engine="auto")
    assert choose_engine(Settings(engine="local"), _args(vllm_url="http://x")) == "local"
    assert choose_engine(auto, _args(vllm_url="http://gpu:8000")) == "vllm"
    assert choose_engine(auto, _args(vllm_bin=str(tmp_path / "missing"))) == "local"
    monkeypatch.setattr(cli_engine, "_cuda_available", lambda: False)
    assert choose_engine(auto, _args(vllm_bin=str(fake_vllm))) == "local"
    monkeypatch.setattr(cli_engine, "_cuda_available", lambda: True)
    assert choose_engine(auto, _args(vllm_bin=str(fake_vllm))) == "vllm"


@pytest.mark.slow
def test_hub_in_front_of_a_remote_engine(tmp_path, demo_model, adapters_dir):
    with (
        EngineProcess(model=demo_model, log_path=tmp_path / "engine.log", api_key=KEY) as engine,
        HubProcess(
            model=demo_model,
            data_dir=tmp_path / "hub",
            extra_args=["--engine", "vllm", "--vllm-url", engine.url, "--vllm-api-key", KEY],
        ) as hub,
    ):
        client = openai.OpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=0)
        base = demo_model.name
        assert [m.id for m in client.models.list().data] == [base, "tunehub-default"]
        messages = [{"role": "user", "content": "What is the capital of France?"}]

        answer = client.chat.completions.create(model=base, messages=messages, max_tokens=8, n=2, seed=3)
        assert len(answer.choices) == 2 and answer.usage.completion_tokens > 0
        chunks = list(
            client.chat.completions.create(
                model=base,
                messages=messages,
                max_tokens=8,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage.completion_tokens > 0
        greedy = client.chat.completions.create(model=base, messages=messages, max_tokens=8, temperature=0)
        assert greedy.choices[0].message.content == streamed
        completion = client.completions.create(model=base, prompt="Hello", max_tokens=5, temperature=0)
        assert completion.choices[0].finish_reason in ("stop", "length")

        with pytest.raises(openai.BadRequestError):  # a vLLM-only field tunehub does not support
            client.chat.completions.create(model=base, messages=messages, extra_body={"best_of": 2})
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=messages)

        loaded = httpx.post(
            hub.url + "/v1/load_lora_adapter",
            json={"lora_name": "a", "lora_path": str(adapters_dir / "a")},
            timeout=60,
        )
        assert loaded.status_code == 200 and loaded.json()["status"] == "loaded"
        refused = httpx.post(
            hub.url + "/v1/load_lora_adapter",
            json={"lora_name": "a", "lora_path": str(adapters_dir / "a")},
            timeout=60,
        )
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "adapter_conflict"
        assert {m.id: getattr(m, "parent", None) for m in client.models.list().data}["a"] == base
        tuned = client.chat.completions.create(model="a", messages=messages, max_tokens=8, temperature=0)
        assert tuned.choices[0].message.content != greedy.choices[0].message.content

        store = Store(hub.data_dir / "feedback.db")
        try:
            recorded = store.get_generation(generation_id(tuned.id, 0))
            assert recorded.text == tuned.choices[0].message.content
            assert recorded.model == "a"
            assert store.get_generation(generation_id(answer.id, 1)).text == answer.choices[1].message.content
        finally:
            store.close()

        unloaded = httpx.post(hub.url + "/v1/unload_lora_adapter", json={"lora_name": "a"}, timeout=60)
        assert unloaded.status_code == 200
        assert [m.id for m in client.models.list().data] == [base, "tunehub-default"]


def _vllm_starts(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_health(url: str, status: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == status:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url}/health did not answer {status} in {timeout}s")


@pytest.mark.slow
def test_managed_vllm_starts_restarts_reloads_and_stops(
    tmp_path, demo_model, adapters_dir, fake_vllm, monkeypatch
):
    starts = tmp_path / "starts.jsonl"
    monkeypatch.setenv("FAKE_VLLM_ARGS", str(starts))
    hub = HubProcess(
        model=demo_model,
        data_dir=tmp_path / "hub",
        extra_args=["--engine", "vllm", "--vllm-bin", str(fake_vllm), "--max-lora-rank", "8"]
        + ["--max-loras", "2", "--max-cpu-loras", "4", "--vllm-sleep-mode"],
    )
    with hub:
        (first,) = _vllm_starts(starts)
        argv = " ".join(first["argv"])
        assert argv.startswith(f"serve {demo_model} --host 127.0.0.1 --port ")
        for flag in ("--enable-lora", "--max-loras 2", "--max-lora-rank 8", "--max-cpu-loras 4"):
            assert flag in argv
        assert "--enable-sleep-mode" in argv
        assert first["env"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
        assert first["env"]["VLLM_SERVER_DEV_MODE"] == "1"

        client = openai.OpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "What is 2 + 2?"}]
        loaded = httpx.post(
            hub.url + "/v1/load_lora_adapter",
            json={"lora_name": "a", "lora_path": str(adapters_dir / "a")},
            timeout=60,
        )
        assert loaded.status_code == 200, loaded.text
        before = client.chat.completions.create(model="a", messages=messages, max_tokens=8, temperature=0)

        os.kill(first["pid"], signal.SIGKILL)  # vLLM crashes
        _wait_health(hub.url, 503, timeout=30)
        _wait_health(hub.url, 200, timeout=120)
        first_restart, second = _vllm_starts(starts)
        assert second["pid"] != first["pid"]
        after = client.chat.completions.create(model="a", messages=messages, max_tokens=8, temperature=0)
        assert after.choices[0].message.content == before.choices[0].message.content  # "a" was re-loaded
        log = hub.log_tail(200)
        assert "vLLM exited with code -9" in log and "re-loaded adapter a" in log
    assert gone(second["pid"]), "vLLM still runs after the hub stopped"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "extra", "expected"),
    [
        ("fail", [], "CUDA out of memory"),  # the tail of vLLM's log is in the hub's error
        ("hang", ["--vllm-start-timeout", "3"], "did not answer"),
    ],
)
def test_managed_vllm_that_does_not_come_up(
    tmp_path, demo_model, fake_vllm, monkeypatch, mode, extra, expected
):
    starts = tmp_path / "starts.jsonl"
    monkeypatch.setenv("FAKE_VLLM_ARGS", str(starts))
    monkeypatch.setenv("FAKE_VLLM_MODE", mode)
    hub = HubProcess(
        model=demo_model,
        data_dir=tmp_path / "hub",
        extra_args=["--engine", "vllm", "--vllm-bin", str(fake_vllm), *extra],
    )
    with pytest.raises(RuntimeError, match=expected):
        hub.start(timeout=120)
    hub.stop()
    (start,) = _vllm_starts(starts)
    assert gone(start["pid"])  # a hung vLLM is stopped, not left behind


@pytest.mark.slow
def test_managed_restart_backs_off_while_vllm_keeps_failing(tmp_path, demo_model, fake_vllm, monkeypatch):
    import asyncio

    from serving.engine import GenerationRequest, SamplingParams
    from serving.vllm import VLLMEngine
    from serving.vllm_process import VLLMOptions
    from tests.support.server import TEST_ENVIRONMENT, free_port

    for key, value in TEST_ENVIRONMENT.items():
        monkeypatch.setenv(key, value)
    starts, failures = tmp_path / "starts.jsonl", tmp_path / "failures"
    monkeypatch.setenv("FAKE_VLLM_ARGS", str(starts))
    monkeypatch.setenv("FAKE_VLLM_FAILURES", str(failures))
    options = VLLMOptions(
        model=str(demo_model),
        port=free_port(),
        log_path=tmp_path / "vllm.log",
        executable=str(fake_vllm),
        served_model_name="base",
        max_lora_rank=8,
        health_timeout_s=120,
    )

    async def main():
        engine = VLLMEngine.managed(options)
        await engine.start()
        try:
            failures.write_text("2")  # the next two starts fail
            os.kill(engine.process.process.pid, signal.SIGKILL)
            deadline = time.monotonic() + 180
            while engine.restarts < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            deltas = [
                d
                async for d in engine.generate(
                    GenerationRequest(prompt="Hi", sampling=SamplingParams(max_tokens=4))
                )
            ]
            return engine.restarts, engine.ready, deltas, engine.process.process.pid
        finally:
            await engine.close()

    restarts, ready, deltas, last_pid = asyncio.run(main())
    assert restarts == 1 and ready and deltas[-1].finish_reason
    times = [start["time"] for start in _vllm_starts(starts)]
    assert len(times) == 4  # up, two failed starts, up again
    assert times[3] - times[2] > times[2] - times[1] + 2  # backoff: 1 s, 2 s, then 5 s
    assert "CUDA out of memory" in (tmp_path / "vllm.log").read_text()
    assert gone(last_pid)
