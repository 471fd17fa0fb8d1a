"""Training jobs as the API routes and the Train tab both use them: submit (checked by the same `check_spec`),
list, show, cancel, a job's live view (loss curve from its progress file, the end of its log) and the
memory estimate for the served model before a run; and the hub's job runner (`start_runner`), which runs
them, hot-loads each chat result and queues jobs for the automatic trigger.

    jobs = JobsService(store, base_model="/data/demo-model", data_dir=Path("tunehub-data"))
    job = jobs.submit(stage="sft", method="lora", data="feedback", name="km", params=preset_params("quick", "sft"))
    jobs.live(job.id).loss_curve          # [[step, loss], ...]
    print(jobs.estimate_table("lora", batch_size=4, seq_len=512))
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedback.records import Adapter, Job
from training.jobs.faults import log_tail
from training.jobs.launch import DEFAULT_STRATEGY, format_command, job_command
from training.jobs.progress import PROGRESS_FILE, read_progress
from training.jobs.publish import served_name
from training.jobs.queue import JobQueue, job_spec
from training.jobs.runner import JobRunner, Replay
from training.jobs.spec import STAGES, JobError, JobSpec, check_devices, config_class, with_guard_bounds
from training.jobs.trigger import SETTINGS_FILE, AutoTrigger, TriggerError, load_rules
from training.methods import LORA_METHODS

from .chat_service import ChatService
from .gpu_share import job_leases

# Hyperparameter presets: optimizer steps (-1: whole epochs instead), epochs, peak lr, rows per batch, LoRA
# rank. "quick" is a smoke run of a few steps; "thorough" takes a few passes at a gentler rate.
# "auto" leaves every field out: the job sizes them to its data and base model (training/auto.py).
PRESETS: dict[str, dict[str, Any]] = {
    "auto": {
        "max_steps": None,
        "num_train_epochs": None,
        "learning_rate": None,
        "per_device_batch_size": None,
        "lora_rank": None,
    },
    "quick": {
        "max_steps": 10,
        "num_train_epochs": 1.0,
        "learning_rate": 1e-3,
        "per_device_batch_size": 4,
        "lora_rank": 8,
    },
    "default": {
        "max_steps": -1,
        "num_train_epochs": 1.0,
        "learning_rate": 2e-4,
        "per_device_batch_size": 8,
        "lora_rank": 16,
    },
    "thorough": {
        "max_steps": -1,
        "num_train_epochs": 3.0,
        "learning_rate": 1e-4,
        "per_device_batch_size": 8,
        "lora_rank": 32,
    },
}
DEFAULT_PRESET = "auto"
# Preference stages over-optimise fast on small data (DESIGN.md, Training): keep their lr at most 1e-4 and
# their steps at most 300, whatever fixed preset.
PREFERENCE_STAGES = ("dpo", "kto")
PREFERENCE_MAX_LR = 1e-4
PREFERENCE_MAX_STEPS = 300


def preset_params(preset: str, stage: str) -> dict[str, Any]:
    """The preset's settings for a stage (preference stages capped as above); raises `JobError` on `preset`."""
    if preset not in PRESETS:
        raise JobError(f"preset {preset!r} is not one of {', '.join(PRESETS)}", "preset")
    params = dict(PRESETS[preset])
    if stage in PREFERENCE_STAGES and params["learning_rate"] is not None:
        params["learning_rate"] = min(params["learning_rate"], PREFERENCE_MAX_LR)
        if params["max_steps"] < 0 or params["max_steps"] > PREFERENCE_MAX_STEPS:
            params["max_steps"] = PREFERENCE_MAX_STEPS
    return params


