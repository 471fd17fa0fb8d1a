"""Reward model (trl.RewardTrainer): a scalar scorer trained on preference pairs, for PPO and for ranking.

The causal LM is loaded as `AutoModelForSequenceClassification` (one label, `pad_token_id` set so batches
of more than one row find their last token); with an adapter method the new `score` head trains in full
beside the adapter. The loss is Bradley-Terry, ``-log sigmoid(r_chosen - r_rejected - margin)``:

- ``margin`` (a column an export adds with `--margin`) is used natively by TRL 1.16;
- ``weight`` is not supported by TRL 1.16's RewardTrainer; `WeightedRewardTrainer` here adds it, as a
  weighted mean of the per-pair losses in each batch.

Held-out pairwise accuracy (chosen scored above rejected) is reported as ``eval_accuracy``, and again as
``heldout_accuracy`` with ``heldout_pairs`` (how many held-out pairs it was measured on): the figure
`training.reward_check` holds PPO, RLOO and GRPO to (at least 0.6). The held-out pairs are the export's
eval split (by conversation), else a seeded ``--eval-fraction`` (0.1) of the prompts; they also choose the
checkpoint kept, so the figure is slightly optimistic. Early stopping watches the eval loss, which keeps
improving after the accuracy reaches 1. TRL drops pairs longer than --max-length; the count is checked
and recorded first.

    python -m training.reward --model ./demo --data exports/pairs --output-dir adapters/rm-1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedback.errors import Invalid
from training.config import StageConfig, parse_config
from training.config import build_parser as build_config_parser
from training.models import load_tokenizer
from training.result import cleanup, run_dir_for, save_result
from training.reward_check import heldout_metrics
from training.stage_run import (
    load_run_model,
    prepare_run,
    run_cli,
    run_training,
    stage_callbacks,
    trainer_arguments,
)

DESCRIPTION = "Train a reward model on preference pairs (TRL RewardTrainer); reports held-out pair accuracy."


@dataclass
class RewardConfig(StageConfig):
    """Reward model: the shared stage fields plus margin, weight and reward centring."""

    learning_rate: float = field(default=1e-4, metadata={"help": "peak learning rate (AdamW)"})
    use_margin: bool = field(
        default=True,
        metadata={
            "help": "use the data's margin column (chosen must beat rejected by that much) when present"
        },
    )
    use_weight: bool = field(
        default=True, metadata={"help": "weight each pair's loss by the data's weight column when present"}
    )
    center_rewards_coefficient: float | None = field(
        default=None,
        metadata={"help": "penalise the mean squared reward by this factor, keeping rewards centred on 0"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.center_rewards_coefficient is not None and self.center_rewards_coefficient < 0:
            raise ValueError(
                f"center_rewards_coefficient must not be negative, got {self.center_rewards_coefficient!r}"
            )


def main(config: RewardConfig, callbacks: list | None = None) -> Path:
    """Train, then return the directory holding the reward adapter (or model) and `tunehub_training.json`.

    Load the result with `AutoModelForSequenceClassification.from_pretrained(base, num_labels=1,
    pad_token_id=...)` and, for an adapter, `PeftModel.from_pretrained(that, path)`.
    """
    run = prepare_run("reward", config, "pairs")
    from datasets import Dataset
    from trl import RewardConfig as TRLRewardConfig

    tokenizer = load_tokenizer(config.model, config.chat_template, conversational=run.data.conversational)
    train_rows = _columns(run.data.train, config)
    eval_rows = _columns(run.data.eval, config)
    too_long = count_too_long(train_rows, tokenizer, config.max_length)
    if too_long == len(train_rows):
        raise Invalid(
            f"every training pair is longer than max_length {config.max_length} tokens and would be dropped; "
            "raise --max-length",
            param="max_length",
        )
    plan, model, peft_config = load_run_model(run, tokenizer, task="seq_cls")
    run_dir = run_dir_for(run)
    try:
        args = TRLRewardConfig(
            **trainer_arguments(run, run_dir, metric="eval_loss", greater_is_better=False),
            center_rewards_coefficient=config.center_rewards_coefficient,
        )
        trainer = weighted_reward_trainer_class()(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=stage_callbacks(run, callbacks),
        )
        metrics = run_training(trainer, run)
        metrics["dropped_too_long"] = too_long
        heldout = len(eval_rows) - count_too_long(eval_rows, tokenizer, config.max_length)
        metrics.update(heldout_metrics(metrics.get("eval_accuracy"), heldout))
        if metrics["heldout_accuracy"] is not None:
            print(f"reward: held-out pairwise accuracy {metrics['heldout_accuracy']:.3f} on {heldout} pairs")
        return save_result(trainer, run, plan, metrics, task="seq_cls")
    finally:
        cleanup(run_dir)


def _columns(rows: list[dict[str, Any]], config: RewardConfig) -> list[dict[str, Any]]:
    """The rows with the margin/weight columns kept only when asked for."""
    drop = {name for name, keep in (("margin", config.use_margin), ("weight", config.use_weight)) if not keep}
    return [{k: v for k, v in row.items() if k not in drop} for row in rows]


def count_too_long(rows: list[dict[str, Any]], tokenizer, max_length: int) -> int:
    """How many pairs have a chosen or rejected conversation over `max_length` tokens (TRL drops those)."""
    count = 0
    for row in rows:
        lengths = [
            len(tokenizer.apply_chat_template(row["prompt"] + row[side], tokenize=True, return_dict=False))
            for side in ("chosen", "rejected")
        ]
        count += max(lengths) > max_length
    return count


def weighted_reward_trainer_class():
    """TRL's RewardTrainer plus a per-pair ``weight`` column (built on first use: TRL imports are heavy)."""
    import torch
    import torch.nn.functional as F
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    class WeightedCollator(DataCollatorForPreference):
        def torch_call(self, examples):
            output = super().torch_call(examples)
            if "weight" in examples[0]:
                output["weight"] = torch.tensor(
                    [example["weight"] for example in examples], dtype=torch.float
                )
            return output

    class WeightedRewardTrainer(RewardTrainer):
        def __init__(self, *args, processing_class=None, **kwargs):
            collator = WeightedCollator(pad_token_id=processing_class.pad_token_id)
            super().__init__(*args, processing_class=processing_class, data_collator=collator, **kwargs)

        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["chosen_ids", "rejected_ids", "margin", "weight"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weight = inputs.pop("weight", None)
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
            if weight is not None:
                # Same loss as TRL's, each pair's term weighted (the metrics TRL logged are unweighted).
                rewards_chosen, rewards_rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
                margin = inputs.get("margin", 0.0)
                per_pair = -F.logsigmoid(rewards_chosen - rewards_rejected - margin)
                loss = (weight * per_pair).sum() / weight.sum().clamp_min(1e-8)
                if self.args.center_rewards_coefficient is not None:
                    centred = torch.mean((rewards_chosen + rewards_rejected) ** 2)
                    loss = loss + self.args.center_rewards_coefficient * centred
            return (loss, outputs) if return_outputs else loss

    return WeightedRewardTrainer


def build_parser():
    return build_config_parser(RewardConfig, DESCRIPTION)


def parse_args(argv: list[str] | None = None) -> RewardConfig:
    return parse_config(RewardConfig, DESCRIPTION, argv)


if __name__ == "__main__":
    run_cli(main, RewardConfig, DESCRIPTION, None)
