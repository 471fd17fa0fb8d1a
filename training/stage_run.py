"""A training stage's run around its TRL trainer, from checked inputs to the final metrics.

A stage module (sft, reward, dpo, kto) calls, in order: `prepare_run` (data rows, output directory and
parent adapter checked before any model is loaded), `load_run_model`, `trainer_arguments`
(schedule, precision, eval and early stopping), `stage_callbacks`, `run_training` (a NaN or flat loss raises
`TrainingFailed` with advice), then `training.result.save_result` (the result renamed into place).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.config import StageConfig, logging_interval, parse_config
from training.data import TrainingData, load_training_data
from training.methods import Hardware, MethodPlan, detect_hardware, resolve_method, resolve_precision
from training.result import ADAPTER_CONFIG, check_output_dir

KL_PROMPTS = 32  # held-out prompts the drift watch answers at each evaluation (the KL bound)


class TrainingFailed(RuntimeError):
    """Training stopped on a problem (NaN or flat loss); the message says what to change. Nothing was saved."""


def run_cli(module_main, config_class: type[StageConfig], description: str, argv: list[str] | None) -> None:
    """`python -m training.<stage>`: parse, train, print the output directory; errors end in one line."""
    from feedback.errors import StoreError

    config = parse_config(config_class, description, argv)
    try:
        out = module_main(config)
    except (StoreError, TrainingFailed, ValueError, FileExistsError) as e:
        raise SystemExit(f"error: {e}") from None
    print(out)


# -- before the model is loaded ------------------------------------------------------------------------


@dataclass
class Run:
    """What `prepare_run` checked: the data, where the result goes, the parent and the hardware."""

    stage: str
    config: StageConfig
    data: TrainingData
    output_dir: Path
    parent: Path | None
    hardware: Hardware
    precision: str = "fp32"  # resolved: fp32, bf16 or fp16
    precision_reason: str = ""  # why (auto's choice, or "asked for")
    # the held-out text the perplexity bound is measured on (`perplexity_text`), read once here
    heldout_text: str | None = None
    started: float = field(default_factory=time.perf_counter)


def prepare_run(stage: str, config: StageConfig, kind: str) -> Run:
    """Check everything that can be checked before loading a model: data rows, output dir, parent adapter,
    the precision this machine can train in (said in the log: the job's log shows it first)."""
    data = load_training_data(
        config.data,
        kind,
        eval_path=config.eval_data,
        eval_fraction=config.eval_fraction,
        seed=config.seed,
        exclude_reasons=config.exclude_reasons,
    )
    output_dir = Path(config.output_dir)
    check_output_dir(output_dir)
    parent = check_parent(Path(config.parent_adapter)) if config.parent_adapter else None
    hardware = detect_hardware()
    precision, reason = resolve_precision(config.precision, hardware)
    print(f"{stage}: training in {precision} on {hardware.name} ({reason})", flush=True)
    return Run(stage, config, data, output_dir, parent, hardware, precision, reason, perplexity_text(config))


def check_parent(path: Path) -> Path:
    if not (path / ADAPTER_CONFIG).is_file():
        raise ValueError(f"parent_adapter {str(path)!r} is not an adapter directory (no {ADAPTER_CONFIG})")
    return path


# -- the run --------------------------------------------------------------------------------------------


def total_steps(config: StageConfig, n_train: int) -> int:
    if config.max_steps > 0:
        return config.max_steps
    per_epoch = math.ceil(n_train / config.per_device_batch_size / config.gradient_accumulation_steps)
    return max(1, math.ceil(per_epoch * config.num_train_epochs))


def keeps_best_weights(config: StageConfig) -> bool:
    """Whether a run ends on its best evaluated weights: as the config says, and always across processes
    (the drift watch's own going back reads whole weights, which sharded runs do not hold)."""
    return config.keep_best_weights or int(os.environ.get("WORLD_SIZE", "1")) > 1


def trainer_arguments(run: Run, run_dir: Path, *, metric: str, greater_is_better: bool) -> dict[str, Any]:
    """Keyword arguments shared by every TRL config class: schedule, precision, logging, eval, early stop."""
    from training.methods import precision_kwargs

    config = run.config
    has_eval = bool(run.data.eval)
    steps = total_steps(config, len(run.data.train))
    eval_steps = config.eval_steps or max(1, steps // 8)
    # Early stopping and the drift bounds keep the best weights evaluated (within the bounds), unless the
    # config keeps the weights a run stops with (the drift watch then goes back on its own).
    keep_best = (
        has_eval and keeps_best_weights(config) and (config.early_stopping_patience > 0 or drifts(run))
    )
    saving: dict[str, Any] = {
        # Early stopping keeps the best evaluated weights: checkpoints are only written on a new best.
        "save_strategy": "best" if keep_best else "no",
        "save_total_limit": 1,
        "save_only_model": True,
    }
    if config.checkpoint_steps > 0:
        # Resumable checkpoints (optimizer, schedule and RNG too) every N steps. Keeping the best weights,
        # transformers can only go back to an evaluation whose step a checkpoint was written at: so one is
        # written at every evaluation (the rotation keeps the best and the latest), else a best evaluation
        # between two checkpoint steps is lost and the run ends on its last weights.
        save_steps = eval_steps if keep_best else config.checkpoint_steps
        saving = {"save_strategy": "steps", "save_steps": save_steps, "save_total_limit": 1}
        saving["save_only_model"] = False
    return {
        "output_dir": str(run_dir),
        "learning_rate": config.learning_rate,
        "num_train_epochs": config.num_train_epochs,
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.per_device_batch_size,
        "per_device_eval_batch_size": config.per_device_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "warmup_steps": config.warmup_ratio,  # a float below 1 is a share of the steps (transformers 5)
        "lr_scheduler_type": config.lr_scheduler,
        "weight_decay": config.weight_decay,
        "max_length": config.max_length,
        "seed": config.seed,
        "data_seed": config.seed,
        "logging_steps": logging_interval(config, steps),
        "report_to": "none",
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": eval_steps if has_eval else None,
        **saving,
        "load_best_model_at_end": keep_best,
        "metric_for_best_model": metric if has_eval else None,
        "greater_is_better": greater_is_better,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        **precision_kwargs(config.precision, config.gradient_checkpointing, run.hardware),
    }


def stage_callbacks(run: Run, extra: list | None = None, drift_watch=None) -> list:
    """The loss watch, the drift watch (`drift_watch`: the KL and perplexity bounds), early stopping when there
    are eval rows, then any `extra` callbacks."""
    from transformers import EarlyStoppingCallback

    from training.callbacks import LossWatch

    callbacks: list = [LossWatch(run.config.loss_check_steps, run.config.learning_rate)]
    if drift_watch is not None:
        callbacks.append(drift_watch)  # before early stopping, so an evaluation past a bound counts as worst
    if run.data.eval and run.config.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=run.config.early_stopping_patience))
    return callbacks + list(extra or [])


