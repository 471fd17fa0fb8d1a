"""Method presets and shared stage plumbing: configs, parsers, hardware defaults, the loss watch, and one
short SFT run per method (full, freeze, lora, dora, qlora, ia3) whose saved result loads and differs from
the base.

Run: .venv/bin/python -m pytest tests/test_training_methods.py -q   (add -m "not slow" to skip the runs)
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import TrainerCallback

from training.callbacks import LossWatch
from training.methods import (
    Hardware,
    MethodOptions,
    cpu_has_bf16,
    detect_hardware,
    precision_kwargs,
    resolve_method,
    resolve_precision,
)
from training.result import METADATA_FILE
from training.sft import SFTConfig, build_parser, parse_args

CPU = Hardware(cuda=False, bf16=False, name="cpu")
CPU_BF16 = Hardware(cuda=False, bf16=True, name="cpu")  # AVX512_BF16 or AMX
AMPERE = Hardware(cuda=True, bf16=True, name="NVIDIA A100")
TURING = Hardware(cuda=True, bf16=False, name="NVIDIA T4")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- presets -------------------------------------------------------------------------------------------


def test_lora_preset_defaults_to_all_linear_layers_and_alpha_twice_the_rank():
    plan = resolve_method(MethodOptions(method="lora", lora_rank=8), hardware=CPU)
    config = plan.peft_config
    assert (config.peft_type.value, config.r, config.lora_alpha) == ("LORA", 8, 16)
    assert config.target_modules == "all-linear" and not config.use_dora and not config.use_rslora
    assert plan.model_kwargs == {} and plan.freeze_layers is None and plan.trains_adapter


def test_lora_options_reach_the_peft_config():
    options = MethodOptions(
        method="lora",
        lora_rank=4,
        lora_alpha=4,
        lora_dropout=0.1,
        target_modules="q_proj, v_proj",
        use_rslora=True,
    )
    config = resolve_method(options, hardware=CPU).peft_config
    assert (config.r, config.lora_alpha, config.lora_dropout, config.use_rslora) == (4, 4, 0.1, True)
    assert set(config.target_modules) == {"q_proj", "v_proj"}


def test_dora_qlora_and_ia3_presets():
    dora = resolve_method(MethodOptions(method="dora"), hardware=CPU)
    assert dora.peft_config.use_dora and not dora.model_kwargs

    qlora = resolve_method(MethodOptions(method="qlora"), hardware=CPU)
    quantization = qlora.model_kwargs["quantization_config"]
    assert quantization.load_in_4bit and quantization.bnb_4bit_quant_type == "nf4"
    assert quantization.bnb_4bit_use_double_quant
    assert str(quantization.bnb_4bit_compute_dtype) == "torch.float32"  # no bf16 on this CPU
    assert not qlora.peft_config.use_dora
    on_gpu = resolve_method(MethodOptions(method="qlora"), hardware=AMPERE).model_kwargs[
        "quantization_config"
    ]
    assert str(on_gpu.bnb_4bit_compute_dtype) == "torch.bfloat16"
    on_bf16_cpu = resolve_method(MethodOptions(method="qlora"), hardware=CPU_BF16).model_kwargs
    assert str(on_bf16_cpu["quantization_config"].bnb_4bit_compute_dtype) == "torch.bfloat16"
    pinned = resolve_method(_config(method="qlora", precision="fp32"), hardware=CPU_BF16).model_kwargs
    assert str(pinned["quantization_config"].bnb_4bit_compute_dtype) == "torch.float32"  # follows the run

    ia3 = resolve_method(MethodOptions(method="ia3"), hardware=CPU)
    assert (
        ia3.peft_config.peft_type.value == "IA3" and ia3.peft_config.target_modules is None
    )  # PEFT's defaults


def test_full_and_freeze_presets_have_no_adapter():
    assert resolve_method(MethodOptions(method="full"), hardware=CPU).peft_config is None
    freeze = resolve_method(MethodOptions(method="freeze", freeze_layers=3), hardware=CPU)
    assert freeze.peft_config is None and freeze.freeze_layers == 3 and not freeze.trains_adapter


def test_reward_models_train_the_score_head_beside_the_adapter():
    config = resolve_method(MethodOptions(method="lora"), task="seq_cls", hardware=CPU).peft_config
    assert config.task_type.value == "SEQ_CLS" and config.modules_to_save == ["score"]


@pytest.mark.parametrize(
    ("options", "bad"),
    [
        ({"method": "lorra"}, "'lorra'"),
        ({"lora_rank": 0}, "0"),
        ({"lora_alpha": -2.0}, "-2.0"),
        ({"lora_dropout": 1.5}, "1.5"),
        ({"freeze_layers": 0}, "0"),
        ({"target_modules": "q_proj;rm -rf"}, "'q_proj;rm -rf'"),
        ({"method": "ia3", "target_modules": "all-linear"}, "'all-linear'"),
    ],
)
def test_method_validation_names_the_bad_value(options, bad):
    with pytest.raises(ValueError) as excinfo:
        MethodOptions(**options)
    assert bad in str(excinfo.value)


def test_precision_follows_the_hardware():
    cpu = precision_kwargs("auto", None, CPU)
    assert cpu == {"bf16": False, "fp16": False, "use_cpu": True, "gradient_checkpointing": False}
    assert precision_kwargs("auto", None, AMPERE) == {
        "bf16": True,
        "fp16": False,
        "use_cpu": False,
        "gradient_checkpointing": True,
    }
    assert precision_kwargs("auto", False, TURING)["fp16"] is True
    with pytest.raises(ValueError, match="'fp16'"):
        precision_kwargs("fp16", None, CPU)
    with pytest.raises(ValueError, match="'bf16'.*NVIDIA T4"):
        precision_kwargs("bf16", None, TURING)


def test_auto_precision_is_bf16_on_a_cpu_that_computes_it():
    """Issue 12: a CPU with AVX512_BF16/AMX trains in bf16 mixed precision (autocast), others in fp32; the
    run says which and why."""
    assert precision_kwargs("auto", None, CPU_BF16) == {
        "bf16": True,
        "fp16": False,
        "use_cpu": True,
        "gradient_checkpointing": False,
    }
    assert resolve_precision("auto", CPU_BF16) == ("bf16", "auto: the CPU has AVX512_BF16/AMX")
    assert resolve_precision("auto", CPU) == ("fp32", "auto: the CPU has no bfloat16 instructions")
    assert resolve_precision("float32", CPU_BF16) == ("fp32", "asked for")
    precision, reason = resolve_precision("bfloat16", CPU)  # allowed, but said to be slow
    assert precision == "bf16" and "slower" in reason
    assert _config(precision="bfloat16").precision == "bf16"  # the --dtype spelling
    assert detect_hardware().bf16 == cpu_has_bf16()


# --- configs and parsers -------------------------------------------------------------------------------


def _config(**changes) -> SFTConfig:
    return SFTConfig(model="m", data="d.jsonl", output_dir="out", **changes)


@pytest.mark.parametrize(
    ("changes", "bad"),
    [
        ({"learning_rate": -1.0}, "-1.0"),
        ({"max_steps": 0}, "0"),
        ({"per_device_batch_size": 0}, "0"),
        ({"eval_fraction": 1.5}, "1.5"),
        ({"warmup_ratio": 2.0}, "2.0"),
        ({"precision": "fp8"}, "'fp8'"),
        ({"lr_scheduler": "sawtooth"}, "'sawtooth'"),
        ({"early_stopping_patience": -1}, "-1"),
    ],
)
def test_stage_validation_names_the_bad_value(changes, bad):
    with pytest.raises(ValueError) as excinfo:
        _config(**changes)
    assert bad in str(excinfo.value)


def test_required_fields_are_named():
    with pytest.raises(ValueError, match="model is required"):
        SFTConfig(data="d.jsonl", output_dir="out")


def test_every_config_field_has_help_text():
    import dataclasses

    from training.dpo import DPOConfig
    from training.kto import KTOConfig
    from training.reward import RewardConfig

    for config_class in (SFTConfig, RewardConfig, DPOConfig, KTOConfig):
        for f in dataclasses.fields(config_class):
            assert f.metadata.get("help"), f"{config_class.__name__}.{f.name} has no help text"


def test_parse_args_builds_the_config():
    config = parse_args(
        ["--model", "m", "--data", "d.jsonl", "--output-dir", "o", "--method", "qlora", "--lora-rank", "4"]
        + ["--no-assistant-only-loss", "--packing", "--max-steps", "30", "--gradient-checkpointing"]
    )
    assert (config.method, config.lora_rank, config.max_steps) == ("qlora", 4, 30)
    assert config.assistant_only_loss is False and config.packing is True
    assert config.gradient_checkpointing is True and config.lora_alpha is None


def test_parser_rejects_bad_values_with_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--data", "d", "--output-dir", "o", "--method", "prefix"])
    assert "invalid choice: 'prefix'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--data", "d", "--output-dir", "o", "--learning-rate", "7"])
    assert "learning_rate must be in (0, 1), got 7.0" in capsys.readouterr().err
    assert "--lora-rank" in build_parser().format_help()


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo", "kto"])
def test_module_help_runs(stage):
    result = subprocess.run(
        [sys.executable, "-m", f"training.{stage}", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "--output-dir" in result.stdout and "--method" in result.stdout


# --- the loss watch ------------------------------------------------------------------------------------


def _watch_logs(watch: LossWatch, losses: list[float]) -> SimpleNamespace:
    control = SimpleNamespace(should_training_stop=False)
    for step, loss in enumerate(losses, start=1):
        watch.on_log(None, SimpleNamespace(global_step=step), control, logs={"loss": loss})
        if control.should_training_stop:
            break
    return control


def test_loss_watch_stops_on_nan_with_advice():
    watch = LossWatch(check_steps=0, learning_rate=0.5)
    control = _watch_logs(watch, [2.0, 1.5, float("nan"), 1.0])
    assert control.should_training_stop
    assert "nan at step 3" in watch.problem and "lower --learning-rate (now 0.5)" in watch.problem


def test_loss_watch_stops_on_a_flat_or_rising_loss():
    flat = LossWatch(check_steps=4, learning_rate=1e-7)
    assert _watch_logs(flat, [2.0, 2.01, 1.99, 2.0, 1.0]).should_training_stop
    assert "did not fall in 4 steps" in flat.problem and "raise --learning-rate (now 1e-07)" in flat.problem

    rising = LossWatch(check_steps=4, learning_rate=0.1)
    assert _watch_logs(rising, [2.0, 2.5, 3.0, 3.5]).should_training_stop
    assert "rose" in rising.problem and "lower --learning-rate" in rising.problem

    falling = LossWatch(check_steps=4, learning_rate=1e-3)
    assert not _watch_logs(falling, [2.0, 1.8, 1.6, 1.5, 1.4]).should_training_stop
    assert falling.problem is None


# --- one short run per method --------------------------------------------------------------------------


def _capital_rows(n: int, seed: int) -> list[dict]:
    from training.demo.corpus import (
        _task,  # the corpus's own maker: replies in the format pre-training taught
    )

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        task = _task(rng, "capital", heldout=False)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": task.question},
                    {"role": "assistant", "content": task.reply},
                ]
            }
        )
    return rows


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("methods") / "sft.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _capital_rows(96, seed=0)))
    return path


class FourBitProbe(TrainerCallback):
    """Counts the bitsandbytes 4-bit layers of the model the trainer is about to train."""

    count = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        import bitsandbytes as bnb

        self.count = sum(isinstance(module, bnb.nn.Linear4bit) for module in model.modules())


METHOD_RUNS = {
    "full": {"learning_rate": 1e-3},
    "freeze": {"learning_rate": 2e-3, "freeze_layers": 1},
    "lora": {"learning_rate": 3e-3, "lora_rank": 8},
    "dora": {"learning_rate": 3e-3, "lora_rank": 8},
    "qlora": {"learning_rate": 3e-3, "lora_rank": 8},
    "ia3": {"learning_rate": 3e-2},
}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHOD_RUNS))
def test_each_method_trains_saves_and_loads(method, demo_model, sft_file, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from training.sft import main

    probe = FourBitProbe()
    out = main(
        _config_for(demo_model, sft_file, tmp_path / method, method=method, **METHOD_RUNS[method]),
        callbacks=[probe],
    )
    metadata = json.loads((out / METADATA_FILE).read_text())
    metrics = metadata["metrics"]
    print(
        f"{method}: loss {metrics['first_loss']:.3f} -> {metrics['train_loss']:.3f}, {metrics['train_seconds']} s"
    )
    assert (metadata["stage"], metadata["method"], metadata["base"]) == ("sft", method, str(demo_model))
    assert metrics["steps"] == 16 and metrics["train_loss"] < metrics["first_loss"], metrics["loss_curve"]
    assert not list(tmp_path.glob(".*")), "temporary directories were left behind"

    base = AutoModelForCausalLM.from_pretrained(demo_model).eval()
    probe_ids = torch.tensor([[5, 17, 99, 300, 12, 7]])
    with torch.no_grad():
        base_logits = base(probe_ids).logits
    if method in ("full", "freeze"):
        assert not (out / "adapter_config.json").exists()
        trained = AutoModelForCausalLM.from_pretrained(out).eval()
        if method == "freeze":  # only the last layer, the final norm and the (tied) head moved
            last = f"model.layers.{base.config.num_hidden_layers - 1}."
            before, after = base.state_dict(), load_file(out / "model.safetensors")
            for name, value in after.items():
                moved = not torch.equal(value, before[name])
                assert moved == name.startswith((last, "model.norm.", "model.embed_tokens.")), name
    else:
        config = json.loads((out / "adapter_config.json").read_text())
        assert config["peft_type"] == ("IA3" if method == "ia3" else "LORA")
        assert config.get("use_dora", False) is (method == "dora")
        assert config["base_model_name_or_path"] == str(demo_model)
        # A plain PEFT load: what the serving engine and any user does with the directory.
        trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model), out).eval()
    with torch.no_grad():
        assert not torch.allclose(trained(probe_ids).logits, base_logits, atol=1e-4)
    if method == "qlora":
        # Every linear layer of every decoder layer (q, k, v, o, gate, up, down) is 4-bit; the head is not.
        assert probe.count == 7 * base.config.num_hidden_layers, "QLoRA trained without 4-bit layers"
    else:
        assert probe.count == 0


def _config_for(model: Path, data: Path, out: Path, **changes) -> SFTConfig:
    settings = {
        "max_steps": 16,
        "per_device_batch_size": 8,
        "logging_steps": 4,
        "eval_fraction": 0.0,
        "loss_check_steps": 0,
        "warmup_ratio": 0.1,
    }
    settings.update(changes)
    return SFTConfig(model=str(model), data=str(data), output_dir=str(out), **settings)