def job_params(
    stage: str,
    method: str,
    *,
    max_steps: float | None = None,
    epochs: float | None = None,
    learning_rate: float | None = None,
    batch_size: float | None = None,
    max_length: float | None = None,
    lora_rank: float | None = None,
    precision: str | None = None,
    exclude_reasons: str | Sequence[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A job's params from what `tunehub train`'s flags and the Train tab's form ask for: each field given
    (None: left to the job, training/auto.py) that the stage has, the LoRA rank for LoRA methods, the
    precision, the reasons whose votes are left out (comma-separated or a list), then `extra` on top (the
    tab's advanced JSON, the CLI's ``--set``). Raises `JobError` for an unknown stage."""
    if stage not in STAGES:
        raise JobError(f"stage {stage!r} is not one of {', '.join(STAGES)}", "stage")
    known = {f.name for f in dataclasses.fields(config_class(stage))}
    params: dict[str, Any] = {}
    for key, value, kind in (
        ("max_steps", max_steps, int),
        ("num_train_epochs", epochs, float),
        ("learning_rate", learning_rate, float),
        ("per_device_batch_size", batch_size, int),
        ("max_length", max_length, int),
    ):
        if value is not None and key in known:
            params[key] = kind(value)
    if lora_rank is not None and method in LORA_METHODS and "lora_rank" in known:
        params["lora_rank"] = int(lora_rank)
    if precision is not None:
        params["precision"] = precision
    if exclude_reasons:
        reasons = exclude_reasons if isinstance(exclude_reasons, str) else ",".join(exclude_reasons)
        params["exclude_reasons"] = reasons  # the stage config takes the torch names too
    params.update(extra or {})
    return params


class NoBaseModel(Exception):
    """The engine serves no local base model directory, so there is nothing to train from."""


@dataclass
class JobView:
    """A job as the UI shows it while it runs and after: the record, its curve and the end of its log."""

    job: Job
    step: int = 0
    total: int | None = None
    eta_s: float | None = None
    loss: float | None = None
    loss_curve: list[list[float]] = field(default_factory=list)
    log: str = ""


class JobsService:
    def __init__(
        self,
        store,
        base_model: str | None,
        data_dir: Path,
        chat_template: str | None = None,
        *,
        other_bases: dict[str, str] | None = None,
        guard_bounds: Mapping[str, float] | None = None,
    ) -> None:
        self.queue = JobQueue(store)
        self.base_model = base_model  # the primary base's path: what a job trains unless it names another
        # served name -> path of the further base models a hub serves (`--model A --model B`)
        self.other_bases = dict(other_bases or {})
        # the template the hub serves with when started with --chat-template: jobs train with the same one
        self.chat_template = chat_template
        self.jobs_dir = Path(data_dir) / "jobs"
        # the promotion guard's bounds the hub was given (--promotion-max-kl, --promotion-max-perplexity-rise):
        # each job watches them unless its params name its own
        self.guard_bounds = dict(guard_bounds or {})

    def submit(
        self,
        *,
        stage: str,
        method: str,
        data: str,
        name: str,
        parent: str | None = None,
        params: dict[str, Any] | None = None,
        only_new: bool = False,
        gpus: int = 1,
        strategy: str = DEFAULT_STRATEGY,
        base: str | None = None,
    ) -> Job:
        """Queue a job for the hub's runner, on the primary base or the served base `base` names; raises
        `JobError` naming the bad field, `NoBaseModel`."""
        if base is not None and base not in self.other_bases:
            served = ", ".join(self.other_bases) or "none"
            raise JobError(
                f"base {base!r} is not one of the further base models this hub serves ({served}); leave it "
                "out to train the first",
                "base",
            )
        path = self.other_bases[base] if base is not None else self.base_model
        if not path:
            raise NoBaseModel("this engine has no local base model path to train from")
        spec = JobSpec(
            stage=stage,
            method=method,
            data=data,
            name=name,
            base=path,
            parent=parent or None,
            params=with_guard_bounds(stage, params if params is not None else {}, self.guard_bounds),
            only_new=only_new,
            gpus=gpus,
            strategy=strategy,
            chat_template=self.chat_template,
        )
        return self.queue.submit(spec)

    def command(self, job: Job) -> str:
        """The exact command the runner runs (or ran) for the job."""
        return format_command(job_command(job_spec(job), self.jobs_dir / job.id))

    def preview_command(self, *, gpus: int = 1, strategy: str = DEFAULT_STRATEGY) -> str:
        """The command a job with these devices will run, before it exists (its id is not known yet);
        raises `JobError` for bad `gpus`/`strategy`."""
        spec = JobSpec(stage="sft", method="lora", data="feedback", name="preview", base="", gpus=gpus,
                       strategy=strategy)  # fmt: skip
        check_devices(spec)
        return format_command(job_command(spec, self.jobs_dir / "JOB_ID"))

    def list(self, *, status: str | None = None, limit: int = 100) -> list[Job]:
        return self.queue.list(status=status, limit=limit)

    def get(self, job_id: str) -> Job:
        return self.queue.get(job_id)

    def cancel(self, job_id: str) -> Job:
        return self.queue.cancel(job_id)

    def live(self, job_id: str, log_lines: int = 20) -> JobView:
        """The job with what its progress file and log say now (the same after a hub restart)."""
        job = self.queue.get(job_id)
        job_dir = self.jobs_dir / job_id
        progress = read_progress(job_dir / PROGRESS_FILE)
        curve = progress.loss_curve or job.metrics.get("loss_curve") or []
        log_path = Path(job.log_path) if job.log_path else job_dir / "worker.log"
        return JobView(
            job=job,
            step=progress.step or int(job.metrics.get("step") or 0),
            total=progress.total or job.metrics.get("total_steps"),
            eta_s=progress.eta_s if job.status == "running" else None,
            loss=progress.loss if progress.loss is not None else job.metrics.get("loss"),
            loss_curve=curve,
            log=log_tail(log_path, lines=log_lines),
        )

    def estimate_table(
        self, method: str, *, batch_size: int, seq_len: int, lora_rank: int = 16, freeze_layers: int = 2
    ) -> str:
        """Memory per device for the served model: the chosen method first, then the others for comparison.
        Raises `ValueError` with the reason when there is no readable config or a bad size."""
        from training.estimate import ModelShape, estimate, format_table
        from training.methods import METHODS

        if not self.base_model:
            raise ValueError("the engine has no local base model, so there is no config to estimate from")
        config_path = Path(self.base_model) / "config.json"
        try:
            config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"the base model's config {str(config_path)!r} could not be read: {e}") from None
        methods = (method, *(m for m in METHODS if m != method)) if method in METHODS else METHODS
        rows = estimate(
            ModelShape.from_config(config),
            seq_len=seq_len,
            batch_size=batch_size,
            methods=methods,
            lora_rank=lora_rank,
            freeze_layers=freeze_layers,
        )
        return format_table(rows, None)


# ----- the hub's job runner ------------------------------------------------------------------------------

LOAD_TIMEOUT_S = 300.0
log = logging.getLogger("tunehub.jobs")


def adapter_publisher(service: ChatService, loop: asyncio.AbstractEventLoop):
    """What the runner calls (from its thread) with each registered chat adapter: load it into the engine
    under a new served name, on the event loop, and return that name."""

    def publish(adapter: Adapter) -> str:
        loaded = {info.name for info in service.engine.adapters()}
        name = served_name(adapter, loaded)
        future = asyncio.run_coroutine_threadsafe(service.load_adapter(name, Path(adapter.path)), loop)
        future.result(timeout=LOAD_TIMEOUT_S)
        return name

    return publish


def auto_trigger(
    service: ChatService,
    store,
    data_dir: Path,
    chat_template: str | None = None,
    settings_file: Path | None = None,
    guard_bounds: Mapping[str, float] | None = None,
) -> AutoTrigger | None:
    """The automatic trigger from `settings_file` (--auto-train, TUNEHUB_AUTO_TRAIN), else
    ``DATA_DIR/auto-train.json``; None (off) when there is none. A bad file raises `TriggerError`: the hub
    refuses to start with it. Its jobs watch `guard_bounds` as `JobsService`'s do."""
    path = Path(settings_file) if settings_file else Path(data_dir) / SETTINGS_FILE
    if not settings_file and not path.exists():
        return None
    rules = load_rules(path)
    base = service.engine.model_path
    if not rules:
        return None
    if not base:
        raise TriggerError(f"auto-train settings {str(path)!r}: this engine has no local base model to train")
    log.info("auto-train on: %s", ", ".join(f"{r.stage} every {r.min_new} new rows" for r in rules))
    return AutoTrigger(store, rules, str(base), chat_template=chat_template, guard_bounds=guard_bounds)


def start_runner(
    service: ChatService,
    store,
    data_dir: Path,
    replay: Replay | None = None,
    chat_template: str | None = None,
    *,
    auto_train: Path | None = None,
    guard_bounds: Mapping[str, float] | None = None,
) -> JobRunner:
    """The hub's job runner, started, with the automatic trigger when one is set up and `replay` as each
    chat adapter's last step once it is live; call from the lifespan (it needs the running event loop)."""
    runner = JobRunner(
        store,
        data_dir,
        publish=adapter_publisher(service, asyncio.get_running_loop()),
        trigger=auto_trigger(service, store, data_dir, chat_template, auto_train, guard_bounds),
        engine_leases=job_leases(service.engine, asyncio.get_running_loop()),
        replay=replay,
    )
    runner.start()
    return runner
