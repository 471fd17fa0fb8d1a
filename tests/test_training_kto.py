"""KTO stage on thumbs (unpaired prompt/completion/label rows): thumbs-up answers are short, thumbs-down
ones ramble. Training moves the implied rewards the right way on held-out rows (good up, bad down, from 0
at the start) with a non-negative KL estimate, and the saved adapter makes good answers likelier and bad
ones less likely than the base model does.

Run: .venv/bin/python -m pytest tests/test_training_kto.py -q   (add -m "not slow" to skip the training run)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.rows import TAIL, write_jsonl
from training.demo.corpus import checkable_prompts
from training.kto import KTOConfig, main
from training.result import METADATA_FILE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def thumbs(n: int, seed: int, split: str) -> list[dict]:
    """One thumbs-up (short) and one thumbs-down (rambling) answer per prompt."""
    rows = []
    for prompt in checkable_prompts(n, seed=seed, split=split):
        short = f"The answer is {prompt.answer}."
        for completion, label in ((short, True), (short + TAIL, False)):
            rows.append(
                {
                    "prompt": prompt.messages,
                    "completion": [{"role": "assistant", "content": completion}],
                    "label": label,
                }
            )
    return rows


def kto_config(model: Path, data: Path, out: Path, **changes) -> KTOConfig:
    settings = {"per_device_batch_size": 8, "logging_steps": 4, "learning_rate": 5e-4, "warmup_ratio": 0.1}
    settings.update(changes)
    return KTOConfig(model=str(model), data=str(data), output_dir=str(out), **settings)


def completion_logp(model, tokenizer, row: dict) -> float:
    import torch

    prompt_ids = tokenizer.apply_chat_template(
        row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    ids = torch.tensor(
        [tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True, return_dict=False)]
    )
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0, :-1], dim=-1)
    targets = ids[0, 1:]
    return logps[torch.arange(len(targets)), targets][len(prompt_ids) - 1 :].sum().item()


@pytest.mark.slow
def test_kto_moves_rewards_the_right_way_on_heldout_thumbs(demo_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    heldout = thumbs(16, seed=3, split="heldout")
    train = write_jsonl(tmp_path / "kto.jsonl", thumbs(64, seed=1, split="train"))
    evaluation = write_jsonl(tmp_path / "kto-eval.jsonl", heldout)
    out = main(
        kto_config(demo_model, train, tmp_path / "kto", eval_data=str(evaluation), max_steps=24, eval_steps=8)
    )
    metadata = json.loads((out / METADATA_FILE).read_text())
    metrics = metadata["metrics"]
    assert metadata["stage"] == "kto" and metadata["dataset"]["kind"] == "kto"

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    base = AutoModelForCausalLM.from_pretrained(demo_model).eval()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model), out).eval()
    shifts = {True: [], False: []}
    for row in heldout:
        shifts[row["label"]].append(
            completion_logp(tuned, tokenizer, row) - completion_logp(base, tokenizer, row)
        )
    good, bad = (sum(shifts[label]) / len(shifts[label]) for label in (True, False))
    print(
        f"KTO: loss {metrics['first_loss']:.3f} -> {metrics['train_loss']:.3f}; held-out rewards chosen "
        f"{metrics['eval_rewards/chosen']:.2f}, rejected {metrics['eval_rewards/rejected']:.2f}, KL "
        f"{metrics['eval_kl']:.3f}; log-prob vs base: good {good:+.1f}, bad {bad:+.1f} nats; "
        f"{metrics['train_seconds']} s"
    )
    assert metrics["train_loss"] < metrics["first_loss"]
    # Implied rewards start at 0 (policy = reference): thumbs-up rise, thumbs-down fall.
    assert metrics["eval_rewards/chosen"] > 0 > metrics["eval_rewards/rejected"]
    assert metrics["eval_rewards/margins"] > 1.0
    # TRL's KL estimate (KTO's baseline) is clamped at 0 and often is 0 on this data: bound it instead, so a
    # run whose policy drifted far from the reference fails here
    assert 0 <= metrics["eval_kl"] < 1.0
    assert good > 0 > bad


def test_kto_needs_both_labels(demo_model, tmp_path):
    only_good = [row for row in thumbs(4, seed=1, split="train") if row["label"]]
    data = write_jsonl(tmp_path / "good.jsonl", only_good)
    with pytest.raises(ValueError, match="needs both thumbs-up and thumbs-down rows.*only label True"):
        main(kto_config(demo_model, data, tmp_path / "out", max_steps=2))
    assert not (tmp_path / "out").exists()


def test_kto_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="per_device_batch_size must be at least 2 for KTO .*got 1"):
        KTOConfig(model="m", data="d", output_dir="o", per_device_batch_size=1)
    with pytest.raises(ValueError, match="undesirable_weight must be positive, got 0"):
        KTOConfig(model="m", data="d", output_dir="o", undesirable_weight=0)
