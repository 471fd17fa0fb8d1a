"""VLLMEngine in remote mode against a real `tunehub engine` process (the embedded engine behind vLLM's
protocol): generation, streaming, stop strings, cancellation, adapters and their refusals, sleep, and the
normalisation of vLLM's error answers."""

from __future__ import annotations

import asyncio
import re
import shutil
import time

import httpx
import pytest

from serving.engine import Delta, GenerationRequest, SamplingParams
from serving.errors import (
    AdapterConflict,
    ContextTooLong,
    EngineUnavailable,
    InvalidAdapter,
    InvalidRequest,
    ModelNotFound,
)
from serving.vllm import VLLMEngine, vllm_error
from serving.vllm_process import VLLMOptions
from tests.support.adapters import rewrite_config
from tests.support.engine import EngineProcess

KEY = "engine-key"

# vLLM's answers, as its serving code writes them (vllm/entrypoints/openai: ErrorResponse before and after
# the `{"error": {...}}` envelope, serving_models.py for adapters, the --api-key middleware). Written from
# vLLM's source, not captured from a running vLLM: none can run here.
OLD_NOT_FOUND = b'{"object":"error","message":"The model `nope` does not exist.","type":"NotFoundError","param":null,"code":404}'
NEW_NOT_FOUND = b'{"error":{"message":"The model `nope` does not exist.","type":"NotFoundError","param":"model","code":404}}'
ALREADY_LOADED = b'{"object":"error","message":"The lora adapter \'a\' has already been loaded.","type":"InvalidUserInput","param":null,"code":400}'
UNLOAD_MISSING = b'{"error":{"message":"The lora adapter \'x\' cannot be found.","type":"NotFoundError","param":null,"code":404}}'
CONTEXT_TOO_LONG = (
    b'{"error":{"message":"This model\'s maximum context length is 2048 tokens. However, you requested 4096 '
    b"tokens (96 in the messages, 4000 in the completion). Please reduce the length of the messages or "
    b'completion.","type":"BadRequestError","param":null,"code":400}}'
)
UNAUTHORIZED = b'{"error":"Unauthorized"}'
ENGINE_DEAD = b'{"object":"error","message":"EngineCore encountered an issue.","type":"InternalServerError","param":null,"code":500}'


@pytest.mark.parametrize(
    ("status", "body", "kind", "http", "text"),
    [
        (404, OLD_NOT_FOUND, ModelNotFound, 404, "The model `nope` does not exist."),
        (404, NEW_NOT_FOUND, ModelNotFound, 404, "The model `nope` does not exist."),
        (400, ALREADY_LOADED, AdapterConflict, 409, "has already been loaded"),
        (404, UNLOAD_MISSING, ModelNotFound, 404, "cannot be found"),
        (400, CONTEXT_TOO_LONG, ContextTooLong, 400, "maximum context length is 2048"),
        (401, UNAUTHORIZED, EngineUnavailable, 503, "--vllm-api-key"),
        (500, ENGINE_DEAD, Exception, 502, "EngineCore encountered an issue"),
        (502, b"Bad Gateway", Exception, 502, "Bad Gateway"),
    ],
)
def test_vllm_error_shapes_become_tunehub_errors(status, body, kind, http, text):
    error = vllm_error(status, body, url="http://gpu:8000")
    assert isinstance(error, kind)
    assert error.status == http
    assert text in error.message
    assert isinstance(error.code, str | None)  # OpenAI's schema: a string code, never vLLM's integers


def test_vllm_command_line_and_environment(tmp_path):
    options = VLLMOptions(
        model="/models/base",
        port=8123,
        log_path=tmp_path / "vllm.log",
        executable="/venvs/vllm/bin/vllm",
        served_model_name="base",
        api_key="secret",
        max_loras=2,
        max_lora_rank=32,
        max_cpu_loras=8,
        tensor_parallel_size=2,
        gpu_memory_utilization=0.5,
        enable_sleep_mode=True,
    )
    command = " ".join(options.command())
    assert command.startswith("/venvs/vllm/bin/vllm serve /models/base --host 127.0.0.1 --port 8123")
    for flag in (
        "--enable-lora",
        "--max-loras 2",
        "--max-lora-rank 32",
        "--max-cpu-loras 8",
        "--tensor-parallel-size 2",
        "--gpu-memory-utilization 0.5",
        "--enable-sleep-mode",
        "--served-model-name base",
    ):
        assert flag in command
    assert "secret" not in command  # the key goes through the environment, out of `ps`
    env = options.environment()
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["VLLM_SERVER_DEV_MODE"] == "1"
    assert env["VLLM_API_KEY"] == "secret"
    assert "VLLM_SERVER_DEV_MODE" not in VLLMOptions(model="m", port=1, log_path=tmp_path).environment()
    with pytest.raises(ValueError, match="48 is not one vLLM accepts"):
        VLLMOptions(model="m", port=1, log_path=tmp_path, max_lora_rank=48)


