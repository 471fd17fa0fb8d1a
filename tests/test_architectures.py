"""The LocalEngine on every common decoder architecture, and a clear refusal for those it cannot serve.

For llama, qwen2, qwen3, mistral, gemma2 (sliding and global layers), phi3 (fused projections), gpt_neox,
gpt2 (Conv1D layers, fan_in_fan_out adapters) and opt (fc1/fc2 see every position flattened), tiny random models built from configs
(tests/support/tiny_models.py) show that: continuous batching gives the same greedy tokens as `generate` on
each prompt alone; a batch mixing the base and three adapters gives each row what PEFT's PeftModel gives for
that adapter alone; a LoRA SFT job with the default targets trains and its adapter hot-loads and answers as
PEFT does. Encoder-decoders, recurrent models and a decoder that ignores per-row positions are refused at load,
naming the architecture; so is any batching bug the load check sees, and an adapter on Mixtral's fused experts
is refused with what to train instead.

Run: python -m pytest tests/test_architectures.py -q      (float32 throughout: equality with `generate`)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from pathlib import Path

import pytest
import torch

from serving.architecture import UnsupportedArchitecture, check_batching
from serving.engine import GenerationRequest, SamplingParams
from serving.loader import load_local_engine
from tests.support.adapters import make_lora_adapter
from tests.support.tiny_models import ARCHITECTURES, build_tiny_model

MAX_TOKENS = 12
PROMPTS = [
    "Hi",
    "Who are you?",
    "What is the capital of France?",
    "Tell me about Paris, please.",
    "Write a long poem about the sea, the sky, the mountains and the rivers of the world.",
]
# each architecture's attention input projections: an adapter on these alone differs from an all-linear one
ATTENTION = {
    "llama": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
    "phi3": ("qkv_proj",),
    "gpt_neox": ("query_key_value",),
    "gpt2": ("c_attn",),
    "opt": ("q_proj", "v_proj"),
}
architectures = pytest.mark.parametrize("architecture", list(ARCHITECTURES))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, demo_model):
    """`tiny_model(architecture)` -> its directory, built on first use (well under a second each)."""
    root = tmp_path_factory.mktemp("tiny-models")

    @functools.cache
    def build(architecture: str) -> Path:
        return build_tiny_model(architecture, root / architecture, demo_model)

    return build


def request(prompt: str, adapter: str | None = None) -> GenerationRequest:
    # ignore_eos: every row runs MAX_TOKENS steps, whatever a random model emits
    sampling = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
    return GenerationRequest(
        messages=[{"role": "user", "content": prompt}], adapter=adapter, sampling=sampling
    )


async def collect(
    engine, generation: GenerationRequest, first_delta: asyncio.Event | None = None
) -> list[int]:
    ids: list[int] = []
    async for delta in engine.generate(generation):
        ids += delta.token_ids
        if first_delta is not None:
            first_delta.set()
    return ids


@contextlib.asynccontextmanager
async def running_engine(model: Path, **options):
    engine = load_local_engine(model, dtype="float32", **options)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


def greedy_alone(model_dir: Path, prompt: str, adapter: Path | None = None) -> list[int]:
    """MAX_TOKENS greedy tokens from plain `generate` (PEFT's for an adapter) on `prompt` alone, float32,
    never stopping at EOS (as the engine's ignore_eos rows do not)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.inference_mode():
        out = model.generate(
            **inputs, do_sample=False, max_new_tokens=MAX_TOKENS, eos_token_id=None, pad_token_id=0
        )
    return out[0, inputs["input_ids"].shape[1] :].tolist()


# ----- continuous batching -----------------------------------------------------------------------------


@architectures
def test_continuous_batching_gives_the_greedy_tokens_of_generate_alone(architecture, tiny_model):
    """Prompts of different lengths arrive in three groups, each joining rows that are already decoding."""
    model = tiny_model(architecture)

    async def scenario():
        async with running_engine(model, on_step=lambda rows: time.sleep(0.002)) as engine:
            tasks, joined_mid_generation = [], []
            for group in (PROMPTS[0:2], PROMPTS[2:4], PROMPTS[4:5]):
                if tasks:
                    await asyncio.wait_for(asyncio.gather(*(event.wait() for _, event in tasks)), 30)
                    joined_mid_generation.append(sum(not task.done() for task, _ in tasks))
                for prompt in group:
                    event = asyncio.Event()
                    tasks.append((asyncio.create_task(collect(engine, request(prompt), event)), event))
            results = await asyncio.wait_for(asyncio.gather(*(task for task, _ in tasks)), 60)
            return results, joined_mid_generation

    results, joined_mid_generation = asyncio.run(scenario())
    assert all(joined_mid_generation), "later rows must join a batch that is still decoding"
    for prompt, ids in zip(PROMPTS, results, strict=True):
        expected = greedy_alone(model, prompt)
        assert len(set(expected)) > MAX_TOKENS // 2, "the tiny model must not repeat one token"
        assert ids == expected, prompt


# ----- mixed adapters ------------------------------------------------------------------------------------


@architectures
def test_a_batch_mixing_the_base_and_three_adapters_matches_peft_alone(architecture, tiny_model, tmp_path):
    model = tiny_model(architecture)
    adapters = {
        "all": make_lora_adapter(model, tmp_path / "all", rank=4, targets="all-linear", seed=1, scale=3.0),
        "attention": make_lora_adapter(
            model, tmp_path / "attention", rank=8, targets=ATTENTION[architecture], seed=2, scale=3.0
        ),
        "rs": make_lora_adapter(
            model,
            tmp_path / "rs",
            rank=2,
            targets="all-linear",
            seed=3,
            scale=3.0,
            use_rslora=True,
            lora_alpha=3,
        ),
    }
    rows = [(prompt, name) for prompt in PROMPTS[:3] for name in (None, *adapters)]

    async def scenario():
        async with running_engine(model) as engine:
            for name, path in adapters.items():
                await engine.load_adapter(name, path)
            return await asyncio.gather(*(collect(engine, request(prompt, name)) for prompt, name in rows))

    results = asyncio.run(scenario())
    for (prompt, name), ids in zip(rows, results, strict=True):
        assert ids == greedy_alone(model, prompt, adapters.get(name)), (prompt, name)
    first_prompt = results[: 1 + len(adapters)]
    assert len({tuple(ids) for ids in first_prompt}) == len(first_prompt), "every adapter changes the answer"


# ----- training ------------------------------------------------------------------------------------------


@architectures
def test_a_lora_sft_job_with_the_default_targets_trains_and_hot_loads(architecture, tiny_model, tmp_path):
    from safetensors.torch import load_file

    from training.result import METADATA_FILE
    from training.sft import SFTConfig, main

    model = tiny_model(architecture)
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {a} + {b}?"},
                {"role": "assistant", "content": f"{a} + {b} = {a + b}."},
            ]
        }
        for a in range(4)
        for b in range(4)
    ]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    adapter = main(
        SFTConfig(
            model=str(model),
            data=str(data),
            output_dir=str(tmp_path / "adapter"),
            method="lora",
            max_steps=3,
            per_device_batch_size=8,
            learning_rate=1e-3,
            eval_fraction=0.0,
            logging_steps=1,
        )
    )
    metrics = json.loads((adapter / METADATA_FILE).read_text())["metrics"]
    assert metrics["train_loss"] > 0
    lora_b = [
        t for name, t in load_file(str(adapter / "adapter_model.safetensors")).items() if "lora_B" in name
    ]
    assert lora_b and all(t.abs().max() > 0 for t in lora_b), "training moves every lora_B away from zero"

    async def scenario():
        async with running_engine(model) as engine:
            await engine.load_adapter("sft", adapter)
            return await collect(engine, request("What is 2 + 1?", "sft"))

    assert asyncio.run(scenario()) == greedy_alone(model, "What is 2 + 1?", adapter)


