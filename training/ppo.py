"""Proximal policy optimisation, written here (TRL removed its PPOTrainer in 1.13): sample answers to
prompts, score them with the reward model, and move the policy towards the better ones while a per-token
KL penalty keeps it near the reference. A reward model whose held-out accuracy is below 0.6 is refused
before anything loads (`training.reward_check`; ``--allow-weak-reward-model`` overrides).

- Policy: the base with a LoRA (or other PEFT) adapter, new or from `--parent-adapter`. Full and freeze
  tuning work too, against a frozen copy of the starting weights.
- Reference: the starting point. With a new adapter that is the same model with its adapters disabled
  (``with model.disable_adapter():``), so no second copy of the weights; from a parent adapter it is a
  frozen copy of the parent loaded as a second adapter, ``reference``, so the KL penalty keeps the policy
  near the parent rather than pulling it back to the base (as `training.dpo` does with TRL's "ref").
- Value head: one linear layer on the policy's last hidden state, trained alongside with ``vf_coef``
  weighting its loss. A separate value model would double the memory and the forward passes; sharing the
  trunk is what TRL's old ``AutoModelForCausalLMWithValueHead`` did. It is saved as
  ``value_head.safetensors`` beside the adapter (PEFT ignores it).
- Each step: a rollout batch of prompts, sampled answers (at ``--temperature``, up to
  ``--response-length`` tokens), their scores (minus ``--missing-eos-penalty`` for an answer that never
  ended), per-token rewards ``-kl_coef * (logp - ref_logp)`` with the score on the last token, GAE
  (``--gamma``, ``--lam``), whitened advantages, then ``--ppo-epochs`` passes over ``--num-minibatches``
  minibatches of the clipped policy and value losses (`training.ppo_core`).
- A step is one rollout batch; ``--max-steps``, ``--total-episodes`` (answers sampled) or
  ``--num-train-epochs`` (passes over the prompts) sets how many. ``--per-device-batch-size``,
  ``--gradient-accumulation-steps`` and ``--early-stopping-patience`` are not used by PPO.

Prompts come in any format the other stages read (a ``{"prompt"}`` export, or the prompts of SFT, pair or
KTO rows). Rewards come from a reward model `training.reward` trained (``--reward-model DIR``), or from any
callable ``reward_fn(prompts=..., completions=...) -> list[float]`` given to `main` (tests).

    python -m training.ppo --model ./demo --data exports/prompts --reward-model adapters/rm-1 \\
        --output-dir adapters/ppo-1 --max-steps 100
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from feedback.errors import Invalid
from training.config import StageConfig, parse_config
from training.config import build_parser as build_config_parser
from training.methods import precision_kwargs
from training.result import cleanup, run_dir_for, write_result
from training.reward_check import check_reward_model, quality_metrics
from training.stage_run import TrainingFailed, load_run_model, prepare_run, run_cli

DESCRIPTION = (
    "PPO on prompts with a reward model: LoRA policy, value head, KL to the base, GAE, clipped losses."
)
VALUE_HEAD_FILE = "value_head.safetensors"
RewardFn = Callable[..., list[float]]


@dataclass
class PPOConfig(StageConfig):
    """PPO: the shared stage fields plus the reward model, the rollout and the PPO knobs."""

    learning_rate: float = field(default=1e-4, metadata={"help": "peak learning rate (AdamW)"})
    max_steps: int = field(
        default=100, metadata={"help": "PPO steps (rollout batches); -1: from --total-episodes or epochs"}
    )
    eval_fraction: float = field(
        default=0.0,
        metadata={"help": "share of prompts held out to score the policy before and after, in [0, 1)"},
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
    total_episodes: int | None = field(
        default=None, metadata={"help": "answers to sample in all; sets the steps when --max-steps is -1"}
    )
    rollout_batch_size: int = field(default=16, metadata={"help": "prompts answered per PPO step"})
    num_minibatches: int = field(
        default=2, metadata={"help": "minibatches each rollout batch is split into for the updates"}
    )
    ppo_epochs: int = field(default=4, metadata={"help": "passes over each rollout batch"})
    response_length: int = field(default=64, metadata={"help": "most tokens sampled per answer"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature of the rollouts"})
    missing_eos_penalty: float = field(
        default=1.0, metadata={"help": "subtracted from the score of an answer that did not end (0: none)"}
    )
    kl_coef: float = field(
        default=0.05, metadata={"help": "per-token KL penalty to the reference (higher: stay closer)"}
    )
    cliprange: float = field(default=0.2, metadata={"help": "policy ratio clip range epsilon"})
    cliprange_value: float = field(default=0.2, metadata={"help": "value prediction clip range"})
    vf_coef: float = field(default=0.1, metadata={"help": "weight of the value loss"})
    gamma: float = field(default=1.0, metadata={"help": "discount factor of GAE, in [0, 1]"})
    lam: float = field(default=0.95, metadata={"help": "lambda of GAE, in [0, 1]"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("rollout_batch_size", "num_minibatches", "ppo_epochs", "response_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.rollout_batch_size % self.num_minibatches:
            raise ValueError(
                f"rollout_batch_size {self.rollout_batch_size} is not divisible by num_minibatches "
                f"{self.num_minibatches}"
            )
        if self.total_episodes is not None and self.total_episodes < 1:
            raise ValueError(f"total_episodes must be at least 1, got {self.total_episodes!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature!r}")
        for name in ("missing_eos_penalty", "kl_coef", "vf_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)!r}")
        for name in ("cliprange", "cliprange_value", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("gamma", "lam"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.response_length >= self.max_length:
            raise ValueError(
                f"response_length {self.response_length} must be below max_length {self.max_length}"
            )


def ppo_steps(config: PPOConfig, n_prompts: int) -> int:
    if config.max_steps > 0:
        return config.max_steps
    episodes = config.total_episodes or math.ceil(n_prompts * config.num_train_epochs)
    return max(1, math.ceil(episodes / config.rollout_batch_size))


def main(config: PPOConfig, callbacks: list | None = None, reward_fn: RewardFn | None = None) -> Path:
    """Train, then return the directory holding the adapter, the value head and `tunehub_training.json`."""
    if reward_fn is None and not config.reward_model:
        raise Invalid(
            "PPO needs a reward model: give --reward-model DIR (`tunehub train reward`)",
            param="reward_model",
        )
    reward_quality = None
    if reward_fn is None:
        reward_quality = check_reward_model(config.reward_model, allow_weak=config.allow_weak_reward_model)
        print(f"ppo: {reward_quality.summary()}", flush=True)
    run = prepare_run("ppo", config, "prompts")
    import torch
    from accelerate import PartialState

    if PartialState().num_processes > 1:
        raise ValueError(
            "PPO here trains in one process on one device; run it with --gpus 1 "
            "(RLOO and GRPO scale out through TRL)"
        )
    from peft import PeftModel, get_peft_model

    from training.models import load_tokenizer
    from training.ppo_loop import REFERENCE_ADAPTER, PPOLoop, drop_long_prompts
    from training.reference_model import frozen_copy
    from training.rewards import RewardModelScorer

    if reward_fn is None:
        reward_fn = RewardModelScorer.load(config.reward_model, base=config.reward_base)
    tokenizer = load_tokenizer(config.model, config.chat_template, conversational=run.data.conversational)
    prompts, dropped = drop_long_prompts(
        [row["prompt"] for row in run.data.train], tokenizer, config.max_length - config.response_length
    )
    if not prompts:
        raise Invalid(
            f"every prompt is longer than max_length - response_length = "
            f"{config.max_length - config.response_length} tokens; raise --max-length",
            param="max_length",
        )
    eval_prompts = [row["prompt"] for row in run.data.eval]
    plan, model, peft_config = load_run_model(run, tokenizer)
    precision = precision_kwargs(config.precision, False, run.hardware)
    if peft_config is not None:
        model = get_peft_model(model, peft_config)
    reference = None if isinstance(model, PeftModel) else frozen_copy(model)
    if run.parent is not None and isinstance(model, PeftModel):
        model.load_adapter(str(run.parent), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        model.set_adapter("default")
    device = torch.device("cuda" if run.hardware.cuda else "cpu")
    run_dir = run_dir_for(run)
    loop = PPOLoop(
        config,
        model,
        reference,
        tokenizer,
        reward_fn,
        device=device,
        autocast_dtype=torch.bfloat16 if precision["bf16"] else torch.float16 if precision["fp16"] else None,
        callbacks=callbacks or [],
        checkpoint_dir=run_dir,
    )
    try:
        metrics = loop.train(prompts, eval_prompts, ppo_steps(config, len(prompts)))
    finally:
        cleanup(run_dir)
    metrics["dropped_too_long"] = dropped
    if reward_quality is not None:
        metrics.update(quality_metrics(reward_quality))
    if not all(math.isfinite(value) for value in loop.last_losses()):
        raise TrainingFailed(
            f"the PPO loss became {loop.last_losses()}: lower --learning-rate (now {config.learning_rate:g}) "
            "or --cliprange, raise --kl-coef; nothing was saved"
        )

    def write(directory: Path) -> None:
        from safetensors.torch import save_file

        if isinstance(model, PeftModel):
            model.save_pretrained(str(directory), selected_adapters=["default"])  # not the reference copy
        else:
            model.save_pretrained(str(directory))
        tokenizer.save_pretrained(str(directory))
        save_file(
            {k: v.detach().cpu() for k, v in loop.value_head.state_dict().items()},
            directory / VALUE_HEAD_FILE,
        )

    return write_result(run, plan, metrics, task="causal_lm", write=write)


def build_parser():
    return build_config_parser(PPOConfig, DESCRIPTION)


def parse_args(argv: list[str] | None = None) -> PPOConfig:
    return parse_config(PPOConfig, DESCRIPTION, argv)


if __name__ == "__main__":
    run_cli(main, PPOConfig, DESCRIPTION, None)
