"""More than one GPU: the command a job runs (one worker process, or `accelerate launch` with a shipped
DeepSpeed ZeRO-2/3, FSDP or DDP config), the configs as accelerate's own loader reads them, `gpus` and
`strategy` checked before anything is queued, and the command shown by /v1/jobs and the Train tab.

No GPU here: nothing is launched on several devices; the commands are checked by accelerate's own parsers.

Run: .venv/bin/python -m pytest tests/test_training_launch.py -q
"""

from __future__ import annotations

import sys

import pytest

from feedback.store import Store
from hub.jobs_service import JobsService
from training.jobs.launch import CONFIG_DIR, STRATEGIES, config_file, format_command, job_command
from training.jobs.spec import JobError, JobSpec, check_spec

EXPECTED = {  # strategy -> (accelerate's distributed type, ZeRO stage)
    "ddp": ("MULTI_GPU", None),
    "zero2": ("DEEPSPEED", 2),
    "zero3": ("DEEPSPEED", 3),
    "fsdp": ("FSDP", None),
}


def spec(**changes) -> JobSpec:
    values = {"stage": "sft", "method": "lora", "data": "feedback", "name": "km", "base": "/models/base"}
    return JobSpec(**{**values, **changes})


def test_one_gpu_runs_the_worker_in_one_process():
    assert job_command(spec(), "/data/jobs/job-1") == [
        sys.executable,
        "-m",
        "training.jobs.worker",
        "/data/jobs/job-1",
    ]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_several_gpus_run_under_accelerate_launch_with_the_strategys_config(strategy):
    from accelerate.commands.launch import launch_command_parser

    command = job_command(spec(gpus=4, strategy=strategy), "/data/jobs/job-1")
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[3:] == [
        "--config_file",
        str(CONFIG_DIR / STRATEGIES[strategy]),
        "--num_processes",
        "4",
        "-m",
        "training.jobs.worker",
        "/data/jobs/job-1",
    ]
    # accelerate's own parser reads it as a module launch of the worker with the job dir
    args = launch_command_parser().parse_args(command[3:])
    assert args.config_file == str(config_file(strategy)) and args.num_processes == 4
    assert args.module and args.training_script == "training.jobs.worker"
    assert args.training_script_args == ["/data/jobs/job-1"]
    assert format_command(command).endswith("--num_processes 4 -m training.jobs.worker /data/jobs/job-1")


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_the_shipped_configs_load_with_accelerates_loader(strategy):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(str(config_file(strategy)))
    distributed, zero_stage = EXPECTED[strategy]
    assert isinstance(config, ClusterConfig) and config.distributed_type.value == distributed
    assert config.num_machines == 1 and not config.use_cpu
    assert config.mixed_precision == "no"  # precision is the stage config's choice, per hardware
    if zero_stage is not None:
        assert config.deepspeed_config["zero_stage"] == zero_stage
    if strategy == "zero3":
        assert config.deepspeed_config["zero3_save_16bit_model"] is True  # the saved result is whole
    if strategy == "fsdp":
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


@pytest.mark.parametrize(
    ("changes", "param", "words"),
    [
        ({"gpus": 0}, "gpus", "gpus must be a whole number from 1 to 64, got 0"),
        ({"gpus": 2.5}, "gpus", "got 2.5"),
        ({"gpus": True}, "gpus", "got True"),
        (
            {"gpus": 2, "strategy": "zero4"},
            "strategy",
            "strategy 'zero4' is not one of ddp, zero2, zero3, fsdp",
        ),
        ({"strategy": "zero3"}, "strategy", "but gpus is 1"),
        ({"stage": "ppo", "gpus": 2}, "gpus", "stage 'ppo' runs in one process"),
        ({"method": "qlora", "gpus": 2, "strategy": "fsdp"}, "strategy", "'qlora' cannot be sharded"),
    ],
)
def test_bad_devices_are_refused_naming_the_field(changes, param, words):
    with pytest.raises(JobError) as bad:
        check_spec(spec(**changes))
    assert bad.value.param == param and words in bad.value.message


