"""What RLOO and GRPO share: the config fields of online RL through TRL, and the run around its trainer.

Both sample ``--num-generations`` answers per prompt, score them with the reward model `training.reward`
trained (merged into a plain sequence-classification model, which TRL's trainers score with the chat
template, as the reward model was trained), and push up the answers that beat their group. TRL's own
defaults are for GPUs and big models; the ones here fit the CPU and small adapters: no bf16 off CUDA, no
gradient checkpointing on CPU, no vLLM, a learning rate for LoRA, short answers, no loss-flatness check
(a policy-gradient loss is not a progress measure: it hovers around 0 while the reward climbs). A reward
model below 0.6 held-out accuracy is refused before anything loads (`training.reward_check`).

`training.rloo` and `training.grpo` each add their method's own fields and call `run_online`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedback.errors import Invalid
from training.config import StageConfig
from training.models import load_tokenizer
from training.result import cleanup, run_dir_for, save_result
from training.reward_check import check_reward_model, quality_metrics
from training.stage_run import load_run_model, prepare_run, run_training, stage_callbacks, trainer_arguments

RewardFn = Callable[..., list[float]]


@dataclass
class OnlineConfig(StageConfig):
    """Fields RLOO and GRPO share: the reward model, the sampling and the policy-update knobs."""

    learning_rate: float = field(default=1e-4, metadata={"help": "peak learning rate (AdamW)"})
    max_steps: int = field(default=100, metadata={"help": "optimizer steps to run (-1: use epochs)"})
    eval_fraction: float = field(
        default=0.0,
        metadata={"help": "share of prompts held out to score the policy during training, in [0, 1)"},
    )
    loss_check_steps: int = field(
        default=0,
        metadata={
            "help": "stop if the loss has not fallen after this many steps (0: off, the default: an RL loss "
            "stays near 0 while the reward rises); a NaN loss always stops"
        },
    )
    reward_model: str | None = field(
        default=None,
        metadata={"help": "reward model directory (`tunehub train reward` output): scores each answer"},
    )
    reward_base: str | None = field(
        default=None,
        metadata={"help": "base model of a reward adapter (default: the base its adapter_config.json names)"},
    )
    allow_weak_reward_model: bool = field(
        default=False,
        metadata={
            "help": "use a reward model whose held-out pairwise accuracy is below 0.6 (refused by default: "
            "a policy trained on it learns its noise)"
        },
    )
    num_generations: int = field(
        default=4,
        metadata={"help": "answers sampled per prompt; the batch (x accumulation) must be a multiple of it"},
    )
    max_completion_length: int = field(default=64, metadata={"help": "most tokens sampled per answer"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    num_iterations: int = field(default=1, metadata={"help": "updates per batch of samples (mu)"})
    epsilon: float = field(default=0.2, metadata={"help": "policy ratio clip range"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_generations", "max_completion_length", "num_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations must be at least 2 (answers are compared), got {self.num_generations!r}"
            )
        batch = self.per_device_batch_size * self.gradient_accumulation_steps
        if batch % self.num_generations:
            raise ValueError(
                f"num_generations {self.num_generations} does not divide the batch, per_device_batch_size x "
                f"gradient_accumulation_steps = {batch}"
            )
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature!r}")
        if not self.epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {self.epsilon!r}")
        if getattr(self, "beta", 0) < 0:
            raise ValueError(f"beta must not be negative, got {self.beta!r}")


def run_online(
    stage: str,
    config: OnlineConfig,
    trainer_class,
    trl_config_class,
    method_args: dict[str, Any],
    callbacks: list | None,
    reward_fn: RewardFn | None,
) -> Path:
    """Train `stage` (rloo or grpo) with TRL's trainer; returns the output directory."""
    if reward_fn is None and not config.reward_model:
        raise Invalid(
            f"{stage.upper()} needs a reward model: give --reward-model DIR (`tunehub train reward`)",
            param="reward_model",
        )
    reward_quality = None
    if reward_fn is None:
        reward_quality = check_reward_model(config.reward_model, allow_weak=config.allow_weak_reward_model)
        print(f"{stage}: {reward_quality.summary()}", flush=True)
    run = prepare_run(stage, config, "prompts")
    from datasets import Dataset

    from training.rewards import load_reward_model

    tokenizer = load_tokenizer(config.model, config.chat_template, conversational=run.data.conversational)
    tokenizer.padding_side = "left"  # TRL generates from left-padded prompts
    if reward_fn is not None:
        reward_funcs, reward_tokenizer = reward_fn, None
    else:
        reward_funcs, reward_tokenizer = load_reward_model(config.reward_model, config.reward_base)
    plan, model, peft_config = load_run_model(run, tokenizer)
    run_dir = run_dir_for(run)
    try:
        known = {f.name for f in dataclasses.fields(trl_config_class)}
        shared = trainer_arguments(run, run_dir, metric="eval_reward", greater_is_better=True)
        args = trl_config_class(
            **{k: v for k, v in shared.items() if k in known},  # RLOO/GRPO have no max_length
            num_generations=config.num_generations,
            max_completion_length=config.max_completion_length,
            temperature=config.temperature,
            num_iterations=config.num_iterations,
            epsilon=config.epsilon,
            disable_dropout=True,  # the rollout and update log-probabilities must match
            **method_args,
        )
        trainer = trainer_class(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=Dataset.from_list(_prompts(run.data.train)),
            eval_dataset=Dataset.from_list(_prompts(run.data.eval)) if run.data.eval else None,
            processing_class=tokenizer,
            reward_processing_classes=reward_tokenizer,
            peft_config=peft_config,
            callbacks=stage_callbacks(run, callbacks),
        )
        metrics = run_training(trainer, run)
        metrics.update(reward_summary(trainer.state.log_history))
        if reward_quality is not None:
            metrics.update(quality_metrics(reward_quality))
        return save_result(trainer, run, plan, metrics, task="causal_lm")
    finally:
        cleanup(run_dir)


def _prompts(rows: list[dict]) -> list[dict]:
    return [{"prompt": row["prompt"]} for row in rows]


def reward_summary(history: list[dict]) -> dict[str, Any]:
    """The logged mean reward at the start and the end, its curve, and the KL where it was logged."""
    rewards = [(entry["step"], entry["reward"]) for entry in history if "reward" in entry and "step" in entry]
    kls = [(entry["step"], entry["kl"]) for entry in history if "kl" in entry and "step" in entry]
    return {
        "first_reward": rewards[0][1] if rewards else None,
        "last_reward": rewards[-1][1] if rewards else None,
        "reward_curve": [[step, round(value, 5)] for step, value in rewards],
        "kl_curve": [[step, round(value, 5)] for step, value in kls],
    }
