"""One training job in its own process: `python -m training.jobs.worker JOB_DIR`.

The runner writes ``JOB_DIR/launch.json`` (the job's spec, the effective params of this attempt, the
store's path, the parent adapter's directory, whether to resume) and starts this module in a new process
group. It exports the feedback snapshot (or takes the data path), trains the stage into ``JOB_DIR/adapter``
with a progress callback, and reports through ``JOB_DIR/progress.jsonl`` (see `training.jobs.progress`)
and its exit code (see `training.jobs.faults`). Its stdout and stderr are the job's log.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from training.auto import Choice, auto_settings, describe, model_width, pair_differing_tokens
from training.jobs.faults import EXIT_FAILED, EXIT_INVALID, EXIT_OOM
from training.jobs.progress import PROGRESS_FILE, progress_callback, write_event
from training.jobs.spec import DEFAULT_CHECKPOINT_STEPS, EXPORTS, FEEDBACK, STAGES, JobSpec, config_class

LAUNCH_FILE = "launch.json"
OUTPUT_DIR = "adapter"
DATA_DIR = "data"
# nothing phones home from a job either (DESIGN.md, Environment)
QUIET_ENVIRONMENT = {"HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(job_dir: Path) -> int:
    """Train the job in `job_dir`; returns the exit code. Every failure is also an "error" event."""
    from feedback.errors import StoreError
    from training.result import METADATA_FILE
    from training.stage_run import TrainingFailed

    progress = job_dir / PROGRESS_FILE
    try:
        launch = json.loads((job_dir / LAUNCH_FILE).read_text())
        spec = JobSpec.from_dict(launch["spec"])
        main_process = int(os.environ.get("RANK", "0")) == 0
        data = prepare_shared_data(spec, launch, job_dir, progress, main_process)
        chosen = choose_settings(spec, launch["params"], data)
        if chosen and main_process:
            print(f"settings chosen for what the job left out: {describe(chosen)}", flush=True)
        config = build_config(spec, launch, data, job_dir / OUTPUT_DIR, chosen)
        stage = importlib.import_module(STAGES[spec.stage][0])
        # under `accelerate launch` every process trains; only the main one reports
        out = stage.main(config, callbacks=[progress_callback(progress)] if main_process else [])
        if main_process:
            metrics = json.loads((Path(out) / METADATA_FILE).read_text())["metrics"]
            if chosen:
                metrics["chosen_settings"] = {
                    k: {"value": c.value, "reason": c.reason} for k, c in chosen.items()
                }
            write_event(progress, "done", output=str(out), metrics=metrics)
        return 0
    except (StoreError, ValueError, FileExistsError) as e:
        return _fail(progress, "invalid", str(e), EXIT_INVALID)
    except TrainingFailed as e:
        return _fail(progress, "training", str(e), EXIT_FAILED)
    except BaseException as e:  # noqa: BLE001 - every failure is reported, then the process ends
        if _is_oom(e):
            traceback.print_exc()
            return _fail(progress, "oom", f"out of memory: {type(e).__name__}: {e}"[:2000], EXIT_OOM)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        traceback.print_exc()
        return _fail(progress, "crash", f"{type(e).__name__}: {e}"[:2000], EXIT_FAILED)


def prepare_shared_data(
    spec: JobSpec, launch: dict[str, Any], job_dir: Path, progress: Path, main_process: bool
) -> str:
    """`prepare_data` once per job: in a multi-process launch (WORLD_SIZE > 1) the main process exports
    the snapshot while the others wait, then they all read the same directory."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return prepare_data(spec, launch, job_dir, progress)
    from accelerate import PartialState

    with PartialState().main_process_first():
        if main_process:
            return prepare_data(spec, launch, job_dir, progress)
    return spec.data if spec.data != FEEDBACK else str(job_dir / DATA_DIR)


def prepare_data(spec: JobSpec, launch: dict[str, Any], job_dir: Path, progress: Path) -> str:
    """The path the stage reads: the given one, or a snapshot of the store's votes exported into the job."""
    if spec.data != FEEDBACK:
        return spec.data
    from feedback.exports import export_dataset
    from feedback.store import Store

    kind, mode = EXPORTS[spec.stage]
    with Store(launch["store"]) as store:
        after = last_vote_of_stage(store, spec.stage) if spec.only_new else 0
        export = export_dataset(
            store,
            kind,
            job_dir / DATA_DIR,
            mode=mode,
            after_vote=after,
            exclude_reasons=launch["params"].get("exclude_reasons"),  # the snapshot holds only kept votes
        )
    rows = len(export.train) + len(export.eval)
    write_event(progress, "dataset", dataset_id=export.dataset_id, rows=rows, after_vote=after)
    print(f"exported {rows} {kind} rows from {len(export.vote_ids)} votes (after vote {after})", flush=True)
    return str(job_dir / DATA_DIR)


def last_vote_of_stage(store, stage: str) -> int:
    """The newest vote the stage's last successful job trained on (0 if none): "only new" starts after it."""
    for job in store.list_jobs(status="succeeded", limit=10_000):
        if job.stage == stage and job.dataset_id:
            votes = store.get_dataset(job.dataset_id).vote_ids
            return max(votes, default=0)
    return 0


def choose_settings(spec: JobSpec, params: dict[str, Any], data: str) -> dict[str, Choice]:
    """The settings `training.auto` picks for what `params` leave out, sized to the job's rows and base."""
    from training.data import load_training_data

    cls = config_class(spec.stage)
    defaults = cls(model="model", data="data", output_dir="out", method=spec.method, **params)
    rows = load_training_data(
        data, STAGES[spec.stage][2], eval_fraction=defaults.eval_fraction, seed=defaults.seed
    )
    differing = pair_differing_tokens(rows.train, spec.base) if spec.stage == "dpo" else None
    return auto_settings(
        spec.stage,
        spec.method,
        n_train=len(rows.train),
        n_eval=len(rows.eval),
        hidden_size=model_width(spec.base),
        batch_size=defaults.per_device_batch_size * defaults.gradient_accumulation_steps,
        rollout_batch_size=getattr(defaults, "rollout_batch_size", 16),
        differing_tokens=differing,
        given=set(params),
    )


def build_config(
    spec: JobSpec,
    launch: dict[str, Any],
    data: str,
    output_dir: Path,
    chosen: dict[str, Choice] | None = None,
):
    params = {**{k: c.value for k, c in (chosen or {}).items()}, **launch["params"]}
    params.setdefault("checkpoint_steps", DEFAULT_CHECKPOINT_STEPS)
    if spec.chat_template and not params.get("chat_template"):
        params["chat_template"] = spec.chat_template
    return config_class(spec.stage)(
        model=spec.base,
        data=data,
        output_dir=str(output_dir),
        method=spec.method,
        parent_adapter=launch.get("parent_path"),
        resume=bool(launch.get("resume")),
        **params,
    )


def _fail(progress: Path, kind: str, message: str, code: int) -> int:
    print(f"error ({kind}): {message}", file=sys.stderr, flush=True)
    write_event(progress, "error", kind=kind, message=message)
    return code


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m training.jobs.worker JOB_DIR", file=sys.stderr)
        return 2
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    return run(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
