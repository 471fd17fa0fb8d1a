"""On a CUDA GPU (`gpu` marker; reported as skipped elsewhere): the embedded engine loads the demo model on the
GPU in the auto dtype and answers as it does in float32 on the CPU, two LoRA adapters in one batch give the
rows each gives alone, and a LoRA SFT step trains there.

Run: .venv/bin/python -m pytest tests/test_gpu.py -q -m gpu
"""

from __future__ import annotations

import asyncio
import json

import pytest

from serving.loader import load_local_engine
from tests.support.adapters import make_lora_adapter
from tests.test_local_engine import chat, collect
from tests.test_training_jobs import sft_rows

pytestmark = pytest.mark.gpu

PROMPTS = ["What is 3 + 4?", "Convert 2 km to m.", "What is the capital of France?", "Reverse the word cat."]


async def answers(model, device: str, dtype: str, adapters: dict | None = None, rows=None) -> list[str]:
    engine = load_local_engine(model, device=device, dtype=dtype)
    await engine.start()
    try:
        for name, path in (adapters or {}).items():
            await engine.load_adapter(name, path)
        requests = rows or [(prompt, None) for prompt in PROMPTS]
        done = await asyncio.gather(*(collect(engine, chat(p, adapter=a)) for p, a in requests))
        return [d.text for d in done]
    finally:
        await engine.close()


def test_the_engine_answers_on_the_gpu_as_on_the_cpu(demo_model):
    cpu = asyncio.run(answers(demo_model, "cpu", "float32"))
    gpu = asyncio.run(answers(demo_model, "cuda", "auto"))
    assert sum(a == b for a, b in zip(cpu, gpu, strict=True)) >= len(PROMPTS) - 1, (cpu, gpu)


def test_mixed_adapters_on_the_gpu_give_each_adapters_rows(demo_model, tmp_path):
    adapters = {
        name: make_lora_adapter(demo_model, tmp_path / name, rank=4, seed=seed, scale=0.3)
        for name, seed in (("a", 1), ("b", 2))
    }
    rows = [(p, name) for p in PROMPTS for name in ("a", "b")]
    mixed = asyncio.run(answers(demo_model, "cuda", "float32", adapters, rows))
    alone = [asyncio.run(answers(demo_model, "cuda", "float32", adapters, [row]))[0] for row in rows]
    assert mixed == alone


def test_a_lora_sft_step_trains_on_the_gpu(demo_model, tmp_path):
    from training.sft import SFTConfig, main

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in sft_rows(16)))
    out = main(
        SFTConfig(
            model=str(demo_model), data=str(data), output_dir=str(tmp_path / "out"), method="lora",
            max_steps=2, eval_fraction=0, loss_check_steps=0, checkpoint_steps=0,
        )
    )  # fmt: skip
    metrics = json.loads((out / "tunehub_training.json").read_text())["metrics"]
    assert metrics["steps"] == 2 and metrics["precision"] in ("bf16", "fp16", "fp32")
