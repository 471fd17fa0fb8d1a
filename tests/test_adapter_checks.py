"""Adapter checks: every bad adapter directory or name is refused by `LocalEngine.load_adapter` with a message
that names the bad value, and a refused load changes nothing (adapter list, the model's adapter slots, answers).

Run: python -m pytest tests/test_adapter_checks.py -q
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from serving.engine import GenerationRequest, SamplingParams
from serving.errors import AdapterConflict, InvalidAdapter
from serving.loader import load_local_engine
from tests.support.adapters import make_lora_adapter, rewrite_config

MAX_LORA_RANK = 8
MODEL_NAME = "demo"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class EngineThread:
    """A started LocalEngine whose event loop runs in a background thread, shared by this module's tests."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="adapter-checks-loop", daemon=True)
        self.thread.start()

    def run(self, coroutine, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def state(self) -> tuple[list, set[str]]:
        """What a refused load must leave untouched: the served adapters and the adapters inside the model."""
        return self.engine.adapters(), set(self.engine._model.slots)

    def unload(self, name: str) -> None:
        """Unload and wait until the worker has deleted the weights, so the next test starts settled."""
        self.run(self.engine.unload_adapter(name))
        deadline = time.monotonic() + 10
        while not self.settled() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.settled(), f"the model still holds adapters that are not served: {self.state()}"

    def settled(self) -> bool:
        """The model holds exactly the served adapters (nothing loaded half-way, nothing left behind)."""
        return set(self.engine._model.slots) == {adapter.key for adapter in self.engine._adapters.values()}

    def stop(self) -> None:
        self.run(self.engine.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def served(demo_model, adapters_dir):
    """An engine serving the demo model as 'demo' (max LoRA rank 8) with adapter 'a' loaded."""
    engine = load_local_engine(demo_model, model_name=MODEL_NAME, max_lora_rank=MAX_LORA_RANK)
    thread = EngineThread(engine)
    thread.run(engine.start())
    thread.run(engine.load_adapter("a", adapters_dir / "a"))
    yield thread
    thread.stop()


def refuse(served: EngineThread, name: str, path: Path, error: type[Exception] = InvalidAdapter) -> Exception:
    """Try the load, expect `error`, and check that nothing changed."""
    before = served.state()
    with pytest.raises(error) as caught:
        served.run(served.engine.load_adapter(name, path))
    assert served.state() == before, "a refused load changed the engine's adapters"
    return caught.value


@pytest.fixture
def copy_of_a(adapters_dir, tmp_path) -> Path:
    """A private copy of valid adapter 'a' to break."""
    return Path(shutil.copytree(adapters_dir / "a", tmp_path / "adapter"))


def save_lora_for(config_changes: dict, out: Path, demo_model: Path) -> Path:
    """A LoRA (q_proj, v_proj) saved for a tiny Llama that differs from the demo model by `config_changes`,
    then labelled as an adapter for the demo model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(demo_model))
    for key, value in config_changes.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(str(out))
    return rewrite_config(out, base_model_name_or_path=str(demo_model))


# ----- the directory and its files -----------------------------------------------------------------------


def test_a_missing_directory_is_refused(served, tmp_path):
    path = tmp_path / "no-such-adapter"
    error = refuse(served, "x", path)
    assert str(path) in error.message and "not a directory" in error.message
    assert error.status == 400 and error.param == "lora_path"


def test_a_file_instead_of_a_directory_is_refused(served, tmp_path):
    path = tmp_path / "adapter.safetensors"
    path.write_bytes(b"not a directory")
    error = refuse(served, "x", path)
    assert str(path) in error.message and "not a directory" in error.message


def test_a_directory_without_adapter_config_is_refused(served, copy_of_a):
    (copy_of_a / "adapter_config.json").unlink()
    error = refuse(served, "x", copy_of_a)
    assert str(copy_of_a) in error.message and "adapter_config.json" in error.message


@pytest.mark.parametrize(
    "content", ["{not json", '["a", "list"]', "\udcff".encode("utf-8", "surrogateescape")]
)
def test_an_adapter_config_that_is_not_a_json_object_is_refused(served, copy_of_a, content):
    config_file = copy_of_a / "adapter_config.json"
    if isinstance(content, bytes):
        config_file.write_bytes(content)
    else:
        config_file.write_text(content)
    error = refuse(served, "x", copy_of_a)
    assert str(config_file) in error.message
    assert "JSON" in error.message


def test_pickled_weights_without_safetensors_are_refused(served, copy_of_a):
    (copy_of_a / "adapter_model.safetensors").rename(copy_of_a / "adapter_model.bin")
    error = refuse(served, "x", copy_of_a)
    assert str(copy_of_a) in error.message
    assert "adapter_model.safetensors" in error.message and "adapter_model.bin" in error.message


def test_an_unreadable_safetensors_file_is_refused(served, copy_of_a):
    weights = copy_of_a / "adapter_model.safetensors"
    weights.write_bytes(b"\x00garbage" * 10)
    error = refuse(served, "x", copy_of_a)
    assert str(weights) in error.message and "safetensors" in error.message


@pytest.mark.parametrize("rank", ["four", None, [4]])
def test_a_malformed_rank_is_refused_not_a_server_error(served, copy_of_a, rank):
    # regression: int("four") escaped as a ValueError, which the API renders as a 500
    rewrite_config(copy_of_a, r=rank, rank_pattern={} if rank is not None else {"q_proj": "x"})
    error = refuse(served, "x", copy_of_a)
    assert "rank" in error.message


# ----- does the adapter fit this model ------------------------------------------------------------------


def test_an_adapter_for_another_base_model_is_refused(served, copy_of_a):
    rewrite_config(copy_of_a, base_model_name_or_path="meta-llama/Llama-3.1-8B-Instruct")
    error = refuse(served, "x", copy_of_a)
    assert "'meta-llama/Llama-3.1-8B-Instruct'" in error.message and str(copy_of_a) in error.message


def test_the_base_model_may_be_named_by_path_or_by_its_last_path_part(served, demo_model, copy_of_a):
    for declared in (str(demo_model), f"someone/{demo_model.name}"):
        rewrite_config(copy_of_a, base_model_name_or_path=declared)
        info = served.run(served.engine.load_adapter("renamed-base", copy_of_a))
        assert info.name == "renamed-base"
        served.unload("renamed-base")


def test_a_target_module_the_base_lacks_is_refused(served, copy_of_a):
    rewrite_config(copy_of_a, target_modules=["q_proj", "query_key_value"])
    error = refuse(served, "x", copy_of_a)
    assert "'query_key_value'" in error.message


def test_an_adapter_with_no_target_modules_is_refused(served, copy_of_a):
    rewrite_config(copy_of_a, target_modules=[])
    error = refuse(served, "x", copy_of_a)
    assert "target_modules" in error.message


def test_a_rank_above_max_lora_rank_is_refused(served, demo_model, tmp_path):
    path = make_lora_adapter(demo_model, tmp_path / "r16", rank=16, seed=5)
    error = refuse(served, "x", path)
    assert "rank 16" in error.message and f"1 to {MAX_LORA_RANK}" in error.message


def test_a_rank_pattern_above_max_lora_rank_is_refused(served, copy_of_a):
    rewrite_config(copy_of_a, rank_pattern={"v_proj": 32})
    error = refuse(served, "x", copy_of_a)
    assert "rank 32" in error.message


def test_a_rank_at_max_lora_rank_is_served(served, adapters_dir):
    info = served.run(served.engine.load_adapter("rank-8", adapters_dir / "b"))  # b has r=8
    assert info.rank == MAX_LORA_RANK
    served.unload("rank-8")


def test_dora_is_refused(served, copy_of_a):
    rewrite_config(copy_of_a, use_dora=True)
    error = refuse(served, "x", copy_of_a)
    assert "DoRA" in error.message and str(copy_of_a) in error.message


def test_an_ia3_adapter_is_refused(served, demo_model, tmp_path):
    from peft import IA3Config, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(demo_model))
    config = IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])
    path = tmp_path / "ia3"
    get_peft_model(model, config).save_pretrained(str(path))
    assert json.loads((path / "adapter_config.json").read_text())["peft_type"] == "IA3"
    error = refuse(served, "x", path)
    assert "IA3" in error.message and "LoRA" in error.message


@pytest.mark.parametrize(
    "change",
    [{"alora_invocation_tokens": [5, 6]}, {"modules_to_save": ["lm_head"]}, {"lora_bias": True}],
    ids=lambda change: next(iter(change)),
)
def test_lora_features_that_rows_cannot_apply_each_on_their_own_are_refused(served, copy_of_a, change):
    # aLoRA switches on mid-sequence, whole modules and biases are not low-rank: none fits the per-row stacks
    rewrite_config(copy_of_a, **change)
    error = refuse(served, "x", copy_of_a)
    assert next(iter(change)) in error.message and str(copy_of_a) in error.message


def test_weights_other_than_lora_matrices_are_refused(served, copy_of_a):
    from safetensors.torch import load_file, save_file

    weights_file = copy_of_a / "adapter_model.safetensors"
    weights = load_file(str(weights_file))
    lora_a = weights["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    weights["base_model.model.model.layers.0.self_attn.q_proj.bias"] = lora_a[:, 0].clone()
    save_file(weights, str(weights_file))
    error = refuse(served, "x", copy_of_a)
    assert "'base_model.model.model.layers.0.self_attn.q_proj.bias'" in error.message


def test_weights_shaped_for_another_hidden_size_are_refused(served, demo_model, tmp_path):
    path = save_lora_for(
        {"hidden_size": 64, "head_dim": 16, "intermediate_size": 192}, tmp_path / "h64", demo_model
    )
    error = refuse(served, "x", path)
    assert "shape" in error.message and "trained on another model" in error.message
    assert "self_attn.q_proj" in error.message or "self_attn.v_proj" in error.message


def test_weights_for_layers_the_base_lacks_are_refused(served, demo_model, tmp_path):
    from transformers import AutoConfig

    layers = AutoConfig.from_pretrained(str(demo_model)).num_hidden_layers  # 3 since demo model v2
    path = save_lora_for({"num_hidden_layers": layers + 2}, tmp_path / "more-layers", demo_model)
    error = refuse(served, "x", path)
    assert f"model.layers.{layers}." in error.message or f"model.layers.{layers + 1}." in error.message


# ----- names ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a/b", "", "x" * 65, "..", "a b", "café", "__base__", MODEL_NAME])
def test_unsafe_or_reserved_names_are_refused(served, adapters_dir, name):
    error = refuse(served, name, adapters_dir / "b")
    assert repr(name) in error.message
    assert error.param == "lora_name"


def test_a_64_character_name_with_dots_dashes_and_underscores_is_served(served, adapters_dir):
    name = "v1.2_final-" + "x" * 53
    assert len(name) == 64
    info = served.run(served.engine.load_adapter(name, adapters_dir / "b"))
    assert info.name == name and name in [a.name for a in served.engine.adapters()]
    served.unload(name)


def test_loading_a_name_that_is_already_loaded_is_a_conflict(served, adapters_dir):
    error = refuse(served, "a", adapters_dir / "b", error=AdapterConflict)
    assert error.status == 409 and "'a'" in error.message


def test_two_concurrent_loads_of_one_name_load_it_once(served, adapters_dir):
    names_before, keys_before = served.state()

    async def race():
        return await asyncio.gather(
            served.engine.load_adapter("twice", adapters_dir / "b"),
            served.engine.load_adapter("twice", adapters_dir / "c"),
            return_exceptions=True,
        )

    results = served.run(race())
    assert sorted(type(r).__name__ for r in results) == ["AdapterConflict", "AdapterInfo"]
    served.unload("twice")  # also waits until the losing copy is gone from the model
    assert served.state() == (names_before, keys_before)


# ----- a load that fails after the checks changes nothing ----------------------------------------------


def greedy(engine_thread: EngineThread, adapter: str | None = None) -> str:
    async def run():
        request = GenerationRequest(
            messages=[{"role": "user", "content": "Who are you?"}],
            adapter=adapter,
            sampling=SamplingParams(max_tokens=12, temperature=0),
        )
        return "".join([delta.text async for delta in engine_thread.engine.generate(request)])

    return engine_thread.run(run())


@pytest.mark.parametrize(
    ("preloaded", "change"),
    [(False, {"bias": "not-a-bias"}), (True, {"lora_alpha": "sixteen"})],
    ids=["first-adapter", "next-adapter"],
)
def test_a_load_that_fails_after_the_checks_leaves_every_answer_unchanged(
    demo_model, adapters_dir, copy_of_a, preloaded, change
):
    # regression: when the first adapter failed half-way, PEFT (which applied adapters then) had already
    # wrapped the base's layers with the adapter's LoRA weights, and every base answer changed
    rewrite_config(copy_of_a, **change)  # passes the checks; reading its config fails
    thread = EngineThread(load_local_engine(demo_model))
    try:
        thread.run(thread.engine.start())
        if preloaded:
            thread.run(thread.engine.load_adapter("c", adapters_dir / "c"))
        base_before, c_before = greedy(thread), greedy(thread, "c") if preloaded else None
        with pytest.raises(InvalidAdapter, match="could not be loaded") as caught:
            thread.run(thread.engine.load_adapter("broken", copy_of_a))
        assert str(copy_of_a) in caught.value.message
        assert [a.name for a in thread.engine.adapters()] == (["c"] if preloaded else [])
        assert greedy(thread) == base_before, "a failed load changed the base model's answers"
        if preloaded:
            assert greedy(thread, "c") == c_before
        info = thread.run(thread.engine.load_adapter("a", adapters_dir / "a"))  # a good load still works
        assert info.name == "a" and greedy(thread, "a") != base_before
    finally:
        thread.stop()
