"""The drift watch (training/callbacks.py `DriftWatch`): a run on a real model stops once the perplexity of
the regression replay's held-out text rises past its bound (the promotion guard's measure), and ends on
weights evaluated within it; a resumed run compares with the figure measured before its first step.

The KL bound is tested on DPO (tests/test_training_dpo.py); the demo model has no held-out text, so the
perplexity bound runs on SmolLM2 (slow).

Run: .venv/bin/python -m pytest tests/test_training_drift.py -q
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.support.rows import write_jsonl
from training.result import METADATA_FILE
from training.sft import SFTConfig, main

RISE = 0.05


@pytest.mark.slow
@pytest.mark.parametrize("keep_best_weights", [False, True], ids=["weights-it-stopped-with", "best-weights"])
def test_sft_on_a_real_model_stops_at_the_perplexity_bound_and_keeps_weights_within_it(
    smollm2_dir, tmp_path, keep_best_weights
):
    # Plain-text completions in a made-up language at a high learning rate: the held-out loss keeps falling
    # while the model's English (the held-out text) gets worse from the third step.
    rows = [
        {"prompt": f"Note {i}:", "completion": f" zorp {i} blee zorp zorp blee {i * 7} zorp zorp blee zorp."}
        for i in range(40)
    ]
    config = SFTConfig(
        model=str(smollm2_dir),
        data=str(write_jsonl(tmp_path / "train.jsonl", rows[:32])),
        eval_data=str(write_jsonl(tmp_path / "eval.jsonl", rows[32:])),
        output_dir=str(tmp_path / "out"),
        method="lora",
        learning_rate=3e-3,
        max_steps=10,
        eval_steps=1,
        per_device_batch_size=8,
        loss_check_steps=0,
        early_stopping_patience=100,  # only the bound stops it
        keep_best_weights=keep_best_weights,
        max_perplexity_rise=RISE,
    )
    metrics = json.loads((main(config) / METADATA_FILE).read_text())["metrics"]
    curve, start = metrics["perplexity_curve"], metrics["start_perplexity"]
    print(f"perplexity from {start}: {curve}; eval loss {metrics['eval_curve']}; kept {metrics['kept_step']}")
    assert 20 < start < 80  # SmolLM2 on the shipped held-out text (the replay measures 39.6)
    stop_step, stop_perplexity = curve[-1]
    assert stop_perplexity > start * (1 + RISE) and metrics["stopped_on_perplexity"] == stop_step
    assert metrics["stopped_early"] and metrics["steps"] == stop_step < 10
    assert all(value <= start * (1 + RISE) for _, value in curve[:-1])  # it stopped at the first one past
    eval_losses = dict(metrics["eval_curve"])
    assert eval_losses[stop_step] < eval_losses[curve[0][0]]  # the held-out loss alone would have gone on
    # it ends on the weights of the last evaluation within the bound: the best one, or the last one before
    within = curve[-2][0]
    assert metrics["kept_step"] == within
    assert metrics["eval_heldout_perplexity"] == pytest.approx(dict(curve)[within], rel=1e-3)
    assert metrics["max_perplexity_rise"] == RISE and metrics.get("stopped_on_kl") is None


def test_a_resumed_run_keeps_the_start_it_measured_and_the_weights_it_kept(tmp_path):
    """What the first part of a run left beside its checkpoints: its starting perplexity, and (keeping the
    weights it stops with) the last weights within the bounds, with their step."""
    import torch
    from safetensors.torch import save_file

    from training.callbacks import DriftWatch

    (tmp_path / DriftWatch.START_FILE).write_text(json.dumps({"perplexity": 39.6}))
    saved = tmp_path / DriftWatch.WITHIN_BOUND_FILE
    save_file({"w": torch.zeros(2)}, str(saved), metadata={"step": "12"})
    watch = DriftWatch(
        [], None, 0.0, "eval_loss", False, go_back=True, text="One.\n\nTwo.", max_perplexity_rise=0.1
    )
    args, resumed = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(global_step=20)
    watch.on_train_begin(args, resumed, None, model=object())  # a resumed run measures nothing again
    assert watch.start_perplexity == 39.6 and watch.within_bound == (12, str(saved))


def test_a_negative_perplexity_bound_is_refused_naming_the_value():
    with pytest.raises(ValueError, match=r"max_perplexity_rise must be 0 or more \(0.10 = 10%\), got -0.1"):
        SFTConfig(model="m", data="d", output_dir="o", max_perplexity_rise=-0.1)
