"""MultiLoraModel on the demo model: one batch mixing adapters of different ranks, targets and scalings (and the
base) gives each row what PEFT gives for that adapter alone, in a fixed number of operations whatever the
number of adapters; unloading one adapter leaves the others' rows bit for bit as they were.

Run: python -m pytest tests/test_lora_model.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from serving import kvbatch
from serving.engine import BASE_ADAPTER
from serving.lora_model import FIRST_CAPACITY, MultiLoraModel
from tests.support.adapters import make_lora_adapter

PROMPTS = [
    "Hi",
    "What is the capital of France?",
    "What is 12 + 30?",
    "Who are you?",
    "Reverse the word garden.",
]
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def adapters(demo_model, adapters_dir, tmp_path_factory) -> dict[str, Path]:
    """a (q,v r4), b (attention r8), c (mlp r4) and rs: rsLoRA on every linear layer, r2 with o_proj at r6,
    its own alpha and another alpha for v_proj."""
    rs = make_lora_adapter(
        demo_model,
        tmp_path_factory.mktemp("rslora") / "rs",
        rank=2,
        targets=ALL_LINEAR,
        seed=4,
        scale=20.0,
        lora_alpha=3,
        use_rslora=True,
        rank_pattern={"o_proj": 6},
        alpha_pattern={"v_proj": 7},
    )
    return {"a": adapters_dir / "a", "b": adapters_dir / "b", "c": adapters_dir / "c", "rs": rs}


def load_base(demo_model: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(demo_model)).eval()


def prompt_batch(demo_model: Path, count: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(demo_model))
    return [tokenizer(PROMPTS[i % len(PROMPTS)])["input_ids"] for i in range(count)]


def prefill(model: MultiLoraModel, prompts: list[list[int]], names: list[str]) -> torch.Tensor:
    return kvbatch.prefill(model.forward, prompts, names, 0, model.device)[0]


def reference_logits(model, prompts: list[list[int]]) -> torch.Tensor:
    """Last-position logits of `model` (plain or PeftModel) over the same left-padded batch, no cache."""
    length = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (length - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    return out.logits[:, -1, :].float()


def test_one_batch_on_adapters_of_different_ranks_and_scalings_matches_peft_per_adapter(demo_model, adapters):
    from peft import PeftModel

    model = MultiLoraModel(load_base(demo_model))
    for name, path in adapters.items():
        model.load(name, path)
    names = [BASE_ADAPTER, "a", "b", "c", "rs", "a", BASE_ADAPTER, "rs"]
    prompts = prompt_batch(demo_model, len(names))
    logits = prefill(model, prompts, names)

    expected = {BASE_ADAPTER: reference_logits(load_base(demo_model), prompts)}
    for name, path in adapters.items():
        expected[name] = reference_logits(
            PeftModel.from_pretrained(load_base(demo_model), str(path)), prompts
        )
    for row, name in enumerate(names):
        # fp32 noise only: these adapters move the logits by up to ~15
        torch.testing.assert_close(
            logits[row], expected[name][row], atol=5e-5, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}"
        )
        if name != BASE_ADAPTER:
            assert not torch.allclose(logits[row], expected[BASE_ADAPTER][row], atol=1e-2), (
                f"{name} changed nothing"
            )
    # rows on the base add exact zeros: bit for bit what the same call gives on a model with no adapters
    plain = prefill(MultiLoraModel(load_base(demo_model)), prompts, [BASE_ADAPTER] * len(names))
    for row in (0, 6):
        assert torch.equal(logits[row], plain[row])


def test_a_mixed_batch_costs_the_same_operations_for_2_or_9_adapters(demo_model, adapters):
    # the key property: PEFT loops over the batch's adapters in every layer; the stacks do two bmm per layer
    from torch.overrides import TorchFunctionMode

    class CountCalls(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            CountCalls.calls += 1
            return func(*args, **(kwargs or {}))

    model = MultiLoraModel(load_base(demo_model))
    keys = [f"b{i}" for i in range(FIRST_CAPACITY + 1)]  # one more than fits: the stacks grow
    for key in keys:
        model.load(key, adapters["b"])
    prompts = prompt_batch(demo_model, len(keys))
    counts, outputs = [], []
    for names in ([keys[0], keys[-1]] * len(keys))[: len(keys)], keys:
        CountCalls.calls = 0
        with CountCalls():
            outputs.append(prefill(model, prompts, names))
        counts.append(CountCalls.calls)
    assert counts[0] == counts[1], f"operations grew with the number of adapters: {counts}"
    # the same weights in every slot, the last one written after the stacks grew: every row agrees
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-6, rtol=1e-6)


def test_unloading_an_adapter_leaves_the_other_rows_identical_and_the_last_one_restores_the_base(
    demo_model, adapters
):
    base = load_base(demo_model)
    model = MultiLoraModel(base)
    for name in ("a", "b", "c"):
        model.load(name, adapters[name])
    names = [BASE_ADAPTER, "a", "c", "a"]
    prompts = prompt_batch(demo_model, len(names))
    before = prefill(model, prompts, names)
    with_b = prefill(model, prompts, ["b"] * len(names))

    model.delete("b")
    assert torch.equal(prefill(model, prompts, names), before)
    model.load("b-again", adapters["b"])  # into the slot b freed
    assert torch.equal(prefill(model, prompts, names), before)
    torch.testing.assert_close(
        prefill(model, prompts, ["b-again"] * len(names)), with_b, atol=1e-6, rtol=1e-6
    )

    for key in ("a", "c", "b-again"):
        model.delete(key)
    assert model.slots == {} and model.layers == {}
    assert not any(module._forward_hooks for module in base.modules()), "a LoRA hook stayed on the base"
    plain = prefill(MultiLoraModel(load_base(demo_model)), prompts, [BASE_ADAPTER] * len(names))
    assert torch.equal(prefill(model, prompts, [BASE_ADAPTER] * len(names)), plain)