def test_good_devices_pass():
    assert check_spec(spec(gpus=8, strategy="zero3")).gpus == 8
    assert check_spec(spec(method="qlora", gpus=2, strategy="zero2")).strategy == "zero2"
    assert check_spec(spec(stage="grpo", gpus=2, strategy="fsdp")).gpus == 2


# ----- where the command is shown ------------------------------------------------------------------------


@pytest.fixture
def jobs(tmp_path, demo_model):
    with Store(tmp_path / "feedback.db") as store:
        yield JobsService(store, str(demo_model), tmp_path)


def test_the_api_body_carries_the_command_and_devices(jobs, tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from hub.api.jobs import build_jobs_router
    from hub.auth import Auth
    from hub.errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_jobs_router(jobs, Auth(None, "admin-pw", jobs.queue.store)))
    admin = {"Authorization": "Bearer admin-pw"}
    with TestClient(app) as client:
        body = {"stage": "sft", "name": "km", "gpus": 2, "strategy": "zero2"}
        created = client.post("/v1/jobs", json=body, headers=admin)
        assert created.status_code == 200, created.text
        job = created.json()
        assert (job["gpus"], job["strategy"]) == (2, "zero2")
        expected = format_command(job_command(spec(gpus=2, strategy="zero2"), tmp_path / "jobs" / job["id"]))
        assert job["command"] == expected and "deepspeed_zero2.yaml --num_processes 2" in expected
        assert client.get(f"/v1/jobs/{job['id']}", headers=admin).json()["command"] == expected
        assert job["trigger"] is None  # queued by hand
        one = client.post("/v1/jobs", json={"stage": "sft", "name": "solo"}, headers=admin).json()
        assert one["command"].endswith(f"-m training.jobs.worker {tmp_path / 'jobs' / one['id']}")
        bad = client.post("/v1/jobs", json={**body, "strategy": "zero9"}, headers=admin)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "strategy"
        assert client.post("/v1/jobs", json=body).status_code == 403  # admin only


def test_the_train_tab_shows_the_command_before_starting(jobs):
    import gradio as gr
    import torch

    from hub.auth import Auth
    from hub.ui import UiServices
    from hub.ui.train import train_tab

    services = UiServices(None, None, None, None, None, auth=Auth(None, None), jobs=jobs, adapters=None)
    with gr.Blocks() as blocks, gr.Tab("Train") as tab:
        train_tab(services, blocks, tab)
    shown = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "train-command")
    assert shown.value.endswith("-m training.jobs.worker " + str(jobs.jobs_dir / "JOB_ID"))
    gpus = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "train-gpus")
    update = next(
        f for f in blocks.fns.values() if shown in f.outputs and any(t[0] == gpus._id for t in f.targets)
    )
    # no gr.Request: the local user of a hub without an admin password, who is the admin
    assert "fsdp.yaml --num_processes 4" in update.fn(4, "fsdp", None)
    assert update.fn(1, "zero3", None).startswith("# strategy: ")  # the refusal, in place of a command
    # and the selected job's view shows the command it runs
    job = jobs.submit(stage="sft", method="lora", data="feedback", name="km", gpus=2, strategy="fsdp")
    status = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "train-job-status")
    refresh = next(f.fn for f in blocks.fns.values() if status in f.outputs and f.fn.__name__ == "refresh")
    shown_job = refresh(job.id, None)
    text = shown_job[2]
    assert f"`{jobs.command(job)}`" in text and "fsdp.yaml --num_processes 2" in text
    assert shown_job[-1].active is True  # a queued job is polled...
    jobs.cancel(job.id)
    assert refresh(job.id, None)[-1].active is False  # ...an ended one no longer (issue 14, polish)
    assert gpus.visible is (torch.cuda.device_count() > 1)  # no GPU fields without GPUs to spread over


def test_the_cli_offers_every_strategy():
    from hub.cli.main import build_parser

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    strategy = next(a for a in train._actions if a.dest == "strategy")
    assert tuple(strategy.choices) == tuple(STRATEGIES)
    args = parser.parse_args(
        ["train", "sft", "--data", "feedback", "--name", "x", "--gpus", "2", "--strategy", "fsdp"]
    )
    assert (args.gpus, args.strategy) == (2, "fsdp")
