"""Direct preference optimisation (trl.DPOTrainer) on preference pairs, with a capped, watched run.

The reference is the starting point: with a new adapter it is the base with adapters disabled
(`ref_model=None` + `peft_config`); from a parent adapter TRL keeps a frozen copy of the parent as the
reference; full and freeze tuning get a frozen copy of the starting weights. Small preference sets
over-optimise fast (DESIGN.md), so the defaults cap the run at 200 steps with lr 5e-5 (a job sizes both to its
data and model: `training.auto`) and stop early when the held-out loss (DPO's, plus the SFT term's when there
is one) stops improving, or when the run drifts past the promotion guard's bounds
(`training.callbacks.DriftWatch`): the KL from the base on held-out prompts past ``--max-kl`` (2 nats), the
perplexity of a real model's held-out text up by more than ``--max-perplexity-rise`` (10%). It keeps the best
weights evaluated within the bounds (with ``--no-keep-best-weights``, a job's default, the weights it stopped
with, or the last evaluated within the bounds). A run that passes over the pairs more than once scores
them under the reference once, up front (`precompute_reference`).

An SFT term on the chosen answers (RPO) slows the collapse: TRL 1.16 has no `rpo_alpha`; its equivalent
is ``loss_type=["sigmoid", "sft"]`` with ``loss_weights=[1, alpha]``, which `--sft-weight alpha` sets.
Pair ``margin``/``weight`` columns are not used by DPO (TRL 1.16 has no per-pair weights) and are dropped.

    python -m training.dpo --model ./demo --data exports/pairs --output-dir adapters/dpo-1 --beta 0.1
"""

from __future__ import annotations

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
    total_steps,
    trainer_arguments,
)

DESCRIPTION = (
    "Direct preference optimisation on preference pairs (TRL DPOTrainer), early-stopped on the held-out loss."
)
# Early stopping watches the held-out loss, not the accuracy: on the few dozen pairs a vote split holds out,
# preference accuracy moves in steps of 1/n and often sits at its first value (a run on SmolLM2 kept step 5 of
# 40 that way), while the loss follows every change of the margins. Accuracy is still reported.
METRIC = "eval_loss"
LOSS_TYPES: tuple[str, ...] = ("sigmoid", "ipo", "hinge", "robust", "sigmoid_norm", "apo_zero", "apo_down")


@dataclass
class DPOConfig(StageConfig):
    """DPO: the shared stage fields plus beta, the loss and the SFT term, with a step cap."""

    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate (keep it <= 1e-4)"})
    max_steps: int = field(
        default=200, metadata={"help": "optimizer steps (DPO over-optimises small data: 100-300 is plenty)"}
    )
    beta: float = field(
        default=0.1, metadata={"help": "strength of the pull towards the reference (higher: stay closer)"}
    )
    loss_type: str = field(
        default="sigmoid", metadata={"help": "preference loss (TRL name)", "choices": LOSS_TYPES}
    )
    sft_weight: float = field(
        default=0.0,
        metadata={
            "help": "weight of an SFT (negative log-likelihood) term on the chosen answers, as RPO's alpha "
            "(0: none; 0.2-1.0 slows collapse)"
        },
    )
    max_kl: float = kl_bound()
    max_perplexity_rise: float = perplexity_bound()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(f"beta must be positive, got {self.beta!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type {self.loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
        if self.sft_weight < 0:
            raise ValueError(f"sft_weight must not be negative, got {self.sft_weight!r}")


def main(config: DPOConfig, callbacks: list | None = None) -> Path:
    """Train, then return the directory holding the adapter (or model) and `tunehub_training.json`."""
    run = prepare_run("dpo", config, "pairs")
    from datasets import Dataset
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    tokenizer = load_tokenizer(config.model, config.chat_template, conversational=run.data.conversational)
    plan, model, peft_config = load_run_model(run, tokenizer)
    ref_model = None if plan.trains_adapter else frozen_copy(model)
    loss_types, loss_weights = [config.loss_type], [1.0]
    if config.sft_weight > 0:
        loss_types, loss_weights = [config.loss_type, "sft"], [1.0, config.sft_weight]
    run_dir = run_dir_for(run)
    try:
        args = TRLDPOConfig(
            **trainer_arguments(run, run_dir, metric=METRIC, greater_is_better=False),
            beta=config.beta,
            loss_type=loss_types,
            loss_weights=loss_weights,
            precompute_ref_log_probs=precompute_reference(config, len(run.data.train)),
        )
        trainer = DPOTrainer(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=Dataset.from_list(_pairs(run.data.train)),
            eval_dataset=Dataset.from_list(_pairs(run.data.eval)) if run.data.eval else None,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=stage_callbacks(
                run,
                callbacks,
                drift_watch(run, METRIC, greater_is_better=False, reference=ref_model),
            ),
        )
        metrics = run_training(trainer, run)
        return save_result(trainer, run, plan, metrics, task="causal_lm")
    finally:
        cleanup(run_dir)


def precompute_reference(config: DPOConfig, n_train: int) -> bool:
    """Score every pair under the (fixed) reference once before training, rather than at every step, when
    the run passes over the pairs more than once: the default 200 steps of 8 pairs see 1,600, a vote export
    a few hundred. It saves a forward pass of the reference per step, a quarter of the step's work with a
    LoRA adapter (bench/training.py, SmolLM2), for one pass over the pairs up front."""
    rows_seen = (
        total_steps(config, n_train) * config.per_device_batch_size * config.gradient_accumulation_steps
    )
    return rows_seen > n_train


def _pairs(rows: list[dict]) -> list[dict]:
    """Prompt, chosen and rejected only: DPO has no use for margin or weight columns."""
    return [{key: row[key] for key in ("prompt", "chosen", "rejected")} for row in rows]


def build_parser():
    return build_config_parser(DPOConfig, DESCRIPTION)


def parse_args(argv: list[str] | None = None) -> DPOConfig:
    return parse_config(DPOConfig, DESCRIPTION, argv)


if __name__ == "__main__":
    run_cli(main, DPOConfig, DESCRIPTION, None)
