"""Reward-model stage: it learns a clear preference (a short answer over the same answer with a rambling
tail) to high held-out pairwise accuracy, honours per-pair weights (TRL 1.16 does not: `WeightedRewardTrainer`
adds them), saves a head that reloads, and refuses bad margins or all-too-long pairs before training.

Run: .venv/bin/python -m pytest tests/test_training_reward.py -q   (add -m "not slow" to skip the training run)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feedback.errors import Invalid
from tests.support.rows import preference_pairs, write_jsonl
from training.result import METADATA_FILE
from training.reward import RewardConfig, main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reward_config(model: Path, data: Path, out: Path, **changes) -> RewardConfig:
    settings = {"per_device_batch_size": 8, "logging_steps": 5, "learning_rate": 1e-3, "warmup_ratio": 0.1}
    settings.update(changes)
    return RewardConfig(model=str(model), data=str(data), output_dir=str(out), **settings)


@pytest.fixture(scope="module")
def weighted_pairs(tmp_path_factory) -> tuple[Path, list[dict]]:
    """An export-style directory: every training pair twice, once as stated (weight 1) and once swapped
    (weight 0), so only a trainer that applies the weights sees a signal; unweighted, the two cancel out.
    The held-out pairs are on prompts never trained on."""
    root = tmp_path_factory.mktemp("reward-data")
    clear = preference_pairs(64, seed=1, split="train")
    swapped = [dict(row, chosen=row["rejected"], rejected=row["chosen"]) for row in clear]
    train = [dict(row, weight=1.0, margin=0.5) for row in clear] + [
        dict(row, weight=0.0, margin=0.5) for row in swapped
    ]
    heldout = preference_pairs(40, seed=3, split="heldout")
    write_jsonl(root / "train.jsonl", train)
    write_jsonl(root / "eval.jsonl", heldout)
    return root, heldout


def heldout_margins(demo_model: Path, adapter: Path, heldout: list[dict]) -> list[float]:
    """Reward of chosen minus rejected for each held-out pair, from the saved model loaded the plain way."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    base = AutoModelForSequenceClassification.from_pretrained(
        demo_model, num_labels=1, pad_token_id=tokenizer.pad_token_id
    )
    scorer = PeftModel.from_pretrained(base, adapter).eval()

    def score(messages: list[dict]) -> float:
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, return_tensors="pt")
        with torch.no_grad():
            return scorer(input_ids=ids).logits[0, 0].item()

    return [score(r["prompt"] + r["chosen"]) - score(r["prompt"] + r["rejected"]) for r in heldout]


@pytest.mark.slow
def test_reward_model_learns_a_clear_preference_from_weighted_pairs(demo_model, weighted_pairs, tmp_path):
    data_dir, heldout = weighted_pairs
    out = main(reward_config(demo_model, data_dir, tmp_path / "rm", max_steps=32, eval_steps=8))
    metadata = json.loads((out / METADATA_FILE).read_text())
    metrics = metadata["metrics"]
    assert metadata["task"] == "seq_cls" and metadata["dataset"]["n_eval"] == 40
    assert metadata["dataset"]["eval"].endswith("eval.jsonl")

    margins = heldout_margins(demo_model, out, heldout)
    accuracy = sum(m > 0 for m in margins) / len(margins)
    print(
        f"reward model: loss {metrics['first_loss']:.3f} -> {metrics['train_loss']:.3f}, held-out accuracy "
        f"{metrics['eval_accuracy']:.2f} (trainer) / {accuracy:.2f} (reloaded), mean margin "
        f"{sum(margins) / len(margins):.2f}, {metrics['train_seconds']} s"
    )
    assert metrics["train_loss"] < metrics["first_loss"]
    assert metrics["eval_accuracy"] >= 0.8 and accuracy >= 0.8
    assert sum(margins) / len(margins) > 3.0


@pytest.mark.slow
def test_without_the_weights_the_swapped_pairs_cancel_out(demo_model, weighted_pairs, tmp_path):
    data_dir, heldout = weighted_pairs
    out = main(
        reward_config(demo_model, data_dir, tmp_path / "rm", max_steps=32, eval_steps=8, use_weight=False)
    )
    margins = heldout_margins(demo_model, out, heldout)
    print(f"reward model without weights: mean held-out margin {sum(margins) / len(margins):.2f}")
    assert abs(sum(margins) / len(margins)) < 1.0


def test_a_bad_margin_names_the_row_and_field(demo_model, tmp_path):
    rows = preference_pairs(4, seed=1, split="train")
    rows = [dict(row, margin=1.0) for row in rows]
    rows[1]["margin"] = "high"
    del rows[3]["margin"]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(Invalid) as excinfo:
        main(reward_config(demo_model, data, tmp_path / "rm", max_steps=2))
    message = str(excinfo.value)
    assert "row 2: field \"margin\" must be a finite number, got 'high'" in message
    assert 'row 4: field "margin" is missing' in message
    assert not (tmp_path / "rm").exists()


def test_pairs_longer_than_max_length_are_refused_before_training(demo_model, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_pairs(4, seed=1, split="train"))
    with pytest.raises(Invalid, match="every training pair is longer than max_length 8 tokens"):
        main(reward_config(demo_model, data, tmp_path / "rm", max_steps=2, max_length=8))
    assert not (tmp_path / "rm").exists()


def test_sft_rows_are_not_preference_pairs(demo_model, tmp_path):
    data = write_jsonl(
        tmp_path / "sft.jsonl",
        [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}],
    )
    with pytest.raises(Invalid, match="holds sft rows .* not pairs"):
        main(reward_config(demo_model, data, tmp_path / "rm", max_steps=2))


@pytest.mark.slow
def test_a_reward_model_can_start_from_a_chat_adapter(demo_model, weighted_pairs, tmp_path):
    from safetensors.torch import load_file

    from tests.support.adapters import make_lora_adapter

    parent = make_lora_adapter(demo_model, tmp_path / "chat-adapter", rank=4, seed=1, scale=5.0)
    data_dir, _ = weighted_pairs
    out = main(
        reward_config(
            demo_model,
            data_dir,
            tmp_path / "rm",
            parent_adapter=str(parent),
            method="lora",
            learning_rate=1e-9,
            max_steps=2,
            early_stopping_patience=0,
            loss_check_steps=0,
        )
    )
    parent_weights = load_file(parent / "adapter_model.safetensors")
    weights = load_file(out / "adapter_model.safetensors")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]
    assert any("score" in name for name in weights)  # the new head travels with the adapter
    for name, value in parent_weights.items():  # the LoRA matrices started from the parent's
        assert (weights[name] - value).abs().max() < 1e-4, name
    assert json.loads((out / METADATA_FILE).read_text())["parent"] == str(parent)
