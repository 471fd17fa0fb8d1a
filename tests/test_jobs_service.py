"""The jobs service behind /v1/jobs and the Train tab: presets (preference stages capped), the Train tab's
params (form fields the stage has, the advanced JSON on top), refusals naming the field before anything is
queued, the promotion guard's bounds given to every job the hub queues (the API's and the automatic
trigger's), the estimate for the served model, and a job's live view from its progress file and log.

Run: .venv/bin/python -m pytest tests/test_jobs_service.py -q
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from feedback.store import Store
from hub.jobs_service import PRESETS, JobsService, NoBaseModel, preset_params
from hub.ui.train import build_params
from tests.support.server import InProcessHub
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


def test_jobs_watch_the_guards_bounds_unless_they_name_their_own(tmp_path, demo_model):
    """A job stops where the hub's promotion guard would refuse its candidate: each bound the stage watches
    (DPO and KTO the KL and the perplexity, SFT the perplexity, a reward model neither) comes from the guard
    unless the job's params name it; the bounds are written into the job's params, so its record shows them."""
    bounds = {"max_kl": 1.5, "max_perplexity_rise": 0.05}
    with Store(tmp_path / "feedback.db") as store:
        jobs = JobsService(store, str(demo_model), tmp_path, guard_bounds=bounds)

        def params(stage: str, given: dict | None = None) -> dict:
            job = jobs.submit(stage=stage, method="lora", data="feedback", name="g", params=given)
            return job.params["params"]

        assert params("dpo") == bounds
        assert params("kto", {"max_kl": 0}) == {"max_kl": 0, "max_perplexity_rise": 0.05}  # 0: the user's off
        assert params("sft", {"max_steps": 3}) == {"max_perplexity_rise": 0.05, "max_steps": 3}
        assert params("reward") == {}
        assert (
            JobsService(store, str(demo_model), tmp_path)
            .submit(stage="dpo", method="lora", data="feedback", name="g")
            .params["params"]
            == {}
        )  # a hub given no bounds leaves the jobs' own defaults (the guard's defaults)


def test_a_hub_gives_its_guards_bounds_to_the_api_and_the_trigger_jobs(tmp_path, demo_model):
    """`tunehub serve --promotion-max-kl ... --promotion-max-perplexity-rise ...`: a job posted with no params
    and one the automatic trigger queues both watch the guard's bounds; a posted bound wins."""
    data_dir = tmp_path / "hub"
    data_dir.mkdir()
    with Store(data_dir / "feedback.db") as store:  # a vote already there: the trigger's first check fires
        prompt = [{"role": "user", "content": "Name a colour."}]
        a = store.add_generation(prompt=prompt, model="base", text="Blue.", conversation_id="c1")
        b = store.add_generation(prompt=prompt, model="base", text="A colour.", conversation_id="c1")
        store.add_pairwise(a.id, b.id, "a", rater="alice")
    (data_dir / "auto-train.json").write_text(json.dumps({"triggers": [{"stage": "dpo", "min_new": 1}]}))
    flags = ["--promotion-max-kl", "1.5", "--promotion-max-perplexity-rise", "0.05"]
    with InProcessHub(model=demo_model, data_dir=data_dir, extra_args=flags) as hub:
        try:
            posted = httpx.post(
                f"{hub.url}/v1/jobs",
                json={
                    "stage": "sft",
                    "data": "feedback",
                    "name": "posted",
                    "params": {"max_perplexity_rise": 0.2},
                },
                timeout=30,
            ).json()
            assert posted["params"] == {"max_perplexity_rise": 0.2}
            plain = httpx.post(
                f"{hub.url}/v1/jobs", json={"stage": "sft", "data": "feedback", "name": "plain"}, timeout=30
            ).json()
            assert plain["params"] == {"max_perplexity_rise": 0.05}
            deadline = time.monotonic() + 60
            while not (auto := [j for j in jobs_of(hub) if j["name"] == "auto-dpo"]):
                assert time.monotonic() < deadline, "the trigger queued no job"
                time.sleep(0.2)
            assert auto[0]["params"] == {"max_kl": 1.5, "max_perplexity_rise": 0.05}
        finally:
            for job in jobs_of(hub):
                if job["status"] in ("queued", "running"):
                    httpx.post(f"{hub.url}/v1/jobs/{job['id']}/cancel", timeout=30)


def jobs_of(hub) -> list[dict]:
    response = httpx.get(f"{hub.url}/v1/jobs", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["data"]


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
