"""LoRA adapters over the vLLM-compatible endpoints of a real `tunehub serve`: load, serve as a model id,
unload; every bad adapter directory or name refused with a message naming the problem and nothing changed;
and adapters loaded and unloaded while streaming chats run, without one failed request.

Run: .venv/bin/python -m pytest tests/test_api_adapters.py -q   (add -m "not slow" to skip the long ones)
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from hub.chat_service import DEFAULT_MODEL
from tests.support.adapters import make_lora_adapter, rewrite_config
from tests.support.openai_schema import validate
from tests.support.server import InProcessHub

STORY = [{"role": "user", "content": "Tell me a long story"}]


@pytest.fixture(scope="module")
def base_id(hub) -> str:
    return httpx.get(f"{hub.url}/v1/models").json()["data"][0]["id"]


@pytest.fixture(scope="module")
def client(hub) -> openai.OpenAI:
    return openai.OpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def load(hub, name: str, path: Path | str, **extra) -> httpx.Response:
    return httpx.post(
        f"{hub.url}/v1/load_lora_adapter",
        json={"lora_name": name, "lora_path": str(path), **extra},
        timeout=120,
    )


def unload(hub, name: str) -> httpx.Response:
    return httpx.post(f"{hub.url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=120)


def model_ids(hub) -> list[str]:
    return [card["id"] for card in httpx.get(f"{hub.url}/v1/models").json()["data"]]


def adapter_ids(hub) -> list[str]:
    """The loaded adapters: the model list without the base (first) and `tunehub-default` (its alias)."""
    return [id for id in model_ids(hub)[1:] if id != DEFAULT_MODEL]


def expect_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    validate(body, "ErrorResponse")
    return body["error"]


def loaded_adapters_gauge(hub) -> float:
    for line in httpx.get(f"{hub.url}/metrics").text.splitlines():
        if line.startswith("tunehub_loaded_adapters "):
            return float(line.split()[1])
    raise AssertionError("tunehub_loaded_adapters is missing from /metrics")


def steps_with_more_than_two_rows(hub) -> float:
    """Decode steps so far that ran more than two requests together (from the batch-size histogram)."""
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{hub.url}/metrics").text)}
    samples = families["tunehub_batch_size"].samples
    total = next(s.value for s in samples if s.name == "tunehub_batch_size_count")
    up_to_two = next(
        s.value for s in samples if s.name == "tunehub_batch_size_bucket" and s.labels["le"] == "2.0"
    )
    return total - up_to_two


def greedy(client, model: str, max_tokens: int = 16) -> str:
    completion = client.chat.completions.create(
        model=model, messages=STORY, max_tokens=max_tokens, temperature=0
    )
    return completion.choices[0].message.content


# ----- the happy path ---------------------------------------------------------------------------------------


def test_load_chat_unload(hub, client, base_id, adapters_dir):
    name = "story-a"
    before_ids, before_gauge = model_ids(hub), loaded_adapters_gauge(hub)
    response = load(hub, name, adapters_dir / "a")
    assert response.status_code == 200, response.text
    assert response.json()["name"] == name and response.json()["status"] == "loaded"
    try:
        listing = httpx.get(f"{hub.url}/v1/models").json()
        validate(listing, "ListModelsResponse")
        [card] = [c for c in listing["data"] if c["id"] == name]
        validate(card, "Model")
        assert card["parent"] == base_id
        assert model_ids(hub) == [*before_ids, name]
        one = httpx.get(f"{hub.url}/v1/models/{name}").json()
        validate(one, "Model")
        assert one["parent"] == base_id
        assert client.models.retrieve(name).id == name
        assert loaded_adapters_gauge(hub) == before_gauge + 1
        assert httpx.get(f"{hub.url}/health").json()["adapters"] == len(adapter_ids(hub))

        adapted = client.chat.completions.create(model=name, messages=STORY, max_tokens=16, temperature=0)
        assert adapted.model == name
        assert adapted.choices[0].message.content != greedy(client, base_id)
    finally:
        response = unload(hub, name)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "unloaded"
    assert model_ids(hub) == before_ids
    assert loaded_adapters_gauge(hub) == before_gauge
    expect_error(httpx.get(f"{hub.url}/v1/models/{name}"), 404)
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model=name, messages=STORY, max_tokens=4)
    assert raised.value.param == "model" and name in raised.value.message


def test_two_adapters_answer_differently_side_by_side(hub, client, base_id, adapters_dir):
    load(hub, "pair-a", adapters_dir / "a").raise_for_status()
    load(hub, "pair.b", adapters_dir / "b").raise_for_status()  # '.' is allowed in names
    try:
        answers = {model: greedy(client, model, 12) for model in (base_id, "pair-a", "pair.b")}
        assert len(set(answers.values())) == 3, answers
        assert greedy(client, "pair-a", 12) == answers["pair-a"]  # routing is stable, not random
    finally:
        unload(hub, "pair-a")
        unload(hub, "pair.b")


# ----- refusals ---------------------------------------------------------------------------------------------


def _shrink_one_tensor(adapter: Path) -> None:
    """Rewrite the weights so one LoRA A matrix has the input width of some other (smaller) model."""
    from safetensors.torch import load_file, save_file

    weights_file = adapter / "adapter_model.safetensors"
    tensors = load_file(str(weights_file))
    key = next(k for k in sorted(tensors) if k.endswith("lora_A.weight"))
    tensors[key] = tensors[key][:, :64].contiguous()
    save_file(tensors, str(weights_file))


def _bad_adapter(root: Path, good: Path, kind: str) -> Path:
    path = root / kind
    if kind == "not-a-directory":
        return root / "does-not-exist"
    shutil.copytree(good, path)
    if kind == "no-config":
        (path / "adapter_config.json").unlink()
    elif kind == "invalid-json":
        (path / "adapter_config.json").write_text('{"r": 4, "target_modules": ["q_proj"')
    elif kind == "bin-weights-only":
        (path / "adapter_model.safetensors").rename(path / "adapter_model.bin")
    elif kind == "wrong-base-model":
        rewrite_config(path, base_model_name_or_path="meta-llama/Llama-3.1-8B-Instruct")
    elif kind == "unknown-target-module":
        rewrite_config(path, target_modules=["q_proj", "nonexistent_proj"])
    elif kind == "not-lora":
        rewrite_config(path, peft_type="PREFIX_TUNING")
    elif kind == "shapes-of-another-model":
        _shrink_one_tensor(path)
    return path


BAD_ADAPTERS = {
    "not-a-directory": ["not a directory", "does-not-exist"],
    "no-config": ["adapter_config.json"],
    "invalid-json": ["not valid JSON"],
    "bin-weights-only": ["adapter_model.safetensors", "adapter_model.bin", "only safetensors"],
    "wrong-base-model": ["base model", "meta-llama/Llama-3.1-8B-Instruct"],
    "unknown-target-module": ["nonexistent_proj", "does not have"],
    "not-lora": ["PREFIX_TUNING", "LoRA"],
    "shapes-of-another-model": ["shape", "does not fit"],
    "rank-above-the-limit": ["rank 128", "1 to 64", "--max-lora-rank"],
}


@pytest.fixture(scope="module")
def bad_adapters(tmp_path_factory, adapters_dir, demo_model) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-adapters")
    paths = {
        kind: _bad_adapter(root, adapters_dir / "a", kind)
        for kind in BAD_ADAPTERS
        if kind != "rank-above-the-limit"
    }
    paths["rank-above-the-limit"] = make_lora_adapter(demo_model, root / "rank128", rank=128, seed=4)
    return paths


@pytest.mark.parametrize("kind", BAD_ADAPTERS)
def test_bad_adapter_directory_is_refused(hub, bad_adapters, kind):
    before = model_ids(hub)
    error = expect_error(load(hub, f"bad-{kind}", bad_adapters[kind]), 400)
    assert error["param"] == "lora_path"
    assert error["code"] == "invalid_adapter"
    for words in BAD_ADAPTERS[kind]:
        assert words in error["message"], error["message"]
    assert model_ids(hub) == before
    expect_error(httpx.get(f"{hub.url}/v1/models/bad-{kind}"), 404)


@pytest.mark.parametrize("name", ["../evil", "a/b", "", "x" * 65, "with space", ".."], ids=repr)
def test_bad_adapter_name_is_refused(hub, adapters_dir, name):
    before = model_ids(hub)
    error = expect_error(load(hub, name, adapters_dir / "a"), 400)
    assert error["param"] == "lora_name"
    assert repr(name) in error["message"] and "not allowed" in error["message"]
    assert model_ids(hub) == before


def test_base_model_name_is_reserved(hub, adapters_dir, base_id):
    before = model_ids(hub)
    error = expect_error(load(hub, base_id, adapters_dir / "a"), 400)
    assert error["param"] == "lora_name" and "reserved" in error["message"]
    assert model_ids(hub) == before


def test_longest_name_is_allowed(hub, client, adapters_dir):
    name = "n" * 64
    assert load(hub, name, adapters_dir / "c").status_code == 200
    try:
        assert name in model_ids(hub)
        assert greedy(client, name, 4)
    finally:
        assert unload(hub, name).status_code == 200


def test_duplicate_name_conflicts(hub, adapters_dir):
    assert load(hub, "twice", adapters_dir / "a").status_code == 200
    try:
        before = model_ids(hub)
        error = expect_error(load(hub, "twice", adapters_dir / "b"), 409)
        assert error["param"] == "lora_name"
        assert "'twice'" in error["message"] and "already loaded" in error["message"]
        assert model_ids(hub) == before
        [card] = [c for c in httpx.get(f"{hub.url}/v1/models").json()["data"] if c["id"] == "twice"]
        assert card["root"] == str(adapters_dir / "a")  # the first one still serves
    finally:
        assert unload(hub, "twice").status_code == 200
    # once unloaded, the name is free again
    assert load(hub, "twice", adapters_dir / "b").status_code == 200
    assert unload(hub, "twice").status_code == 200


def test_unload_unknown(hub):
    error = expect_error(unload(hub, "never-loaded"), 404)
    assert error["param"] == "lora_name" and "'never-loaded'" in error["message"]


def test_unload_base_model_is_refused(hub, base_id):
    before = model_ids(hub)
    response = unload(hub, base_id)
    assert 400 <= response.status_code < 500
    expect_error(response, response.status_code)
    assert model_ids(hub) == before


def test_load_inplace_is_refused(hub, adapters_dir):
    error = expect_error(load(hub, "inplace", adapters_dir / "a", load_inplace=True), 400)
    assert error["param"] == "load_inplace" and "not supported" in error["message"]
    assert "inplace" not in model_ids(hub)


def test_load_request_fields_are_checked(hub, adapters_dir):
    error = expect_error(httpx.post(f"{hub.url}/v1/load_lora_adapter", json={"lora_name": "nopath"}), 400)
    assert error["param"] == "lora_path" and "lora_path" in error["message"]
    error = expect_error(
        httpx.post(
            f"{hub.url}/v1/load_lora_adapter",
            json={"lora_name": "x", "lora_path": str(adapters_dir / "a"), "lora_rank": 4},
        ),
        400,
    )
    assert error["param"] == "lora_rank"


@pytest.mark.slow
def test_max_lora_rank_flag(tmp_path, demo_model, adapters_dir):
    with InProcessHub(
        model=demo_model, data_dir=tmp_path / "data", extra_args=["--max-lora-rank", "4"]
    ) as small:
        error = expect_error(load(small, "b", adapters_dir / "b"), 400)
        assert "rank 8" in error["message"] and "1 to 4" in error["message"]
        assert load(small, "a", adapters_dir / "a").status_code == 200  # rank 4 is within the limit
        assert adapter_ids(small) == ["a"]


# ----- hot-swap under load ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_hot_swap_under_load(hub, client, base_id, adapters_dir):
    """8 streaming chats run the whole time adapters come and go; not one of them may fail."""
    before, crowded_steps = model_ids(hub), steps_with_more_than_two_rows(hub)
    assert load(hub, "steady", adapters_dir / "b").status_code == 200
    stop = threading.Event()
    failures: list[str] = []
    finished = [0] * 8

    def chat_until_stopped(worker: int) -> None:
        model = base_id if worker % 2 else "steady"
        while not stop.is_set() or finished[worker] < 2:
            try:
                stream = client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": f"Question {worker}: who are you?"}],
                    max_tokens=8,
                    temperature=1,
                    stream=True,
                )
                reasons = [
                    c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason
                ]
                if reasons not in (["stop"], ["length"]):
                    failures.append(f"worker {worker}: stream ended with finish reasons {reasons}")
            except Exception as exc:  # any failure is the finding
                failures.append(f"worker {worker}: {type(exc).__name__}: {exc}")
                return
            finished[worker] += 1

    workers = [threading.Thread(target=chat_until_stopped, args=(i,)) for i in range(8)]
    for worker in workers:
        worker.start()
    swaps = 0
    try:
        time.sleep(0.5)  # let the chats get going
        for i in range(6):
            name = f"swap-{i % 2}"  # names come back: a reloaded name must serve again
            response = load(hub, name, adapters_dir / ("c" if i % 2 else "a"))
            assert response.status_code == 200, response.text
            assert name in model_ids(hub)
            assert greedy(client, name, 4)
            response = unload(hub, name)
            assert response.status_code == 200, response.text
            assert name not in model_ids(hub)
            swaps += 1
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=120)
        unload(hub, "steady")
    assert not any(worker.is_alive() for worker in workers)
    assert failures == []
    assert swaps == 6
    assert all(count >= 2 for count in finished), finished
    assert model_ids(hub) == before
    assert steps_with_more_than_two_rows(hub) > crowded_steps  # the chats really ran side by side
