"""Reward models checked before use (issue 13, item 5): a reward job records its pairwise accuracy on
held-out pairs (`heldout_accuracy`, `heldout_pairs`); PPO, RLOO and GRPO refuse one below 0.6 with the
figure, at submit time (the job queue, the auto-trigger) and in the stage itself, unless
``allow_weak_reward_model`` is set; the Adapters tab shows the figure.

Run: .venv/bin/python -m pytest tests/test_reward_check.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feedback.errors import Invalid
from feedback.store import Store
from hub.jobs_service import JobsService
from hub.ui.adapters import _metrics, reward_quality_text
from tests.support.rl import digit_first_pairs, prompts_file
from tests.support.rows import write_jsonl
from training.jobs.spec import JobError
from training.jobs.trigger import AutoTrigger, TriggerRule
from training.result import METADATA_FILE
from training.reward_check import MIN_HELDOUT_ACCURACY, check_reward_model, reward_model_quality

PROMPT_STAGES = ("ppo", "rloo", "grpo")


def reward_dir(path: Path, accuracy: float | None, pairs: int) -> Path:
    """A reward model directory as `training.reward` leaves it, as far as the check reads it."""
    path.mkdir(parents=True, exist_ok=True)
    metrics = {"heldout_accuracy": accuracy, "heldout_pairs": pairs, "eval_accuracy": accuracy}
    (path / METADATA_FILE).write_text(json.dumps({"stage": "reward", "metrics": metrics}))
    return path


def test_a_weak_reward_model_is_refused_with_its_figure_unless_allowed(tmp_path):
    weak = reward_dir(tmp_path / "weak", 0.55, 20)
    with pytest.raises(Invalid) as refused:
        check_reward_model(weak, allow_weak=False)
    message = refused.value.message
    assert refused.value.param == "reward_model"
    assert (
        "0.55 on 20 held-out pairs" in message and "0.6" in message and "allow_weak_reward_model" in message
    )
    assert check_reward_model(weak, allow_weak=True).accuracy == 0.55

    assert not check_reward_model(reward_dir(tmp_path / "good", 0.6, 20), allow_weak=False).weak
    # Just under the bar is not shown as the bar itself (8.95 of 15 pairs, a tie counting half)
    with pytest.raises(Invalid, match=r"accuracy 0\.597 on 15 held-out pairs \(at least 0\.6"):
        check_reward_model(reward_dir(tmp_path / "close", 8.95 / 15, 15), allow_weak=False)
    # Never measured (no held-out pairs, or not trained here): no figure to refuse it on.
    assert check_reward_model(reward_dir(tmp_path / "none", None, 0), allow_weak=False).accuracy is None
    (tmp_path / "foreign").mkdir()
    assert reward_model_quality(tmp_path / "foreign").accuracy is None


@pytest.fixture
def jobs(tmp_path, demo_model):
    with Store(tmp_path / "feedback.db") as store:
        yield JobsService(store, str(demo_model), tmp_path)


@pytest.mark.parametrize("stage", PROMPT_STAGES)
def test_submit_refuses_a_weak_reward_model_naming_it(jobs, tmp_path, stage):
    store = jobs.queue.store
    weak = reward_dir(tmp_path / "rm-weak", 0.5, 12)
    store.add_adapter("rm", base="b", method="lora", path=str(weak), metrics={"stage": "reward"})
    with pytest.raises(JobError) as refused:  # the newest registered one, taken for the job
        jobs.submit(stage=stage, method="lora", data="feedback", name="rl")
    assert (
        refused.value.param == "params.reward_model" and "0.50 on 12 held-out pairs" in refused.value.message
    )
    with pytest.raises(JobError, match="0.50 on 12"):  # one named in the job
        jobs.submit(
            stage=stage, method="lora", data="feedback", name="rl", params={"reward_model": str(weak)}
        )
    assert jobs.list() == []

    job = jobs.submit(
        stage=stage, method="lora", data="feedback", name="rl", params={"allow_weak_reward_model": True}
    )
    assert job.params["params"]["reward_model"] == str(weak)
    good = reward_dir(tmp_path / "rm-good", 0.8, 12)
    jobs.submit(stage=stage, method="lora", data="feedback", name="rl", params={"reward_model": str(good)})
    assert len(jobs.list()) == 2


@pytest.mark.parametrize("stage", PROMPT_STAGES)
def test_the_stage_refuses_a_weak_reward_model_before_loading_anything(demo_model, tmp_path, stage):
    """The job's error when the check could not run at submit time (a path given to `tunehub train`)."""
    import importlib

    module = importlib.import_module(f"training.{stage}")
    config_class = {"ppo": "PPOConfig", "rloo": "RLOOConfig", "grpo": "GRPOConfig"}[stage]
    weak = reward_dir(tmp_path / "rm", 0.4, 30)
    config = getattr(module, config_class)(
        model=str(demo_model),
        data=str(prompts_file(tmp_path / "prompts.jsonl", n=8)),
        output_dir=str(tmp_path / "out"),
        reward_model=str(weak),
    )
    with pytest.raises(Invalid, match="0.40 on 30 held-out pairs") as refused:
        module.main(config)
    assert refused.value.param == "reward_model" and not (tmp_path / "out").exists()