def load_run_model(run: Run, tokenizer, task: str = "causal_lm") -> tuple[MethodPlan, Any, Any]:
    """The run's method plan and its model: the config's base, loaded for the method on the run's hardware
    and in its precision, from the parent adapter when there is one; with the PEFT config to wrap it in when
    the method trains an adapter (else None)."""
    from training.models import load_model

    plan = resolve_method(run.config, task=task, hardware=run.hardware)
    model, peft_config = load_model(
        run.config.model,
        plan,
        task=task,
        tokenizer=tokenizer,
        parent=run.parent,
        seed=run.config.seed,
        precision=run.precision,
    )
    return plan, model, peft_config


def drifts(run: Run) -> bool:
    """Whether the config bounds the run's drift from where it started: a KL bound (preference stages) or a
    perplexity bound with a held-out text to measure it on (a real model; the demo model has none)."""
    return getattr(run.config, "max_kl", 0) > 0 or bool(run.heldout_text)


def perplexity_text(config: StageConfig) -> str | None:
    """The held-out text the perplexity bound is measured on: the regression replay's for the base (its
    guard's measure), when the config sets a `max_perplexity_rise` above 0."""
    if not getattr(config, "max_perplexity_rise", 0) or not config.model:
        return None
    from training.replay_sets import replay_set

    return replay_set(config.model).text


def drift_watch(run: Run, metric: str, *, greater_is_better: bool, reference=None):
    """A `training.callbacks.DriftWatch` when there are eval rows and the config bounds the drift: the KL over
    up to KL_PROMPTS held-out prompts (`max_kl` above 0), the perplexity of the replay's held-out text
    (`max_perplexity_rise` above 0, a model with a text); else None."""
    max_kl = getattr(run.config, "max_kl", 0)
    text = run.heldout_text
    if not run.data.eval or not (max_kl > 0 or text):
        return None
    from training.callbacks import DriftWatch
    from training.models import load_tokenizer

    prompts: list[list[dict]] = []
    for row in run.data.eval if max_kl > 0 else ():
        prompt = row["prompt"]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if messages not in prompts:
            prompts.append(messages)
        if len(prompts) == KL_PROMPTS:
            break
    tokenizer = load_tokenizer(run.config.model, run.config.chat_template)
    tokenizer.padding_side = "left"  # greedy answers continue each row from its last real token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return DriftWatch(
        prompts,
        tokenizer,
        max_kl,
        metric,
        greater_is_better,
        reference=reference,
        go_back=not keeps_best_weights(run.config),
        text=text,
        max_perplexity_rise=getattr(run.config, "max_perplexity_rise", 0),
    )


