"""SFT stage on the quick demo model: it learns a task family, trains on assistant replies only, checks its
data before anything loads, stops on a flat loss or a rising eval loss, and starts from a parent adapter.

Run: .venv/bin/python -m pytest tests/test_training_sft.py -q   (add -m "not slow" to skip the training runs)
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from transformers import TrainerCallback

from feedback.errors import Invalid
from tests.support.rows import write_jsonl
from training.demo.corpus import SMALL_TALK, SYSTEM_PROMPTS, checkable_prompts, is_correct
from training.result import METADATA_FILE
from training.sft import SFTConfig, main
from training.stage_run import TrainingFailed

FAMILY = "conversion"  # the quick model answers none of these right; LoRA SFT teaches it in seconds
FILLER = " I hope this helps, and let me know if you have any other questions about anything at all!"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def family_rows(family: str, n: int, seed: int, *, suffix: str = "") -> list[dict]:
    """Training conversations of one family: some with a system prompt, some after a small-talk turn."""
    from training.demo.corpus import (
        _task,  # the corpus's own maker: replies in the format pre-training taught
    )

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        if rng.random() < 0.25:
            phrasings, reply = rng.choice(SMALL_TALK)
            messages += [
                {"role": "user", "content": rng.choice(phrasings)},
                {"role": "assistant", "content": reply},
            ]
        task = _task(rng, family, heldout=False)
        messages += [
            {"role": "user", "content": task.question},
            {"role": "assistant", "content": task.reply + suffix},
        ]
        rows.append({"messages": messages})
    return rows


def accuracy(model, tokenizer, family: str, n: int = 60) -> float:
    """Greedy accuracy on `n` held-out prompts of `family` (never in any training corpus)."""
    import torch

    prompts = [p for p in checkable_prompts(n * 4, seed=7) if p.family == family][:n]
    tokenizer.padding_side = "left"
    texts = tokenizer.apply_chat_template(
        [p.messages for p in prompts], add_generation_prompt=True, tokenize=False
    )
    inputs = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    replies = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return sum(is_correct(p, r) for p, r in zip(prompts, replies)) / len(prompts)


def sft_config(model: Path, data: Path, out: Path, **changes) -> SFTConfig:
    settings = {"per_device_batch_size": 16, "logging_steps": 10, "eval_fraction": 0.0, "warmup_ratio": 0.05}
    settings.update(changes)
    return SFTConfig(model=str(model), data=str(data), output_dir=str(out), **settings)


def leftovers(parent: Path) -> list[Path]:
    return sorted(parent.glob(".*"))


# --- learning ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sft_teaches_a_family_the_base_model_gets_wrong(demo_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_jsonl(tmp_path / "conversion.jsonl", family_rows(FAMILY, 400, seed=0))
    started = time.perf_counter()
    out = main(
        sft_config(
            demo_model,
            data,
            tmp_path / "adapter",
            method="lora",
            use_rslora=True,
            learning_rate=3e-3,
            max_steps=200,
            eval_fraction=0.05,
        )
    )
    seconds = time.perf_counter() - started
    metrics = json.loads((out / METADATA_FILE).read_text())["metrics"]

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    base = AutoModelForCausalLM.from_pretrained(demo_model).eval()
    base_accuracy = accuracy(base, tokenizer, FAMILY)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model), out).eval()
    tuned_accuracy = accuracy(tuned, tokenizer, FAMILY)
    print(
        f"SFT {FAMILY}: loss {metrics['first_loss']:.3f} -> {metrics['train_loss']:.3f}, eval loss "
        f"{metrics['eval_curve'][0][1]:.3f} -> {metrics['eval_loss']:.3f}, held-out accuracy "
        f"{base_accuracy:.2f} -> {tuned_accuracy:.2f}, {seconds:.0f} s"
    )
    assert metrics["train_loss"] < 0.8 * metrics["first_loss"]
    assert metrics["eval_loss"] < metrics["eval_curve"][0][1]
    assert base_accuracy <= 0.1
    assert tuned_accuracy >= base_accuracy + 0.25


class FirstBatch(TrainerCallback):
    """Keeps the first training batch the trainer will see."""

    batch: dict | None = None

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.batch = next(iter(train_dataloader))


@pytest.mark.slow
@pytest.mark.parametrize("packing", [False, True])
def test_loss_covers_only_the_assistant_replies(demo_model, tmp_path, packing):
    from transformers import AutoTokenizer

    rows = [
        {
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Hello!"},
                {"role": "assistant", "content": "Hello! How can I help you today?"},
                {"role": "user", "content": "Convert 3 km to m."},
                {"role": "assistant", "content": "3 km = 3000 m."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Reverse the word cat."},
                {"role": "assistant", "content": "tac"},
            ]
        },
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)  # one batch of both rows
    first = FirstBatch()
    main(
        sft_config(
            demo_model,
            data,
            tmp_path / "out",
            max_steps=1,
            per_device_batch_size=2,
            packing=packing,
            loss_check_steps=0,
        ),
        callbacks=[first],
    )
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    labels = first.batch["labels"]
    trained_text = "".join(tokenizer.decode([t for t in row if t != -100]) for row in labels)
    # Every reply with its end-of-turn token and the newline after it; no system or user text.
    for reply in ("Hello! How can I help you today?", "3 km = 3000 m.", "tac"):
        assert f"{reply}<|im_end|>\n" in trained_text
    for other in ("Answer briefly.", "Convert 3 km", "Reverse the word", "<|im_start|>"):
        assert other not in trained_text
    if packing:
        assert labels.shape[0] == 1  # padding-free: the rows travel as one packed sequence


def test_packing_without_flash_attention_packs_one_row_per_forward_pass(demo_model, tmp_path):
    """Padding-free packing flattens a batch into one row; without a varlen kernel its attention would span
    the whole batch, so the rows of a step are accumulated one by one instead (bench/training.py)."""
    from transformers import AutoModelForCausalLM

    from training.sft import packed_batches

    model = AutoModelForCausalLM.from_pretrained(demo_model)
    config = sft_config(demo_model, tmp_path / "d.jsonl", tmp_path / "out", per_device_batch_size=8)
    config.gradient_accumulation_steps = 2
    assert packed_batches(config, model) == {
        "per_device_train_batch_size": 1,
        "per_device_eval_batch_size": 1,
        "gradient_accumulation_steps": 16,  # the same rows per optimizer step
    }
    model.config._attn_implementation = "flash_attention_2"
    assert packed_batches(config, model) == {}


# --- checks before and during training -----------------------------------------------------------------


def test_a_corrupt_dataset_names_the_row_and_nothing_is_trained(demo_model, tmp_path, monkeypatch):
    import training.models

    rows = family_rows(FAMILY, 6, seed=1)
    rows[2] = {"messages": [{"role": "user", "content": "Convert 3 km to m."}]}  # row 3: no reply
    rows[4] = {"messages": [{"content": "no role"}, {"role": "assistant", "content": "hi"}]}  # row 5
    data = tmp_path / "corrupt.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    monkeypatch.setattr(training.models, "load_model", _must_not_load)

    with pytest.raises(Invalid) as excinfo:
        main(sft_config(demo_model, data, tmp_path / "out", max_steps=5))
    message = str(excinfo.value)
    assert "2 bad row(s)" in message
    assert 'row 3: field "messages" must end with a assistant message' in message
    assert 'row 5: field "messages[0]"' in message
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_an_output_dir_that_is_not_a_training_result_is_refused(demo_model, tmp_path, monkeypatch):
    import training.models

    data = write_jsonl(tmp_path / "ok.jsonl", family_rows(FAMILY, 4, seed=1))
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    monkeypatch.setattr(training.models, "load_model", _must_not_load)
    with pytest.raises(FileExistsError, match="not a tunehub training result"):
        main(sft_config(demo_model, data, precious, max_steps=5))
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]


def _must_not_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the inputs were checked")


@pytest.mark.slow
def test_a_flat_loss_stops_with_advice_and_saves_nothing(demo_model, tmp_path):
    # One conversation repeated: every batch is the same, so an unmoving model logs exactly the same loss.
    data = write_jsonl(tmp_path / "sft.jsonl", family_rows(FAMILY, 1, seed=2) * 64)
    with pytest.raises(TrainingFailed) as excinfo:
        main(
            sft_config(
                demo_model,
                data,
                tmp_path / "out",
                learning_rate=1e-9,
                max_steps=40,
                loss_check_steps=8,
                logging_steps=2,
                per_device_batch_size=8,
            )
        )
    assert "did not fall in 8 steps" in str(excinfo.value) and "raise --learning-rate" in str(excinfo.value)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def early_stopped_run(demo_model, tmp_path, **settings) -> dict:
    """Metrics of an SFT run whose eval loss rises: training teaches a long tail after every answer; the eval
    replies end at the answer, so the better the model learns the tail, the worse it predicts the end of turn
    there. Early stopping ends it (patience 2, an evaluation every 3 steps)."""
    train = write_jsonl(tmp_path / "train.jsonl", family_rows(FAMILY, 96, seed=3, suffix=FILLER))
    evaluation = write_jsonl(tmp_path / "eval.jsonl", family_rows(FAMILY, 16, seed=4))
    config = sft_config(
        demo_model,
        train,
        tmp_path / "out",
        eval_data=str(evaluation),
        learning_rate=3e-3,
        max_steps=60,
        eval_steps=3,
        early_stopping_patience=2,
        loss_check_steps=0,
        logging_steps=3,
        per_device_batch_size=8,
        **settings,
    )
    metrics = json.loads((main(config) / METADATA_FILE).read_text())["metrics"]
    print(f"eval loss by step: {metrics['eval_curve']}, stopped at step {metrics['steps']}")
    assert metrics["stopped_early"] and metrics["steps"] < 60
    return metrics


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint_steps", [0, 50], ids=["no-checkpoints", "resumable-checkpoints"])
def test_a_rising_eval_loss_stops_early_and_keeps_the_best_weights(demo_model, tmp_path, checkpoint_steps):
    # With resumable checkpoints every 50 steps (a job's default), the best evaluation falls between two of
    # them and must still be the one kept.
    metrics = early_stopped_run(demo_model, tmp_path, checkpoint_steps=checkpoint_steps)
    curve = metrics["eval_curve"]
    best_step, best_loss = min(curve, key=lambda point: point[1])
    assert curve[-1][1] > best_loss and metrics["best_step"] == best_step
    assert metrics["eval_loss"] == pytest.approx(best_loss, rel=1e-3)  # the saved weights are the best ones
    assert metrics["kept_step"] == best_step


@pytest.mark.slow
def test_a_run_that_keeps_the_weights_it_stopped_with_ends_on_them(demo_model, tmp_path):
    """keep_best_weights false (a job's default for SFT and DPO, training/auto.py): early stopping still ends
    the run, and the weights saved are those of its last step, not of the lowest held-out loss."""
    metrics = early_stopped_run(demo_model, tmp_path, checkpoint_steps=50, keep_best_weights=False)
    curve = metrics["eval_curve"]
    best_step, best_loss = min(curve, key=lambda point: point[1])
    assert metrics["best_step"] == best_step
    assert metrics["kept_step"] == metrics["steps"] == curve[-1][0] != best_step
    assert metrics["eval_loss"] == pytest.approx(curve[-1][1], rel=1e-3) and curve[-1][1] > best_loss


# --- parent adapters -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_starts_from_the_parent_adapter(demo_model, tmp_path):
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "sft.jsonl", family_rows(FAMILY, 64, seed=5))
    parent = main(
        sft_config(
            demo_model, data, tmp_path / "parent", max_steps=10, learning_rate=3e-3, loss_check_steps=0
        )
    )
    child = main(
        sft_config(
            demo_model,
            data,
            tmp_path / "child",
            max_steps=2,
            logging_steps=1,
            learning_rate=1e-9,
            loss_check_steps=0,
            parent_adapter=str(parent),
        )
    )
    parent_weights = load_file(parent / "adapter_model.safetensors")
    child_weights = load_file(child / "adapter_model.safetensors")
    assert parent_weights.keys() == child_weights.keys()
    lora_b = [name for name in parent_weights if "lora_B" in name]
    assert lora_b and any(parent_weights[name].abs().sum() > 0 for name in lora_b)  # not a fresh adapter
    for name, value in parent_weights.items():
        assert (child_weights[name] - value).abs().max() < 1e-5, name
    metadata = json.loads((child / METADATA_FILE).read_text())
    assert metadata["parent"] == str(parent) and metadata["method"] == "lora"
    # The child's first loss is the parent's last, not the base model's.
    parent_metrics = json.loads((parent / METADATA_FILE).read_text())["metrics"]
    assert metadata["metrics"]["first_loss"] < parent_metrics["first_loss"]


def test_a_parent_of_another_method_is_refused(demo_model, tmp_path):
    from tests.support.adapters import make_lora_adapter

    parent = make_lora_adapter(demo_model, tmp_path / "lora-parent", rank=4)
    data = write_jsonl(tmp_path / "sft.jsonl", family_rows(FAMILY, 8, seed=6))
    with pytest.raises(ValueError, match="is a lora adapter, but method is 'ia3'"):
        main(
            sft_config(
                demo_model, data, tmp_path / "out", method="ia3", parent_adapter=str(parent), max_steps=2
            )
        )
    assert not (tmp_path / "out").exists()