# ----- against a real `tunehub engine` ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_server(tmp_path_factory, demo_model):
    log = tmp_path_factory.mktemp("engine") / "engine.log"
    # float32: these tests compare greedy and top_k=1 answers token for token, and bfloat16 logits tie often
    options = ["--max-lora-rank", "8", "--dtype", "float32"]
    with EngineProcess(model=demo_model, log_path=log, api_key=KEY, extra_args=options) as p:
        yield p


def run(test, url: str, api_key: str | None = KEY, **options):
    """Run `test(engine)` on a started remote VLLMEngine, closing it after."""

    async def main():
        engine = VLLMEngine(url, api_key=api_key, max_lora_rank=options.pop("max_lora_rank", 8), **options)
        try:
            await engine.start()
            return await test(engine)
        finally:
            await engine.close()

    return asyncio.run(main())


async def collect(engine: VLLMEngine, request: GenerationRequest) -> list[Delta]:
    return [delta async for delta in engine.generate(request)]


def chat(text: str, adapter: str | None = None, **sampling) -> GenerationRequest:
    sampling.setdefault("temperature", 0.0)
    sampling.setdefault("max_tokens", 12)
    return GenerationRequest(
        messages=[{"role": "user", "content": text}], sampling=SamplingParams(**sampling), adapter=adapter
    )


