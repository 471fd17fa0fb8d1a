"""The exact command a training job runs: one process on one device, or `accelerate launch` with a shipped
DeepSpeed ZeRO-2/3, FSDP or DDP config over N GPUs. The runner starts it; the Train tab and /v1/jobs show it.

    job_command(spec, "/data/jobs/job-1")
    # gpus 1:                  [python, "-m", "training.jobs.worker", "/data/jobs/job-1"]
    # gpus 4, strategy zero3:  [python, "-m", "accelerate.commands.launch", "--config_file",
    #                           ".../training/accelerate/deepspeed_zero3.yaml", "--num_processes", "4",
    #                           "-m", "training.jobs.worker", "/data/jobs/job-1"]

`python -m accelerate.commands.launch` is `accelerate launch` run by the hub's own interpreter, so the job
uses the same environment whatever is first on PATH.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "accelerate"
# strategy -> accelerate config file in training/accelerate/
STRATEGIES: dict[str, str] = {
    "ddp": "ddp.yaml",
    "zero2": "deepspeed_zero2.yaml",
    "zero3": "deepspeed_zero3.yaml",
    "fsdp": "fsdp.yaml",
}
DEFAULT_STRATEGY = "ddp"
MAX_GPUS = 64  # one machine; more than this is a typo
WORKER_MODULE = "training.jobs.worker"


def config_file(strategy: str) -> Path:
    """The shipped accelerate config for a strategy; `KeyError` for an unknown one."""
    return CONFIG_DIR / STRATEGIES[strategy]


def job_command(spec, job_dir: Path | str, *, python: str | None = None) -> list[str]:
    """The argv that runs the job in `job_dir` (a `JobSpec`, or anything with `gpus` and `strategy`)."""
    python = python or sys.executable
    gpus = int(getattr(spec, "gpus", 1) or 1)
    if gpus <= 1:
        return [python, "-m", WORKER_MODULE, str(job_dir)]
    strategy = getattr(spec, "strategy", None) or DEFAULT_STRATEGY
    return [
        python,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_file(strategy)),
        "--num_processes",
        str(gpus),
        "-m",
        WORKER_MODULE,
        str(job_dir),
    ]


def format_command(command: list[str]) -> str:
    """The command as a shell line (quoted where needed), as the UI and the API show it."""
    return shlex.join(command)
