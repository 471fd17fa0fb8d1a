"""Kahneman-Tversky optimisation (trl.KTOTrainer) on thumbs: unpaired answers labelled good or bad.

Rows are ``{"prompt", "completion", "label"}`` (an export of thumbs votes; preference pairs work too, each
chosen answer good and each rejected one bad). The reference is the starting point, as in DPO. KTO
estimates its KL term from mismatched prompt/answer pairs inside each batch, so a batch needs at least
two rows and TRL reads them in order: the rows are shuffled here, once, with the seed. Early stopping watches
the held-out loss, and the drift bounds (``--max-kl``, ``--max-perplexity-rise``, as in DPO) stop the run past
them, keeping the best weights within them.

    python -m training.kto --model ./demo --data exports/kto --output-dir adapters/kto-1
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from training.config import StageConfig, kl_bound, parse_config, perplexity_bound
from training.config import build_parser as build_config_parser
from training.models import load_tokenizer
from training.reference_model import frozen_copy
from training.result import cleanup, run_dir_for, save_result
from training.stage_run import (
    drift_watch,
    load_run_model,
    prepare_run,
    run_cli,
    run_training,
    stage_callbacks,
    trainer_arguments,
)

DESCRIPTION = "KTO on thumbs-up/down answers (TRL KTOTrainer), unpaired prompt/completion/label rows."


@dataclass
class KTOConfig(StageConfig):
    """KTO: the shared stage fields plus beta and the weights of good and bad answers."""

    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate (keep it <= 1e-4)"})
    max_steps: int = field(
        default=200,
        metadata={"help": "optimizer steps (small feedback sets over-optimise: 100-300 is plenty)"},
    )
    beta: float = field(
        default=0.1, metadata={"help": "strength of the pull towards the reference (higher: stay closer)"}
    )
    desirable_weight: float = field(
        default=1.0, metadata={"help": "loss weight of thumbs-up answers (raise it when they are fewer)"}
    )
    undesirable_weight: float = field(
        default=1.0, metadata={"help": "loss weight of thumbs-down answers (raise it when they are fewer)"}
    )
    max_kl: float = kl_bound()
    max_perplexity_rise: float = perplexity_bound()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(f"beta must be positive, got {self.beta!r}")
        for name in ("desirable_weight", "undesirable_weight"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.per_device_batch_size < 2:
            raise ValueError(
                f"per_device_batch_size must be at least 2 for KTO (its KL estimate pairs rows within a "
                f"batch), got {self.per_device_batch_size!r}"
            )


def main(config: KTOConfig, callbacks: list | None = None) -> Path:
    """Train, then return the directory holding the adapter (or model) and `tunehub_training.json`."""
    run = prepare_run("kto", config, "kto")
    from datasets import Dataset
    from trl import KTOConfig as TRLKTOConfig
    from trl import KTOTrainer

    labels = {row["label"] for row in run.data.train}
    if labels != {True, False}:
        raise ValueError(
            f"KTO needs both thumbs-up and thumbs-down rows; {config.data!r} has only label "
            f"{next(iter(labels))} (use SFT for good answers alone)"
        )
    tokenizer = load_tokenizer(config.model, config.chat_template, conversational=run.data.conversational)
    plan, model, peft_config = load_run_model(run, tokenizer)
    ref_model = None if plan.trains_adapter else frozen_copy(model)
    train_rows = list(run.data.train)
    random.Random(config.seed).shuffle(train_rows)  # TRL reads KTO rows in order (sequential sampling)
    run_dir = run_dir_for(run)
    try:
        args = TRLKTOConfig(
            **trainer_arguments(run, run_dir, metric="eval_loss", greater_is_better=False),
            beta=config.beta,
            desirable_weight=config.desirable_weight,
            undesirable_weight=config.undesirable_weight,
        )
        trainer = KTOTrainer(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list(run.data.eval) if run.data.eval else None,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=stage_callbacks(
                run, callbacks, drift_watch(run, "eval_loss", greater_is_better=False, reference=ref_model)
            ),
        )
        metrics = run_training(trainer, run)
        return save_result(trainer, run, plan, metrics, task="causal_lm")
    finally:
        cleanup(run_dir)


def build_parser():
    return build_config_parser(KTOConfig, DESCRIPTION)


def parse_args(argv: list[str] | None = None) -> KTOConfig:
    return parse_config(KTOConfig, DESCRIPTION, argv)


if __name__ == "__main__":
    run_cli(main, KTOConfig, DESCRIPTION, None)
