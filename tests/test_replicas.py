"""A hub over several replicas of one base (`tunehub serve --vllm-url A --vllm-url B`, serving/replicas.py),
end to end with real processes: two `tunehub engine` servers on 127.0.0.1 standing in for vLLM, the official
openai client. Routing spreads requests over both; adapters load on both, or on one with the other named in
the answer; a replica SIGKILLed under 16 streaming clients loses no request before its first token, the rest
keep being served, and it rejoins after a restart with its adapters."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from serving.errors import EngineUnavailable
from serving.replicas import ReplicaSet
from tests.support.engine import EngineProcess
from tests.support.server import HubProcess

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_each_replica_url_is_given_once():
    with pytest.raises(ValueError, match="http://gpu-a:8000 is given more than once"):
        ReplicaSet(["http://gpu-a:8000", "http://gpu-b:8000", "http://gpu-a:8000/"])


def _hub(tmp_path: Path, demo_model: Path, engines: list[EngineProcess]) -> HubProcess:
    urls = [arg for e in engines for arg in ("--vllm-url", e.url)]
    return HubProcess(model=demo_model, data_dir=tmp_path / "hub", extra_args=["--engine", "vllm", *urls])


def _replicas(hub: HubProcess) -> dict[str, dict]:
    return {r["url"]: r for r in httpx.get(hub.url + "/health", timeout=10).json()["replicas"]}


def _served_adapters(engine: EngineProcess) -> set[str]:
    """What the engine itself lists, asked directly (not through the hub)."""
    cards = httpx.get(engine.url + "/v1/models", timeout=10).json()["data"]
    return {c["id"] for c in cards if c.get("parent")}


def _load(hub: HubProcess, name: str, path: Path) -> httpx.Response:
    return httpx.post(
        hub.url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}, timeout=60
    )


@pytest.mark.slow
def test_routing_spreads_load_and_adapters_reach_every_replica(tmp_path, demo_model, adapters_dir):
    # replica B refuses adapters above rank 4: adapter b (rank 8) loads on A only, a partial failure
    a = EngineProcess(model=demo_model, log_path=tmp_path / "a.log")
    b = EngineProcess(model=demo_model, log_path=tmp_path / "b.log", extra_args=["--max-lora-rank", "4"])
    hub = _hub(tmp_path, demo_model, [a, b])
    try:
        a.start(timeout=120)
        b.start(timeout=120)
        hub.start(timeout=120)
        client = openai.OpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=0)
        base = demo_model.name
        replicas = _replicas(hub)
        assert set(replicas) == {a.url, b.url} and all(r["healthy"] for r in replicas.values())

        def ask(model: str) -> str:
            stream = client.chat.completions.create(
                model=model, messages=MESSAGES, max_tokens=8, temperature=0, stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, [base] * 16))
        assert len(set(answers)) == 1  # same greedy answer whichever replica gave it
        sent = {url: r["requests"] for url, r in _replicas(hub).items()}
        assert min(sent.values()) >= 4, sent  # both replicas served a fair share of 16
        assert sum(sent.values()) == 16

        loaded = _load(hub, "a", adapters_dir / "a")
        assert loaded.status_code == 200 and loaded.json()["status"] == "loaded", loaded.text
        assert "a" in _served_adapters(a) and "a" in _served_adapters(b)
        assert all(r["adapters"] == ["a"] for r in _replicas(hub).values())
        tuned = {ask("a") for _ in range(4)}
        assert len(tuned) == 1 and tuned != {answers[0]}  # the adapter answers, alike on both
        metrics = httpx.get(hub.url + "/metrics", timeout=10).text
        for url in (a.url, b.url):
            assert f'tunehub_replica_adapter_loaded{{adapter="a",replica="{url}"}} 1.0' in metrics
            assert f'tunehub_replica_healthy{{replica="{url}"}} 1.0' in metrics
        assert "tunehub_replica_outstanding_requests" in metrics

        partial = _load(hub, "b", adapters_dir / "b")
        assert partial.status_code == 200, partial.text
        assert partial.json()["status"] == "partial"
        assert list(partial.json()["failed_on"]) == [b.url]
        assert "rank 8" in partial.json()["failed_on"][b.url]
        assert "b" in _served_adapters(a) and "b" not in _served_adapters(b)
        before = _replicas(hub)[a.url]["requests"]
        assert len({ask("b") for _ in range(4)}) == 1  # served where it loaded: every request on A
        assert _replicas(hub)[a.url]["requests"] == before + 4
        assert "adapter b loaded on 1 of 2 replicas" in hub.log_tail(100)

        refused = _load(hub, "c", adapters_dir / "missing")  # fails on every replica: one clear error
        assert refused.status_code in (400, 404) and "missing" in refused.json()["error"]["message"]

        unloaded = httpx.post(hub.url + "/v1/unload_lora_adapter", json={"lora_name": "a"}, timeout=60)
        assert unloaded.status_code == 200
        assert "a" not in _served_adapters(a) and "a" not in _served_adapters(b)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="a", messages=MESSAGES, max_tokens=4)
    finally:
        hub.stop()
        a.stop()
        b.stop()


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen in {timeout}s")


@pytest.mark.slow
def test_a_killed_replica_loses_no_request_before_its_first_token_and_rejoins(
    tmp_path, demo_model, adapters_dir
):
    a = EngineProcess(model=demo_model, log_path=tmp_path / "a.log")
    b = EngineProcess(model=demo_model, log_path=tmp_path / "b.log")
    hub = _hub(tmp_path, demo_model, [a, b])
    restarted: EngineProcess | None = None
    try:
        a.start(timeout=120)
        b.start(timeout=120)
        hub.start(timeout=120)
        assert _load(hub, "a", adapters_dir / "a").json()["status"] == "loaded"
        client = openai.OpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        base = demo_model.name
        stop = threading.Event()
        outcomes: list[dict] = []  # one per request: when it started, tokens before it ended, its error

        def client_loop(index: int) -> None:
            model = "a" if index % 2 else base
            while not stop.is_set():
                started, tokens, error = time.monotonic(), 0, None
                try:
                    stream = client.chat.completions.create(
                        model=model,
                        messages=MESSAGES,
                        max_tokens=24,
                        extra_body={"ignore_eos": True},
                        stream=True,
                    )
                    for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content:
                            tokens += 1
                except openai.OpenAIError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                outcomes.append(
                    {"started": started, "tokens": tokens, "error": error, "ended": time.monotonic()}
                )

        with ThreadPoolExecutor(16) as pool:
            for i in range(16):
                pool.submit(client_loop, i)
            _wait(lambda: len(outcomes) >= 16, 60, "16 requests before the kill")
            _wait(lambda: _replicas(hub)[b.url]["outstanding"] > 0, 30, "requests in flight on B")
            killed_at = time.monotonic()
            os.kill(b.process.pid, signal.SIGKILL)
            b.process.wait(timeout=10)
            _wait(lambda: not _replicas(hub)[b.url]["healthy"], 10, "B taken out of rotation")
            out_after = time.monotonic() - killed_at
            time.sleep(4)  # the clients keep going on A alone
            stop.set()

        errors = [o for o in outcomes if o["error"]]
        assert not [o for o in errors if o["tokens"] == 0], errors  # none lost before its first token
        after = [o for o in outcomes if o["started"] > killed_at + out_after]
        assert len(after) >= 16 and not [o for o in after if o["error"]], after  # the rest are served
        assert len(errors) <= 16  # only streams that were on B when it died
        problem = _replicas(hub)[b.url]["problem"]
        assert b.url in problem
        assert httpx.get(hub.url + "/health", timeout=10).status_code == 200  # A still serves

        restarted = EngineProcess(model=demo_model, log_path=tmp_path / "b2.log", port=b.port)
        restarted.start(timeout=120)
        _wait(lambda: _replicas(hub)[b.url]["healthy"], 30, "B back in rotation")
        assert _served_adapters(restarted) == {"a"}  # re-loaded before it rejoined
        assert _replicas(hub)[b.url]["adapters"] == ["a"]
        before = _replicas(hub)[b.url]["requests"]
        with ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda _: client.chat.completions.create(model="a", messages=MESSAGES, max_tokens=4),
                    range(8),
                )
            )
        assert _replicas(hub)[b.url]["requests"] > before  # routed to again
        assert f"replica {b.url} back in rotation (adapters re-loaded: a)" in hub.log_tail(200)
    finally:
        hub.stop()
        a.stop()
        b.stop()
        if restarted is not None:
            restarted.stop()


# ----- failover on cue: stand-in servers whose streams are cut before or after the first token -------------


def _collect(engine: ReplicaSet):
    from serving.engine import GenerationRequest

    async def run() -> tuple[list[str], Exception | None]:
        texts: list[str] = []
        try:
            async for delta in engine.generate(GenerationRequest(messages=MESSAGES)):
                texts.append(delta.text)
        except Exception as exc:  # returned for the test to look at
            return texts, exc
        return texts, None

    return run()


def test_a_request_whose_replica_is_gone_is_retried_on_another():
    from tests.support.fake_replica import FakeReplica
    from tests.support.server import free_port

    async def main():
        gone = f"http://127.0.0.1:{free_port()}"  # nothing listens: a replica killed since the last check
        async with FakeReplica("ok") as live:
            engine = ReplicaSet([gone, live.url], health_interval_s=60)
            await engine.start()
            try:
                assert [r["healthy"] for r in engine.replica_status()] == [False, True]
                engine.replicas[0].healthy = True  # the router still thinks it is up
                texts, error = await _collect(engine)
                return texts, error, engine.replica_status(), live.chats
            finally:
                await engine.close()

    texts, error, status, chats = asyncio.run(main())
    assert error is None and "".join(texts) == "Hi there" and chats == 1
    assert status[0]["healthy"] is False and status[0]["url"] in status[0]["problem"]
    assert status[0]["outstanding"] == status[1]["outstanding"] == 0


def test_a_stream_cut_before_its_first_token_is_retried_once():
    from tests.support.fake_replica import FakeReplica

    async def main(second_mode: str):
        async with FakeReplica("drop_before") as cut, FakeReplica(second_mode) as other:
            engine = ReplicaSet([cut.url, other.url], health_interval_s=60)
            await engine.start()
            try:
                texts, error = await _collect(engine)
                return texts, error, cut.chats, other.chats
            finally:
                await engine.close()

    texts, error, cut_chats, other_chats = asyncio.run(main("ok"))
    assert error is None and "".join(texts) == "Hi there"
    assert (cut_chats, other_chats) == (1, 1)
    texts, error, cut_chats, other_chats = asyncio.run(main("drop_before"))  # both fail: one retry, no more
    assert isinstance(error, EngineUnavailable) and texts == []
    assert (cut_chats, other_chats) == (1, 1)


def test_a_stream_cut_after_its_first_token_ends_with_an_error_and_is_not_retried():
    from tests.support.fake_replica import FakeReplica

    async def main():
        async with FakeReplica("drop_after") as cut, FakeReplica("ok") as other:
            engine = ReplicaSet([cut.url, other.url], health_interval_s=60)
            await engine.start()
            try:
                texts, error = await _collect(engine)
                return texts, error, cut, other.chats
            finally:
                await engine.close()

    texts, error, cut, other_chats = asyncio.run(main())
    assert texts == ["Hi"]  # what was streamed stays streamed; the client is told the rest failed
    assert isinstance(error, EngineUnavailable) and cut.url in error.message
    assert (cut.chats, other_chats) == (1, 0)
