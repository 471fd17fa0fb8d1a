"""Several base models in one hub (issue 17, item 1): `tunehub serve --model A --model B` serves each base by
an engine of its own; requests are routed by model name; each adapter goes onto the base it was trained on
and is listed under it (`/v1/models` parent, the UI pickers' groups); a name is served once across all bases;
registered adapters of every served base come back at start; a base that does not fit in memory, a name
given twice or several bases on vLLM are refused with a message that says so. Real demo models (the quick
one and the full one: two different bases of one architecture), real LocalEngines, a real `tunehub serve`.

Run: python -m pytest tests/test_several_bases.py -q   (the hub test is slow)
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sys
from pathlib import Path

import httpx
import pytest

from feedback.store import Store
from serving.engine import GenerationRequest, SamplingParams
from serving.errors import AdapterConflict, InvalidAdapter
from serving.loader import load_local_engine
from serving.model_set import ModelSet
from tests.support.adapters import make_lora_adapter
from tests.support.server import InProcessHub
from tests.test_training_jobs import TINY, finished, sft_rows, wait_for

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def lora_dirs(tmp_path_factory, demo_model, full_demo_model) -> dict[str, Path]:
    """An adapter trained on each base (its adapter_config.json names it), and one on neither."""
    root = tmp_path_factory.mktemp("several-bases")
    made = {
        "on-quick": make_lora_adapter(demo_model, root / "on-quick", rank=8, seed=1, scale=2.0),
        "on-full": make_lora_adapter(full_demo_model, root / "on-full", rank=8, seed=2, scale=2.0),
    }
    stray = make_lora_adapter(full_demo_model, root / "stray", rank=8, seed=3)
    config = json.loads((stray / "adapter_config.json").read_text())
    (stray / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": "/elsewhere/x"})
    )
    made["stray"] = stray
    return made


async def answer(engine, model: str | None) -> str:
    request = GenerationRequest(
        messages=QUESTION, sampling=SamplingParams(max_tokens=12, temperature=0), adapter=model
    )
    return "".join([d.text async for d in engine.generate(request)])


def test_each_request_and_adapter_goes_to_its_base(tmp_path, demo_model, full_demo_model, lora_dirs):
    from hub.arena_service import ArenaService
    from hub.chat_service import ChatService
    from hub.metrics import Metrics
    from hub.ui.chat import picker_choices
    from hub.whole_models import no_opener

    async def scenario():
        quick = load_local_engine(demo_model, model_name="quick", dtype="float32")
        full = load_local_engine(full_demo_model, model_name="full", dtype="float32")
        engines = ModelSet(quick, open_model=no_opener, others=[full])
        await engines.start()
        try:
            by_base = {name: await answer(engines, name) for name in ("quick", "full")}
            assert by_base["quick"] == await answer(quick, None) and by_base["full"] == await answer(
                full, None
            )
            assert await answer(engines, None) == by_base["quick"]  # no name: the primary base

            on_full = await engines.load_adapter("on-full", lora_dirs["on-full"])
            await engines.load_adapter("on-quick", lora_dirs["on-quick"])
            assert [a.name for a in full.adapters()] == ["on-full"] and on_full.parent == "full"
            assert [a.name for a in quick.adapters()] == ["on-quick"]
            assert await answer(engines, "on-full") == await answer(full, "on-full") != by_base["full"]

            with pytest.raises(InvalidAdapter) as stray:
                await engines.load_adapter("stray", lora_dirs["stray"])
            assert "'/elsewhere/x'" in stray.value.message and "quick (" in stray.value.message
            with pytest.raises(AdapterConflict, match="'on-quick' is already served"):  # on the other base
                await engines.load_adapter("on-quick", lora_dirs["on-full"])
            for base in ("full", "quick"):  # every base's name is reserved, whichever base the adapter is for
                with pytest.raises(InvalidAdapter, match=f"'{base}' is reserved"):
                    await engines.load_adapter(base, lora_dirs["on-full"])

            service = ChatService(engines, Metrics())
            listed = {m.id: m.parent for m in service.models()}
            assert listed == {"quick": None, "full": None, "on-quick": "quick", "on-full": "full"}
            assert picker_choices(service) == [
                ("quick", "quick"),
                ("on-quick (on quick)", "on-quick"),
                ("full", "full"),
                ("on-full (on full)", "on-full"),
            ]
            arena = ArenaService(
                service, Store(tmp_path / "feedback.db")
            )  # it may pit one base against the other
            assert set(arena.models()) == {"quick", "full", "on-quick", "on-full"}
            await engines.unload_adapter("on-full")
            assert full.adapters() == [] and [a.name for a in engines.adapters()] == ["on-quick"]
        finally:
            await engines.close()

    asyncio.run(scenario())


def test_a_base_that_does_not_fit_or_is_named_twice_is_refused(tmp_path, demo_model, full_demo_model):
    from hub.settings import Settings
    from hub.whole_models import ModelDoesNotFit, open_more_bases

    settings = Settings(data_dir=tmp_path, dtype="float32", more_models=[str(full_demo_model)])
    with pytest.raises(ModelDoesNotFit) as refused:
        open_more_bases(settings, taken={"quick150-v3"}, free=lambda device: 1000)
    assert "'full-v3'" in refused.value.message and "GB is free" in refused.value.message
    with pytest.raises(ValueError, match="'full-v3', a name already served"):
        open_more_bases(settings, taken={"full-v3"})


def tunehub_serve_fails(args: list[str]) -> str:
    from hub.cli import main as tunehub

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert tunehub(["serve", *args]) == 2
    return err.getvalue()


def test_several_bases_on_vllm_take_one_url_each(tmp_path, demo_model, full_demo_model):
    said = tunehub_serve_fails(
        ["--model", str(demo_model), "--model", str(full_demo_model), "--engine", "vllm",
         "--vllm-url", "http://127.0.0.1:9", "--data-dir", str(tmp_path)]
    )  # fmt: skip
    assert "--model given 2 times and --vllm-url 1 times" in said and "one --vllm-url per --model" in said, (
        said
    )


@pytest.mark.slow
def test_a_vllm_hub_starts_one_server_per_base(tmp_path, demo_model, full_demo_model, lora_dirs, monkeypatch):
    """Managed vLLM (a fake `vllm` that becomes `tunehub engine`): one server per --model, each with its own
    port and log, its adapters loaded on it, both stopped with the hub."""
    from tests.support.server import gone
    from tests.test_vllm_hub import REPO, _vllm_starts

    fake = tmp_path / "bin" / "vllm"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{REPO}/tests/support/fake_vllm.py" "$@"\n')
    fake.chmod(0o755)
    starts = tmp_path / "starts.jsonl"
    monkeypatch.setenv("FAKE_VLLM_ARGS", str(starts))
    extra = [
        "--model",
        str(full_demo_model),
        "--engine",
        "vllm",
        "--vllm-bin",
        str(fake),
        "--max-lora-rank",
        "8",
    ]
    with InProcessHub(model=demo_model, data_dir=tmp_path / "hub", extra_args=extra) as hub:
        servers = _vllm_starts(starts)
        assert sorted(s["argv"][1] for s in servers) == sorted([str(demo_model), str(full_demo_model)])
        assert len({s["argv"][s["argv"].index("--port") + 1] for s in servers}) == 2
        for server in servers:  # they share the GPU: vLLM's default 0.9 split between them
            assert server["argv"][server["argv"].index("--gpu-memory-utilization") + 1] == "0.45"
        assert (hub.data_dir / "vllm.log").exists() and (hub.data_dir / "vllm-2.log").exists()
        loaded = httpx.post(
            f"{hub.url}/v1/load_lora_adapter",
            json={"lora_name": "on-full", "lora_path": str(lora_dirs["on-full"])},
            timeout=60,
        )
        assert loaded.status_code == 200, loaded.text
        listed = {
            m["id"]: m.get("parent") for m in httpx.get(f"{hub.url}/v1/models", timeout=30).json()["data"]
        }
        assert listed["quick150-v3"] is None and listed["full-v3"] is None and listed["on-full"] == "full-v3"
        for model in ("quick150-v3", "full-v3", "on-full"):
            reply = httpx.post(
                f"{hub.url}/v1/chat/completions",
                json={"model": model, "messages": QUESTION, "max_tokens": 8, "temperature": 0},
                timeout=60,
            )
            assert reply.status_code == 200, (model, reply.text)
    assert all(gone(s["pid"]) for s in servers), "a vLLM server still runs after the hub stopped"


@pytest.mark.slow
def test_a_hub_serves_two_bases_with_their_adapters(tmp_path, demo_model, full_demo_model, lora_dirs):
    import openai

    data_dir = tmp_path / "data"
    with Store(data_dir / "feedback.db") as store:  # trained earlier on the second base: re-loaded at start
        store.add_adapter(
            "on-full", base=str(full_demo_model), method="lora", path=str(lora_dirs["on-full"]), metrics={}
        )
    extra = ["--model", str(full_demo_model)]
    with InProcessHub(model=demo_model, data_dir=data_dir, extra_args=extra) as hub:
        client = openai.OpenAI(base_url=f"{hub.url}/v1", api_key="unused", max_retries=0)
        listed = {m.id: m.model_extra.get("parent") for m in client.models.list().data}
        assert listed == {
            "quick150-v3": None,
            "tunehub-default": "quick150-v3",
            "full-v3": None,
            "on-full": "full-v3",
        }, listed

        def ask(model: str) -> str:
            reply = client.chat.completions.create(
                model=model, messages=QUESTION, temperature=0, max_tokens=12
            )
            return reply.choices[0].message.content

        answers = {model: ask(model) for model in ("quick150-v3", "full-v3", "on-full")}
        assert len(set(answers.values())) == 3, answers
        assert ask("tunehub-default") == answers["quick150-v3"]

        loaded = httpx.post(
            f"{hub.url}/v1/load_lora_adapter",
            json={"lora_name": "on-quick", "lora_path": str(lora_dirs["on-quick"])},
            timeout=60,
        )
        assert loaded.status_code == 200, loaded.text
        stray = httpx.post(
            f"{hub.url}/v1/load_lora_adapter",
            json={"lora_name": "stray", "lora_path": str(lora_dirs["stray"])},
            timeout=60,
        )
        assert stray.status_code == 400 and "none of the served base models" in stray.text, stray.text
        parents = {m.id: m.model_extra.get("parent") for m in client.models.list().data}
        assert parents["on-quick"] == "quick150-v3" and "stray" not in parents
        streamed = client.chat.completions.create(
            model="on-full", messages=QUESTION, temperature=0, max_tokens=12, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == answers["on-full"]

        # a job on the second base: trained from it, and live on it
        data = tmp_path / "sft.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in sft_rows(16)))
        body = {"stage": "sft", "data": str(data), "name": "km-full", "params": TINY}
        wrong = httpx.post(f"{hub.url}/v1/jobs", json={**body, "base": "nope"}, timeout=30)
        assert wrong.status_code == 400 and "'nope'" in wrong.text and "full-v3" in wrong.text, wrong.text
        created = httpx.post(f"{hub.url}/v1/jobs", json={**body, "base": "full-v3"}, timeout=30).json()
        job = wait_for(hub, created["id"], finished)
        assert job["status"] == "succeeded", job["error"]
        parents = {m.id: m.model_extra.get("parent") for m in client.models.list().data}
        assert parents["km-full"] == "full-v3"
        assert isinstance(ask("km-full"), str)
    with Store(data_dir / "feedback.db") as store:  # each answer stored under the model that gave it
        models = {g.model for g in store.list_generations()}
        trained = store.get_adapter("km-full")
    assert {"quick150-v3", "full-v3", "on-full", "km-full"} <= models
    assert trained.base == str(full_demo_model)
