"""The jobs service behind /v1/jobs and the Train tab: presets (preference stages capped), the Train tab's
params (form fields the stage has, the advanced JSON on top), refusals naming the field before anything is
queued, the estimate for the served model, and a job's live view from its progress file and log.

Run: .venv/bin/python -m pytest tests/test_jobs_service.py -q
"""

from __future__ import annotations

import pytest

from feedback.store import Store
from hub.jobs_service import PRESETS, JobsService, NoBaseModel, preset_params
from hub.ui.train import build_params
from training.jobs.progress import write_event
from training.jobs.spec import JobError


@pytest.fixture
def jobs(tmp_path, demo_model):
    with Store(tmp_path / "feedback.db") as store:
        yield JobsService(store, str(demo_model), tmp_path)


def test_presets_keep_preference_stages_gentle():
    assert preset_params("quick", "sft") == PRESETS["quick"]
    for preset in PRESETS:
        dpo = preset_params(preset, "dpo")
        if preset == "auto":  # nothing filled in: the job sizes it (training/auto.py)
            assert set(dpo.values()) == {None}
            continue
        assert dpo["learning_rate"] <= 1e-4 and 0 < dpo["max_steps"] <= 300
    with pytest.raises(JobError, match="preset 'huge'"):
        preset_params("huge", "sft")


def test_the_form_and_the_advanced_json_make_the_params():
    params = build_params("dpo", "lora", 10, 1.0, 1e-4, 4, 8, 512, '{"beta": 0.2, "max_steps": 3}')
    assert params == {
        "max_steps": 3,
        "num_train_epochs": 1.0,
        "learning_rate": 1e-4,
        "per_device_batch_size": 4,
        "max_length": 512,
        "lora_rank": 8,
        "beta": 0.2,
    }
    assert "lora_rank" not in build_params("sft", "full", 10, 1.0, 1e-4, 4, 8, 512, "")
    with pytest.raises(JobError, match="not valid JSON") as bad:
        build_params("sft", "lora", 10, 1.0, 1e-4, 4, 8, 512, "{beta")
    assert bad.value.param == "params"


def test_submit_refuses_naming_the_field_and_queues_nothing(jobs, tmp_path):
    with pytest.raises(JobError) as bad:
        jobs.submit(stage="sft", method="lora", data="feedback", name="x", params={"beta": 1})
    assert bad.value.param == "params.beta"
    with pytest.raises(JobError) as bad:
        jobs.submit(stage="sft", method="lora", data=str(tmp_path / "none.jsonl"), name="x")
    assert bad.value.param == "data"
    assert jobs.list() == []
    with pytest.raises(NoBaseModel):
        JobsService(jobs.queue.store, None, tmp_path).submit(
            stage="sft", method="lora", data="feedback", name="x"
        )


@pytest.mark.parametrize("stage", ["ppo", "rloo", "grpo"])
def test_a_prompt_stage_takes_the_newest_reward_model_or_is_refused_naming_it(jobs, tmp_path, stage):
    """From the Train tab or the API, a prompt stage on the hub's prompts needs no reward-model path typed in."""
    with pytest.raises(JobError) as refused:
        jobs.submit(stage=stage, method="lora", data="feedback", name="rl")
    assert refused.value.param == "params.reward_model" and "stage 'reward'" in refused.value.message
    assert jobs.list() == []

    store = jobs.queue.store
    for name in ("rm-old", "rm-new"):
        (tmp_path / name).mkdir()
        store.add_adapter(
            name, base="b", method="lora", path=str(tmp_path / name), metrics={"stage": "reward"}
        )
    job = jobs.submit(stage=stage, method="lora", data="feedback", name="rl")
    assert job.params["params"]["reward_model"] == str(tmp_path / "rm-new")
    own = jobs.submit(stage=stage, method="lora", data="feedback", name="rl", params={"reward_model": "/rm"})
    assert own.params["params"]["reward_model"] == "/rm"  # one named in the job wins


def test_estimate_and_live_view(jobs):
    table = jobs.estimate_table("qlora", batch_size=4, seq_len=256, lora_rank=8)
    assert table.splitlines()[1].startswith("qlora") and "MiB" in table

    job = jobs.submit(stage="sft", method="lora", data="feedback", name="km", params={"max_steps": 4})
    job_dir = jobs.jobs_dir / job.id
    job_dir.mkdir(parents=True)
    write_event(job_dir / "progress.jsonl", "start", step=0, total=4)
    for step, loss in ((1, 2.0), (2, 1.5)):
        write_event(job_dir / "progress.jsonl", "log", step=step, loss=loss)
    write_event(job_dir / "progress.jsonl", "step", step=2, total=4, eta_s=3.0)
    (job_dir / "worker.log").write_text("line 1\nline 2\n")
    jobs.queue.store.update_job(job.id, status="running")
    view = jobs.live(job.id)
    assert (view.step, view.total, view.eta_s, view.loss) == (2, 4, 3.0, 1.5)
    assert view.loss_curve == [[1, 2.0], [2, 1.5]] and view.log.endswith("line 2")