def direct(engine_server, path: str, body: dict) -> dict:
    response = httpx.post(
        engine_server.url + path, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
def test_chat_streams_the_same_text_as_the_server_answers(engine_server, demo_model):
    async def test(engine):
        assert engine.model_name == demo_model.name
        assert engine.max_context > 0
        return await collect(engine, chat("What is the capital of France?", max_tokens=10, ignore_eos=True))

    deltas = run(test, engine_server.url)
    assert len(deltas) > 2  # streamed, not one piece
    assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
    final = deltas[-1]
    assert final.finish_reason == "length"
    assert final.completion_tokens == 10 and final.prompt_tokens > 0
    answer = direct(
        engine_server,
        "/v1/chat/completions",
        {
            "model": demo_model.name,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 10,
            "temperature": 0,
            "ignore_eos": True,
        },
    )
    assert "".join(d.text for d in deltas) == answer["choices"][0]["message"]["content"]


@pytest.mark.slow
def test_completions_seed_top_k_and_stop_strings(engine_server, demo_model):
    prompt = "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"

    def completion(**sampling) -> GenerationRequest:
        sampling.setdefault("max_tokens", 12)
        return GenerationRequest(prompt=prompt, sampling=SamplingParams(**sampling))

    async def test(engine):
        greedy = await collect(engine, completion(temperature=0.0, ignore_eos=True))
        top1 = await collect(engine, completion(temperature=1.0, top_k=1, ignore_eos=True))
        seeded = [await collect(engine, completion(temperature=1.0, seed=7)) for _ in range(2)]
        text = "".join(d.text for d in greedy)
        stop = text[len(text) // 2 : len(text) // 2 + 2]
        stopped = await collect(engine, completion(temperature=0.0, stop=[stop], ignore_eos=True))
        return text, top1, seeded, stop, stopped

    text, top1, seeded, stop, stopped = run(test, engine_server.url)
    answer = direct(
        engine_server,
        "/v1/completions",
        {"model": demo_model.name, "prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True},
    )
    assert text == answer["choices"][0]["text"]
    assert "".join(d.text for d in top1) == text  # top_k=1 reached the server
    # the seed reached the server: the same text (its split into deltas follows the engine's 10 ms grouping)
    assert "".join(d.text for d in seeded[0]) == "".join(d.text for d in seeded[1])
    assert stopped[-1].finish_reason == "stop"
    stopped_text = "".join(d.text for d in stopped)
    assert stop not in stopped_text and text.startswith(stopped_text)


@pytest.mark.slow
def test_closing_the_stream_cancels_the_request_upstream(engine_server):
    def decode_steps() -> float:
        metrics = httpx.get(engine_server.url + "/metrics", timeout=10).text
        return float(re.search(r"^tunehub_batch_size_count (\S+)$", metrics, re.M).group(1))

    async def test(engine):
        stream = engine.generate(chat("Tell me a story.", max_tokens=400, ignore_eos=True, temperature=1.0))
        for _ in range(3):
            await stream.__anext__()
        await stream.aclose()
        await asyncio.sleep(1.0)
        after_close = decode_steps()
        await asyncio.sleep(2.0)
        return after_close, decode_steps()

    before = decode_steps()
    after_close, later = run(test, engine_server.url)
    assert later == after_close  # no more decode steps: the row left the batch
    assert after_close - before < 300  # far from the 400 tokens asked for


@pytest.mark.slow
def test_request_errors_are_tunehub_errors(engine_server, tmp_path):
    async def test(engine):
        errors = []
        for request in (
            chat("hi", adapter="no-such-adapter"),
            chat("hi", max_tokens=100_000),
        ):
            with pytest.raises(Exception) as caught:
                await collect(engine, request)
            errors.append(caught.value)
        return errors

    unknown, too_long = run(test, engine_server.url)
    assert isinstance(unknown, ModelNotFound) and unknown.status == 404
    assert isinstance(too_long, ContextTooLong) and "maximum context length" in too_long.message

    with pytest.raises(EngineUnavailable, match="refused tunehub's API key .*Unauthorized.*--vllm-api-key"):
        run(lambda engine: None, engine_server.url, api_key="wrong")
    with pytest.raises(EngineUnavailable, match="not reachable"):
        run(lambda engine: None, "http://127.0.0.1:9")


@pytest.mark.slow
def test_adapter_load_chat_unload(engine_server, adapters_dir):
    question = "What is the capital of Italy?"

    async def test(engine):
        base = await collect(engine, chat(question))
        info = await engine.load_adapter("a", adapters_dir / "a")
        listed = httpx.get(
            engine_server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}
        ).json()
        tuned = await collect(engine, chat(question, adapter="a"))
        with pytest.raises(AdapterConflict, match="new name"):
            await engine.load_adapter("a", adapters_dir / "a")
        # a second client that does not know about "a": the server's own answer is normalised
        other = VLLMEngine(engine_server.url, api_key=KEY, max_lora_rank=8)
        await other.start()
        assert [a.name for a in other.adapters()] == ["a"]  # read from the server's /v1/models
        other._adapters.clear()
        with pytest.raises(AdapterConflict):
            await other.load_adapter("a", adapters_dir / "a")
        await other.close()
        await engine.unload_adapter("a")
        with pytest.raises(ModelNotFound):
            await collect(engine, chat(question, adapter="a"))
        with pytest.raises(ModelNotFound, match="no adapter named 'a'"):
            await engine.unload_adapter("a")
        return base, info, listed, tuned, engine.adapters()

    base, info, listed, tuned, after = run(test, engine_server.url)
    assert info.rank == 4 and info.path == (adapters_dir / "a").resolve()
    assert {m["id"]: m.get("parent") for m in listed["data"]}["a"] is not None
    assert "".join(d.text for d in tuned) != "".join(d.text for d in base)
    assert after == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"use_dora": True}, "uses DoRA"),
        ({"modules_to_save": ["lm_head"]}, "saves whole modules"),
        ({"peft_type": "IA3"}, "vLLM serves only LoRA"),
        ({"r": 16, "lora_alpha": 32}, "rank 16, above vLLM's --max-lora-rank 8"),
        ({"base_model_name_or_path": "someone/other-model"}, "trained on base model 'someone/other-model'"),
    ],
)
@pytest.mark.slow
def test_adapters_vllm_cannot_serve_are_refused_before_sending(
    engine_server, adapters_dir, tmp_path, change, message
):
    adapter = shutil.copytree(adapters_dir / "a", tmp_path / "copy")
    rewrite_config(adapter, **change)

    async def test(engine):
        with pytest.raises(InvalidAdapter, match=re.escape(message)) as caught:
            await engine.load_adapter("refused", adapter)
        return caught.value

    error = run(test, engine_server.url)
    assert error.status == 400 and error.param == "lora_path"
    models = httpx.get(engine_server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert "refused" not in [m["id"] for m in models["data"]]  # nothing reached the server


@pytest.mark.slow
def test_bad_names_and_paths_are_refused(engine_server, tmp_path):
    async def test(engine):
        with pytest.raises(InvalidAdapter, match="not allowed"):
            await engine.load_adapter("../x", tmp_path)
        with pytest.raises(InvalidAdapter, match="reserved"):
            await engine.load_adapter(engine.model_name, tmp_path)
        with pytest.raises(InvalidAdapter, match="no adapter_config.json"):
            await engine.load_adapter("empty", tmp_path)

    run(test, engine_server.url)


@pytest.mark.slow
def test_sleep_refuses_generation_until_wake_up(engine_server):
    async def test(engine):
        await engine.sleep()
        asleep = await engine.is_sleeping()
        with pytest.raises(EngineUnavailable, match="asleep"):
            await collect(engine, chat("hi"))
        await engine.wake_up()
        started = time.perf_counter()
        deltas = await collect(engine, chat("hi", max_tokens=3))
        return asleep, await engine.is_sleeping(), deltas, time.perf_counter() - started

    asleep, still_asleep, deltas, _ = run(test, engine_server.url)
    assert asleep and not still_asleep
    assert deltas[-1].finish_reason is not None


def test_unsupported_request_is_invalid_request_shape():
    # a 400 that is not about context or adapters stays an invalid request with vLLM's message
    error = vllm_error(
        400,
        b'{"error":{"message":"best_of must be 1","type":"BadRequestError","param":"best_of","code":400}}',
    )
    assert isinstance(error, InvalidRequest) and error.param == "best_of" and error.status == 400