def test_the_auto_trigger_waits_while_the_reward_model_is_weak(tmp_path):
    with Store(tmp_path / "feedback.db") as store:
        store.add_adapter(
            "rm",
            base="b",
            method="lora",
            path=str(reward_dir(tmp_path / "rm", 0.5, 10)),
            metrics={"stage": "reward"},
        )
        store.add_generation(prompt=[{"role": "user", "content": "What is 1 + 1?"}], model="base", text="2")
        trigger = AutoTrigger(store, [TriggerRule(stage="ppo", min_new=1)], "/models/base", check_s=0)
        assert trigger.check() == [] and store.list_jobs() == []
        allowed = TriggerRule(stage="ppo", min_new=1, params={"allow_weak_reward_model": True})
        [job] = AutoTrigger(store, [allowed], "/models/base", check_s=0).check()
        assert job.stage == "ppo"


def test_the_adapters_tab_shows_a_reward_models_heldout_accuracy():
    weak = {"stage": "reward", "eval_loss": 0.7, "heldout_accuracy": 0.5, "heldout_pairs": 12}
    assert "held-out accuracy 0.50 on 12 pairs (below 0.6: too weak for PPO/RLOO/GRPO)" in _metrics(weak)
    good = dict(weak, heldout_accuracy=0.9)
    assert reward_quality_text(good) == "held-out accuracy 0.90 on 12 pairs"
    close = dict(weak, heldout_accuracy=8.95 / 15, heldout_pairs=15)
    assert reward_quality_text(close).startswith("held-out accuracy 0.597 on 15 pairs (below 0.6")
    assert reward_quality_text({"stage": "reward", "heldout_accuracy": None, "heldout_pairs": 0}).endswith(
        "not measured (no held-out pairs)"
    )
    assert reward_quality_text({"stage": "dpo", "eval_accuracy": 0.5}) == ""
    assert MIN_HELDOUT_ACCURACY == 0.6


@pytest.mark.slow
def test_a_reward_job_records_heldout_accuracy_on_a_default_split(demo_model, tmp_path):
    """No eval file and no eval_fraction given: the default split holds pairs out and measures on them."""
    from training.reward import RewardConfig, main

    data = write_jsonl(tmp_path / "pairs.jsonl", digit_first_pairs(80, seed=1, split="train"))
    config = RewardConfig(
        model=str(demo_model),
        data=str(data),
        output_dir=str(tmp_path / "rm"),
        max_steps=16,
        per_device_batch_size=8,
        learning_rate=1e-3,
    )
    out = main(config)
    metadata = json.loads((out / METADATA_FILE).read_text())
    metrics = metadata["metrics"]
    print(
        f"reward model: held-out accuracy {metrics['heldout_accuracy']} on {metrics['heldout_pairs']} pairs"
    )
    assert metrics["heldout_pairs"] == metadata["dataset"]["n_eval"] > 0
    assert metrics["heldout_accuracy"] == metrics["eval_accuracy"]
    quality = reward_model_quality(out)
    assert (quality.accuracy, quality.pairs) == (metrics["heldout_accuracy"], metrics["heldout_pairs"])