# ----- refusals ------------------------------------------------------------------------------------------


def save_model(
    tmp_path: Path, demo_model: Path, model_type: str, auto_class: str = "AutoModelForCausalLM", **sizes
) -> Path:
    """Save a random `model_type` model of config `sizes` with the demo model's tokenizer."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(demo_model))
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **sizes
    )
    torch.manual_seed(0)
    model = getattr(transformers, auto_class).from_config(config)
    out = tmp_path / model_type
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


UNSUPPORTED = {
    # encoder-decoder: refused from its config, before any weights load
    "t5": (
        dict(auto_class="AutoModelForSeq2SeqLM", d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16),
        "encoder-decoder",
    ),
    # state-space layers: transformers builds it a cache of recurrent-state layers
    "mamba": (dict(hidden_size=32, num_hidden_layers=1, state_size=4), "recurrent state"),
    # a recurrent model that ignores the key/value cache it is given: its steps would see one token each
    "rwkv": (
        dict(hidden_size=32, num_hidden_layers=2, attention_hidden_size=32, intermediate_size=64),
        "does not keep its state in the key/value cache",
    ),
    # BART's decoder alone: learned positions counted from the first column, so left padding shifts them
    "bart": (
        dict(d_model=32, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, encoder_layers=1),
        "differ from the same rows run alone",
    ),
}


@pytest.mark.parametrize("model_type", list(UNSUPPORTED))
def test_an_architecture_the_engine_cannot_batch_is_refused_at_load(model_type, demo_model, tmp_path):
    sizes, reason = UNSUPPORTED[model_type]
    model = save_model(tmp_path, demo_model, model_type, **sizes)
    with pytest.raises(UnsupportedArchitecture) as refusal:
        load_local_engine(model, dtype="float32")
    message = str(refusal.value)
    assert reason in message
    assert f"model_type {model_type!r}" in message
    assert "llama, qwen2, qwen3, mistral, gemma2, phi3, gpt_neox and gpt2" in message
    assert "--engine vllm" in message


def test_the_load_check_refuses_wrong_batching_whatever_its_cause(tiny_model, monkeypatch):
    """A decode step whose positions are one ahead of the prefill's (a kvbatch bug, not the model's) would
    serve wrong tokens; the check compares logits, so it refuses instead."""
    from transformers import AutoModelForCausalLM

    from serving import kvbatch

    step = kvbatch.step

    def step_one_position_ahead(forward, batch, tokens, adapter_names):
        def shifted(ids, mask, positions, cache, names):
            return forward(ids, mask, positions + 1, cache, names)

        return step(shifted, batch, tokens, adapter_names)

    monkeypatch.setattr(kvbatch, "step", step_one_position_ahead)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model("llama")), dtype=torch.float32).eval()
    with pytest.raises(UnsupportedArchitecture, match="differ from the same rows run alone"):
        check_batching(model, pad_id=0)


def test_an_adapter_on_fused_expert_weights_is_refused_with_what_to_train_instead(demo_model, tmp_path):
    """PEFT turns target_modules="all-linear" (the training default) on Mixtral's fused experts into
    target_parameters, which no forward hook can apply per row."""
    from serving.errors import InvalidAdapter

    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    model = save_model(tmp_path, demo_model, "mixtral", num_key_value_heads=1, num_local_experts=2, **sizes)
    adapter = make_lora_adapter(model, tmp_path / "moe", targets="all-linear")
    assert json.loads((adapter / "adapter_config.json").read_text())["target_parameters"]

    async def scenario():
        async with running_engine(model) as engine:
            with pytest.raises(
                InvalidAdapter, match="target_parameters=.*--target-modules naming linear layers"
            ):
                await engine.load_adapter("moe", adapter)
            return engine.adapters()

    assert asyncio.run(scenario()) == []


@architectures
def test_the_load_check_passes_every_supported_architecture_in_bfloat16(architecture, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = tiny_model(architecture)
    pad_id = AutoTokenizer.from_pretrained(str(model)).pad_token_id
    check_batching(AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.bfloat16).eval(), pad_id)