def run_training(trainer, run: Run) -> dict[str, Any]:
    """Train, raise `TrainingFailed` on a watched problem, and return the final metrics."""
    from transformers import EarlyStoppingCallback

    from training.callbacks import DriftWatch, LossWatch

    watch = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, LossWatch))
    drift = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, DriftWatch)), None)
    checkpoint = latest_checkpoint(Path(trainer.args.output_dir)) if run.config.resume else None
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_seconds = time.perf_counter() - started
    if watch.problem:
        raise TrainingFailed(watch.problem)
    state = trainer.state
    stopper = next(
        (cb for cb in trainer.callback_handler.callbacks if isinstance(cb, EarlyStoppingCallback)), None
    )
    stopped_early = bool(
        (
            stopper
            and stopper.early_stopping_patience_counter >= stopper.early_stopping_patience
            or (drift and drift.exceeded_at is not None)
        )
        and state.global_step < state.max_steps
    )
    metrics: dict[str, Any] = {
        "train_loss": _last(state.log_history, "loss"),
        "first_loss": watch.losses[0][1] if watch.losses else None,
        "train_loss_mean": output.training_loss,
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "resumed_from_step": watch.start_step if checkpoint else None,
        "stopped_early": stopped_early,
        "best_step": state.best_global_step,
        "kept_step": kept_step(trainer, drift),
        "train_seconds": round(train_seconds, 2),
        "loss_curve": [[step, round(loss, 5)] for step, loss in watch.losses],
        "tokens_per_second": _throughput(state.log_history, train_seconds),
        "precision": run.precision,
        "precision_reason": run.precision_reason,
        "throughput_notes": throughput_notes(run),
        "eval_metric": trainer.args.metric_for_best_model,
        "eval_curve": [[step, round(value, 5)] for step, value in watch.evals],
    }
    if drift is not None:
        metrics.update(drift.summary())
    if trainer.eval_dataset is not None:
        # with a drift watch this adds eval_base_kl and eval_heldout_perplexity: those of the weights kept
        metrics.update({k: v for k, v in trainer.evaluate().items() if isinstance(v, (int, float))})
    return metrics


def kept_step(trainer, drift) -> int:
    """The step whose weights the run ends on: the best evaluated one where transformers loaded it, the last
    one within the drift bounds where the drift watch went back, else the last step."""
    state = trainer.state
    best = state.best_model_checkpoint
    if (
        trainer.args.load_best_model_at_end
        and best
        and Path(best).name == f"checkpoint-{state.best_global_step}"
    ):
        return state.best_global_step
    if drift is not None and drift.went_back_to is not None:
        return drift.went_back_to
    return state.global_step


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest resumable ``checkpoint-<step>`` an interrupted run left in `run_dir`, if any."""
    candidates = [
        path
        for path in run_dir.glob("checkpoint-*")
        if path.name.removeprefix("checkpoint-").isdigit() and (path / "trainer_state.json").is_file()
    ]
    candidates = [path for path in candidates if (path / "optimizer.pt").is_file()]  # not model-only saves
    return max(candidates, key=lambda path: int(path.name.removeprefix("checkpoint-")), default=None)


def throughput_notes(run: Run) -> list[str]:
    """Why this run may train slower than it could (DESIGN.md: low throughput says why)."""
    notes = []
    if not run.hardware.cuda:
        notes.append(f"no GPU: training on the CPU in {run.precision} ({run.precision_reason})")
    if run.precision == "fp32" and run.hardware.bf16:
        notes.append(f"fp32 on {run.hardware.name}, which has bf16: --dtype auto (precision auto) uses bf16")
    elif run.hardware.cuda and run.precision == "fp16" and not run.hardware.bf16:
        notes.append(f"{run.hardware.name} has no bf16: fp16 with loss scaling")
    if getattr(run.config, "packing", True) is False:
        notes.append("no packing: short rows are padded; --packing fills each row")
    return notes


def _throughput(history: list[dict], seconds: float) -> float | None:
    tokens = _last(history, "num_tokens")
    return round(tokens / seconds, 1) if tokens and seconds > 0 else None


def _last(history: list[dict], key: str) -> float | None:
    values = [entry[key] for entry in history if key in entry]
    return values[-1] if values else None
