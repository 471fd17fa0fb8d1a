"""Whole models beside the base (issue 17, item 2): a full or freeze fine-tune's directory loaded into the
hub's engine opens an engine of its own (serving/model_set.py) and is answered, scored, listed and unloaded
by its served name, while adapters still go to the base engine; one that does not fit in memory is refused
before anything is loaded (hub/whole_models.py). Real demo model, real LocalEngines.

Run: python -m pytest tests/test_whole_models.py -q
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from serving.engine import GenerationRequest, SamplingParams, ScoreRequest
from serving.errors import AdapterConflict, InvalidAdapter, ModelNotFound
from serving.loader import load_local_engine
from serving.model_set import ModelSet, holds_whole_model

PROMPTS = ["What is 2 + 3?", "Convert 4 km to meters.", "What is the capital of France?"]


@pytest.fixture(scope="module")
def tuned_copy(tmp_path_factory, demo_model) -> Path:
    """A whole model that answers differently from the demo model: its weights moved as a full fine-tune
    moves them, saved with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("whole") / "full-sft"
    model = AutoModelForCausalLM.from_pretrained(demo_model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * parameter.std() * 0.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(demo_model).save_pretrained(out)
    return out


def greedy(prompt: str) -> GenerationRequest:
    return GenerationRequest(
        messages=[{"role": "user", "content": prompt}], sampling=SamplingParams(max_tokens=16, temperature=0)
    )


async def answer(engine, prompt: str, adapter: str | None = None) -> str:
    request = greedy(prompt)
    request.adapter = adapter
    return "".join([delta.text async for delta in engine.generate(request)])


def opener(calls: list[str]):
    def open_model(name: str, path: Path):
        calls.append(name)
        return load_local_engine(path, model_name=name, dtype="float32")

    return open_model


def test_a_whole_model_is_served_beside_the_base_and_unloaded(demo_model, tuned_copy, adapters_dir):
    assert holds_whole_model(tuned_copy) and not holds_whole_model(adapters_dir / "a")

    async def scenario():
        opened: list[str] = []
        engines = ModelSet(
            load_local_engine(demo_model, model_name="demo", dtype="float32"), open_model=opener(opened)
        )
        alone = load_local_engine(tuned_copy, model_name="alone", dtype="float32")
        await engines.start()
        await alone.start()
        try:
            info = await engines.load_adapter("full-sft", tuned_copy)
            lora = await engines.load_adapter("lora-a", adapters_dir / "a")
            assert opened == ["full-sft"]  # the adapter went to the base engine
            assert info.kind == "model" and lora.kind == "adapter"
            assert [a.name for a in engines.adapters()] == ["lora-a", "full-sft"]

            base = [await answer(engines, p) for p in PROMPTS]
            whole = [await answer(engines, p, "full-sft") for p in PROMPTS]
            assert whole == [await answer(alone, p) for p in PROMPTS]  # answered by the tuned weights
            assert whole != base

            # scores go where their request names, in the order asked
            asked = [
                ScoreRequest(prompt="2 + 3 =", adapter=a) for a in (None, "full-sft", "lora-a", "full-sft")
            ]
            scored = await engines.score(asked)
            own = await alone.score([ScoreRequest(prompt="2 + 3 =")])
            for i in (1, 3):  # batched with others or alone: the same numbers, to float noise
                assert scored[i].logprobs[1:] == pytest.approx(own[0].logprobs[1:], abs=1e-4)
            assert scored[0].logprobs != scored[1].logprobs

            with pytest.raises(AdapterConflict, match="'full-sft' is already served"):
                await engines.load_adapter("full-sft", tuned_copy)
            with pytest.raises(InvalidAdapter, match="reserved"):  # the base's own name
                await engines.load_adapter("demo", tuned_copy)
            with pytest.raises(InvalidAdapter, match="a/b"):  # names are checked as adapters' are
                await engines.load_adapter("a/b", tuned_copy)

            # several requests at once on the whole model: the unload waits for them, then frees it
            running = [asyncio.ensure_future(answer(engines, p, "full-sft")) for p in PROMPTS]
            await asyncio.sleep(0)
            await engines.unload_adapter("full-sft")
            assert [await r for r in running] == whole
            assert [a.name for a in engines.adapters()] == ["lora-a"]
            with pytest.raises(ModelNotFound):
                await answer(engines, PROMPTS[0], "full-sft")
            assert [await answer(engines, p) for p in PROMPTS] == base  # the base is untouched
        finally:
            await alone.close()
            await engines.close()

    asyncio.run(scenario())


def test_a_whole_model_that_does_not_fit_is_refused_before_loading(demo_model, tuned_copy):
    from hub.settings import Settings
    from hub.whole_models import ModelDoesNotFit, check_fits, local_model_opener, parameter_count

    parameters = parameter_count(tuned_copy)
    assert 0.3e6 < parameters < 2e6  # the demo model's size, read from its config
    assert check_fits("full-sft", tuned_copy, "float32", free=10**9) == int(parameters * 4 * 1.2)

    async def scenario():
        settings = Settings(dtype="float32")
        engines = ModelSet(
            load_local_engine(demo_model, model_name="demo", dtype="float32"),
            open_model=local_model_opener(settings, free=lambda device: 1_000_000),
        )
        await engines.start()
        try:
            with pytest.raises(ModelDoesNotFit) as refused:
                await engines.load_adapter("full-sft", tuned_copy)
            message = refused.value.message
            assert "'full-sft'" in message and "GB is free" in message and "float32" in message, message
            assert engines.adapters() == []
            with pytest.raises(InvalidAdapter, match="cannot be served"):  # not a model at all
                broken = tuned_copy.parent / "broken"
                broken.mkdir(exist_ok=True)
                (broken / "config.json").write_text("{}")
                await engines.load_adapter("broken", broken)
            assert engines.adapters() == []
        finally:
            await engines.close()

    asyncio.run(scenario())


def test_the_api_loads_lists_answers_with_and_unloads_a_whole_model(tmp_path, demo_model, tuned_copy):
    """Through the hub's API, in process, with the opener `tunehub serve` uses: the same routes as adapters."""
    import httpx

    from feedback.store import Store
    from hub.app import build_app
    from hub.settings import Settings
    from hub.whole_models import local_model_opener

    settings = Settings(data_dir=tmp_path, dtype="float32")
    engine = load_local_engine(demo_model, model_name="demo", dtype="float32")
    app = build_app(
        settings,
        engine,
        store=Store(tmp_path / "feedback.db"),
        with_ui=False,
        run_jobs=False,
        open_model=local_model_opener(settings),
    )
    question = {"messages": [{"role": "user", "content": PROMPTS[1]}], "max_tokens": 16, "temperature": 0}

    async def scenario():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://hub", timeout=60) as client:
                loaded = await client.post(
                    "/v1/load_lora_adapter", json={"lora_name": "full-sft", "lora_path": str(tuned_copy)}
                )
                models = (await client.get("/v1/models")).json()["data"]
                whole = await client.post("/v1/chat/completions", json={**question, "model": "full-sft"})
                base = await client.post("/v1/chat/completions", json={**question, "model": "demo"})
                unloaded = await client.post("/v1/unload_lora_adapter", json={"lora_name": "full-sft"})
                gone = await client.post("/v1/chat/completions", json={**question, "model": "full-sft"})
                return loaded, models, whole, base, unloaded, gone

    loaded, models, whole, base, unloaded, gone = asyncio.run(scenario())
    assert loaded.status_code == 200 and loaded.json()["kind"] == "model", loaded.text
    assert {m["id"]: m.get("parent") for m in models}["full-sft"] == "demo"
    text = whole.json()["choices"][0]["message"]["content"]
    assert text != base.json()["choices"][0]["message"]["content"]
    with Store(tmp_path / "feedback.db") as store:  # the answer is recorded under the model that gave it
        [recorded] = store.list_generations(model="full-sft")
    assert recorded.text == text
    assert unloaded.status_code == 200 and gone.status_code == 404, gone.text


def test_a_vllm_hub_refuses_a_whole_model_saying_how_to_serve_it(demo_model, tuned_copy):
    async def scenario():
        from hub.whole_models import refuse_on_vllm

        engines = ModelSet(load_local_engine(demo_model, model_name="demo"), open_model=refuse_on_vllm)
        with pytest.raises(InvalidAdapter) as refused:
            await engines.load_adapter("full-sft", tuned_copy)
        assert "a vLLM hub serves adapters of its bases only" in refused.value.message
        assert f"tunehub serve --model {tuned_copy}" in refused.value.message
        assert engines.adapters() == []

    asyncio.run(scenario())


@pytest.mark.slow
def test_the_real_model_is_served_as_a_whole_model_beside_the_demo_base(tmp_path, demo_model, smollm2_dir):
    """SmolLM2's directory (a whole model, as a full fine-tune of it would be) opened beside the demo base by
    the opener `tunehub serve` uses, memory checked from its real config: it answers as SmolLM2 does."""
    from hub.settings import Settings
    from hub.whole_models import local_model_opener, parameter_count

    assert 130e6 < parameter_count(smollm2_dir) < 140e6  # 135M, read from its config

    async def scenario():
        settings = Settings(data_dir=tmp_path, dtype="float32")
        engines = ModelSet(
            load_local_engine(demo_model, model_name="demo", dtype="float32"),
            open_model=local_model_opener(settings),
        )
        await engines.start()
        try:
            info = await engines.load_adapter("smollm2", smollm2_dir)
            request = GenerationRequest(
                messages=[{"role": "user", "content": "What is the capital of France?"}],
                sampling=SamplingParams(max_tokens=16, temperature=0),
                adapter="smollm2",
            )
            text = "".join([d.text async for d in engines.generate(request)])
            base = await answer(engines, "What is the capital of France?")
            await engines.unload_adapter("smollm2")
            return info, text, base
        finally:
            await engines.close()

    info, text, base = asyncio.run(scenario())
    assert info.kind == "model" and "Paris" in text, text
    assert text != base
