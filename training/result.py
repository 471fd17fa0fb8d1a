"""A training stage's result on disk: written to a hidden sibling of the output directory and renamed into
place (no half-written result is ever seen there), with `tunehub_training.json` beside the weights (stage,
method, base, parent, dataset, config, metrics, seconds); and the run's scratch directory for checkpoints.

Light to import (heavy libraries load inside the functions), so readers of results (`training.merge`,
`training.reward_check`, the job runner) take the file names from here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.methods import MethodPlan
    from training.stage_run import Run

METADATA_FILE = "tunehub_training.json"
ADAPTER_CONFIG = "adapter_config.json"


def check_output_dir(path: Path) -> None:
    """The output may be new, empty, or an earlier training result (replaced); anything else is refused."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"output_dir {str(path)!r} is a file; choose a directory path")
    if path.is_dir() and any(path.iterdir()) and not (path / METADATA_FILE).is_file():
        raise FileExistsError(
            f"output_dir {str(path)!r} exists and is not a tunehub training result; "
            "choose a new or empty directory"
        )


def save_result(trainer, run: Run, plan: MethodPlan, metrics: dict[str, Any], *, task: str) -> Path:
    """Write the adapter (or model), tokenizer and `tunehub_training.json` to a temporary sibling of the
    output directory, then rename it into place; returns the output directory.

    Every process of a multi-GPU run calls this (saving gathers sharded weights); only the main one writes
    the metadata and renames.
    """
    from peft import PeftModel

    out = run.output_dir
    model = trainer.accelerator.unwrap_model(trainer.model)
    if isinstance(model, PeftModel) and "ref" in model.peft_config:
        # TRL's frozen copy of the parent adapter, the DPO/KTO reference: not part of the result.
        model.delete_adapter("ref")
    tmp = _sibling(out, "training")
    main_process = trainer.accelerator.is_main_process
    try:
        trainer.save_model(str(tmp))
        trainer.accelerator.wait_for_everyone()
        if main_process:
            (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; the metadata file says it all
            metadata = training_metadata(run, plan, metrics, task=task)
            (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str) + "\n")
            _move_into_place(tmp, out)
        trainer.accelerator.wait_for_everyone()
    finally:
        if main_process:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_result(run: Run, plan: MethodPlan, metrics: dict[str, Any], *, task: str, write) -> Path:
    """`save_result` for a stage with its own training loop (one process): `write(directory)` saves the
    weights there, then the metadata is added and the directory renamed into place; returns the output."""
    out = run.output_dir
    tmp = _sibling(out, "training")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        metadata = training_metadata(run, plan, metrics, task=task)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str) + "\n")
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def training_metadata(run: Run, plan: MethodPlan, metrics: dict[str, Any], *, task: str) -> dict[str, Any]:
    import peft
    import torch
    import transformers
    import trl

    return {
        "stage": run.stage,
        "method": plan.method,
        "task": task,
        "adapter": plan.trains_adapter,
        "base": run.config.model,
        "parent": str(run.parent) if run.parent else None,
        "dataset": {
            "path": run.data.source,
            "eval": run.data.eval_source,
            "kind": run.data.kind,
            "format": run.data.format,
            "content_hash": run.data.content_hash,
            "n_train": len(run.data.train),
            "n_eval": len(run.data.eval),
        },
        "config": dataclasses.asdict(run.config),
        "metrics": metrics,
        "train_seconds": metrics.get("train_seconds"),
        "total_seconds": round(time.perf_counter() - run.started, 2),
        "hardware": run.hardware.name,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "trl": trl.__version__,
        },
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _move_into_place(tmp: Path, out: Path) -> None:
    # os.replace cannot overwrite a non-empty directory: move the old result aside first, then drop it.
    old = _sibling(out, "old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _sibling(out: Path, purpose: str) -> Path:
    """A hidden directory beside `out` (same filesystem, so renames are atomic). The name is the same in
    every process of a multi-GPU run, so they all find the checkpoints and the result."""
    return out.parent / f".{out.name}.{purpose}"


def run_dir_for(run: Run) -> Path:
    """A scratch directory for checkpoints, beside the output; `cleanup` removes it after the run. It starts
    empty unless the config resumes, which keeps what an interrupted run left there."""
    from accelerate import PartialState

    state = PartialState()
    run_dir = _sibling(run.output_dir, "run")
    if state.is_main_process:
        run.output_dir.parent.mkdir(parents=True, exist_ok=True)
        if not run.config.resume:
            shutil.rmtree(run_dir, ignore_errors=True)  # left by a killed run
        shutil.rmtree(_sibling(run.output_dir, "training"), ignore_errors=True)
    state.wait_for_everyone()
    return run_dir


def cleanup(run_dir: Path) -> None:
    from accelerate import PartialState

    if PartialState().is_main_process:
        shutil.rmtree(run_dir, ignore_errors=True)
