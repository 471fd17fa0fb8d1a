"""serving/prepack.prepack_linears: bfloat16 linear layers on weights packed once for oneDNN give bit-identical outputs, with
and without per-row LoRA adapters; float32 models are left alone.

Run: .venv/bin/python -m pytest tests/test_prepack.py -q
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from serving.engine import GenerationRequest, SamplingParams
from serving.prepack import prepack_if_memory_allows, prepack_linears

PROMPTS = ["Hi", "What is 12 + 7?", "What is the capital of France?", "Reverse the word garden."]


def load(demo_model, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(demo_model), dtype=dtype).eval()


def test_packed_bfloat16_logits_equal_the_plain_layers(demo_model):
    plain, packed = load(demo_model, torch.bfloat16), load(demo_model, torch.bfloat16)
    linears = sum(type(m) is torch.nn.Linear for m in packed.modules())
    assert prepack_linears(packed) == linears > 0
    ids = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 10, 11, 12]])  # a left-padded row too
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    with torch.inference_mode():
        expected = plain(input_ids=ids, attention_mask=mask).logits
        got = packed(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(got, expected)


def test_float32_is_left_alone(demo_model):
    model = load(demo_model, torch.float32)
    assert prepack_linears(model) == 0
    assert all("forward" not in vars(m) for m in model.modules())


@pytest.mark.slow
def test_engine_on_packed_bfloat16_streams_the_same_tokens_as_on_plain_layers(demo_model, adapters_dir):
    """Mixed adapters (forward hooks on the packed layers) and the base, in one batch, greedy."""
    from transformers import AutoTokenizer

    from serving.loader import load_local_engine
    from serving.local import LocalEngine

    async def tokens(engine) -> list[list[int]]:
        await engine.start()
        try:
            await engine.load_adapter("a", adapters_dir / "a")
            await engine.load_adapter("c", adapters_dir / "c")

            async def one(prompt: str, adapter: str | None) -> list[int]:
                request = GenerationRequest(
                    messages=[{"role": "user", "content": prompt}],
                    adapter=adapter,
                    sampling=SamplingParams(max_tokens=12, temperature=0),
                )
                return [t async for delta in engine.generate(request) for t in delta.token_ids]

            plan = [(p, a) for p in PROMPTS for a in (None, "a", "c")]
            return await asyncio.gather(*(one(p, a) for p, a in plan))
        finally:
            await engine.close()

    packed = load_local_engine(demo_model, dtype="bfloat16")
    assert "forward" in vars(packed._model.base.model.layers[0].self_attn.q_proj), "the loader packs bfloat16"
    tokenizer = AutoTokenizer.from_pretrained(str(demo_model))
    plain = LocalEngine(load(demo_model, torch.bfloat16), tokenizer, model_name=packed.model_name)
    assert asyncio.run(tokens(packed)) == asyncio.run(tokens(plain))


def test_no_packing_where_the_copies_would_crowd_the_memory(demo_model, monkeypatch):
    """The packed copies take as much memory again as the linear weights: skipped beyond a quarter of what
    is available (a 7B model would need 14 GB more)."""
    from serving import prepack

    model = load(demo_model, torch.bfloat16)
    needed = prepack.packable_bytes(model)
    monkeypatch.setattr(prepack, "available_memory", lambda: 4 * needed - 4)
    assert prepack_if_memory_allows(model) == 0
    assert all("forward" not in vars(m) for m in model.modules())
    monkeypatch.setattr(prepack, "available_memory", lambda: 4 * needed)
    assert prepack_if_memory_allows(model) > 0
