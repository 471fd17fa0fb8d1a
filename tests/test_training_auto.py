"""Settings a job chooses for what its params leave out (training/auto.py, issue 13): sized to the rows and
the base model's width, never overriding what the user set, recorded with the reason in the job's metrics
and shown in its summary; the Train tab's default preset leaves every such field to the job.

Run: .venv/bin/python -m pytest tests/test_training_auto.py -q
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from feedback.store import Store
from hub.ui.train import build_params, default_params, training_outcome
from tests.support.cli import tunehub_process
from tests.test_training_jobs import sft_rows
from training.auto import (
    LR_WIDTH,
    MAX_STEPS,
    MIN_STEPS,
    auto_settings,
    describe,
    differing_tokens,
    model_width,
    pair_differing_tokens,
)


def chosen(stage="dpo", method="lora", n_train=120, width=128, given=(), batch=8, differing=6.0):
    return auto_settings(
        stage,
        method,
        n_train=n_train,
        n_eval=12,
        hidden_size=width,
        batch_size=batch,
        differing_tokens=differing,
        given=given,
    )


def test_sft_and_dpo_keep_the_weights_they_stopped_with():
    for stage in ("sft", "dpo"):
        assert chosen(stage)["keep_best_weights"].value is False
        assert "12 held-out rows" in chosen(stage)["keep_best_weights"].reason
    assert "keep_best_weights" not in chosen("reward")  # a reward model keeps its best held-out accuracy
    assert "keep_best_weights" not in chosen("sft", given={"keep_best_weights"})
    no_eval = auto_settings("sft", "lora", n_train=40, n_eval=0, hidden_size=128, batch_size=8)
    assert "keep_best_weights" not in no_eval  # nothing is evaluated: the run ends on its last step anyway


def test_the_learning_rate_follows_the_models_width_and_the_stage():
    demo, smol, wide = (chosen(width=w)["learning_rate"].value for w in (128, 576, 4096))
    assert demo == pytest.approx(5e-4, rel=0.01) and smol == pytest.approx(
        LR_WIDTH / math.sqrt(576), rel=0.01
    )
    assert demo > smol > wide
    assert chosen("sft")["learning_rate"].value == pytest.approx(2 * demo, rel=0.01)
    assert chosen("reward")["learning_rate"].value == pytest.approx(demo, rel=0.01)
    assert chosen("ppo")["learning_rate"].value == pytest.approx(0.4 * demo, rel=0.01)
    assert chosen(method="full")["learning_rate"].value == pytest.approx(demo / 10, rel=0.01)
    assert "width 128" in chosen()["learning_rate"].reason
    assert "unknown" in chosen(width=None)["learning_rate"].reason  # a config it cannot read: said so


def test_steps_follow_the_rows_within_bounds():
    assert chosen("sft", n_train=200)["max_steps"].value == 100  # 4 passes over 200 rows at batch 8
    assert chosen(n_train=200)["max_steps"].value == 200  # DPO: 8 passes
    assert chosen(n_train=10)["max_steps"].value == MIN_STEPS  # a few votes still get a real update
    assert chosen(n_train=100_000)["max_steps"].value == MAX_STEPS
    assert "4 passes over 200 rows" in chosen("sft", n_train=200)["max_steps"].reason
    assert "8 passes over 200 rows" in chosen(n_train=200)["max_steps"].reason
    assert chosen("ppo", n_train=320)["max_steps"].value == 20  # one pass in rollout batches of 16
    assert chosen("dpo")["sft_weight"].value == 0.5 and "sft_weight" not in chosen("sft")


def test_dpos_beta_follows_the_tokens_where_a_pairs_answers_differ():
    demo, smol = chosen(differing=6.0)["beta"], chosen(differing=80.0)["beta"]
    assert demo.value == 2.0 and smol.value == 0.15  # one word apart / two whole answers apart
    assert "80.0 tokens where a pair's answers differ" in smol.reason
    assert chosen(differing=1.0)["beta"].value == 2.0 and chosen(differing=5000.0)["beta"].value == 0.1
    assert "beta" not in chosen(differing=None)  # no tokenizer: the config's beta stays
    assert "beta" not in chosen(given={"loss_type"})  # IPO's beta means something else: the config's stays
    assert "beta" not in chosen(given={"beta"})
    assert all("beta" not in chosen(stage) for stage in ("kto", "reward", "sft", "ppo"))


def test_differing_tokens_count_after_the_answers_shared_beginning(demo_model):
    words = str.split
    rows = [
        {"chosen": "Paris.", "rejected": "Paris. Happy to help!"},  # 0 and 3 after the shared word
        {
            "chosen": [{"role": "assistant", "content": "a b c d"}],
            "rejected": [{"role": "assistant", "content": "x"}],
        },
    ]
    assert differing_tokens(rows, words) == ((0 + 3) / 2 + (4 + 1) / 2) / 2
    assert differing_tokens([{"chosen": "same", "rejected": "same"}], words) == 1.0  # never below 1
    assert differing_tokens([], words) is None
    assert pair_differing_tokens(rows, str(demo_model)) > 1.0  # the base's own tokenizer
    assert pair_differing_tokens(rows, "/no/such/model") is None


def test_what_the_user_set_is_never_chosen():
    picked = chosen(given={"learning_rate", "sft_weight", "beta", "keep_best_weights"})
    assert set(picked) == {"max_steps"}
    assert "max_steps" not in chosen(given={"num_train_epochs"})  # sized in epochs by the user
    assert describe(picked).startswith("max_steps 120 (8 passes over 120 rows")


def test_the_chosen_settings_reach_the_stages_config(tmp_path):
    from training.jobs.spec import JobSpec
    from training.jobs.worker import build_config

    spec = JobSpec.from_dict(
        {"stage": "dpo", "method": "lora", "data": "feedback", "name": "km", "base": "demo"}
    )
    launch = {"params": {"max_length": 512}}
    config = build_config(spec, launch, str(tmp_path), tmp_path / "out", chosen())
    assert (config.beta, config.max_steps, config.sft_weight) == (2.0, 120, 0.5)  # pairs ~6 tokens apart
    given = {"params": {"beta": 0.3}}  # what the user set wins over what was chosen
    assert build_config(spec, given, str(tmp_path), tmp_path / "out", chosen()).beta == 0.3


def test_the_width_is_read_from_the_base_models_config(demo_model, tmp_path):
    assert model_width(str(demo_model)) == 128
    assert model_width(str(tmp_path)) is None  # no config: unknown, not a crash


def test_the_train_tabs_default_preset_leaves_the_settings_to_the_job():
    for stage in ("sft", "dpo", "reward", "ppo"):
        params = default_params(stage)
        assert not {"learning_rate", "max_steps", "num_train_epochs", "per_device_batch_size"} & set(params)
    # the form's numbers cannot be empty in the browser (Gradio shows 0): 0 leaves the field to the job too
    assert build_params("dpo", "lora", 0, 0, 0, 0, 0, 512, "{}") == {"max_length": 512}


def test_the_summary_says_what_was_chosen_and_the_heldout_accuracy():
    metrics = {
        "steps": 40,
        "max_steps": 40,
        "best_step": 40,
        "chosen_settings": {"learning_rate": {"value": 0.0005, "reason": "0.00566/sqrt(width 128)"}},
        "eval_rewards/accuracies": 0.8125,
    }
    text = training_outcome(metrics)
    assert "learning_rate **0.0005** (0.00566/sqrt(width 128))" in text
    assert "Held-out preference accuracy of the result: **0.81**" in text
    stopped = {
        "steps": 15,
        "max_steps": 30,
        "best_step": 6,
        "stopped_early": True,
        "eval_metric": "eval_loss",
    }
    assert (
        "Stopped early at step 15 of 30: eval_loss stopped improving on the held-out rows; kept the weights it "
        "stopped with." in training_outcome({**stopped, "kept_step": 15})
    )
    assert "kept the weights of step 6, the best on eval_loss" in training_outcome(
        {**stopped, "kept_step": 6}
    )
    assert "kept the weights of step 6" in training_outcome(stopped)  # a job from before kept_step
    on_kl = {**stopped, "stopped_on_kl": 15, "max_kl": 2.0, "kept_step": 12}
    assert "went back to step 12, the last evaluation within the bound" in training_outcome(on_kl)
    on_perplexity = {
        **stopped,
        "stopped_on_perplexity": 15,
        "max_perplexity_rise": 0.1,
        "start_perplexity": 39.61,
        "kept_step": 12,
    }
    assert (
        "Stopped early at step 15 of 30: the held-out text's perplexity rose more than 10% over the start "
        "(39.6) at step 15; went back to step 12, the last evaluation within the bound."
    ) in training_outcome(on_perplexity)


@pytest.mark.slow
def test_a_job_with_no_settings_sizes_them_and_records_why(demo_model, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in sft_rows(48)))
    data_dir = tmp_path / "data"
    done = tunehub_process(
        "train", "sft", "--data", str(data), "--name", "auto-km", "--base", str(demo_model),
        "--data-dir", str(data_dir), "--set", "loss_check_steps=0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Store(data_dir / "feedback.db") as store:
        job = store.get_job(store.get_adapter("auto-km").job_id)
    settings = job.metrics["chosen_settings"]
    assert settings["learning_rate"]["value"] == pytest.approx(1e-3, rel=0.01)  # sft on a 128-wide model
    assert settings["max_steps"]["value"] == job.metrics["max_steps"] >= MIN_STEPS
    assert "4 passes over" in settings["max_steps"]["reason"]
    assert "settings chosen for what the job left out: learning_rate" in Path(job.log_path).read_text()
