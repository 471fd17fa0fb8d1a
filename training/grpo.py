"""Group relative policy optimisation (trl.GRPOTrainer) on prompts, scored by the project's reward model.

Each prompt gets ``--num-generations`` sampled answers; an answer's advantage is its reward minus its
group's mean (scaled by the group's std, ``--scale-rewards group``), so no value model is needed. With
``--beta`` above 0 a KL penalty keeps the policy near the reference (the base with adapters disabled when
training an adapter). Shared fields and CPU-friendly defaults: `training.online`.

    python -m training.grpo --model ./demo --data exports/prompts --reward-model adapters/rm-1 \\
        --output-dir adapters/grpo-1 --max-steps 100
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from training.config import build_parser as build_config_parser
from training.config import parse_config
from training.online import OnlineConfig, RewardFn, run_online
from training.stage_run import run_cli

DESCRIPTION = "GRPO on prompts with a reward model (TRL GRPOTrainer): group-relative advantages."
LOSS_TYPES: tuple[str, ...] = ("grpo", "dr_grpo", "dapo", "bnpo")
SCALE_REWARDS: tuple[str, ...] = ("group", "batch", "none")


@dataclass
class GRPOConfig(OnlineConfig):
    """GRPO: the online fields plus the KL coefficient, the loss and the reward scaling."""

    beta: float = field(
        default=0.04, metadata={"help": "KL coefficient to the reference (0: no reference, TRL's default)"}
    )
    loss_type: str = field(
        default="dapo", metadata={"help": "how token losses are averaged (TRL name)", "choices": LOSS_TYPES}
    )
    scale_rewards: str = field(
        default="group",
        metadata={
            "help": "divide advantages by the std of the group, of the batch, or not",
            "choices": SCALE_REWARDS,
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type {self.loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"scale_rewards {self.scale_rewards!r} is not one of {', '.join(SCALE_REWARDS)}")


def main(config: GRPOConfig, callbacks: list | None = None, reward_fn: RewardFn | None = None) -> Path:
    """Train, then return the directory holding the adapter (or model) and `tunehub_training.json`.

    `reward_fn(prompts=..., completions=...) -> list[float]`, when given, replaces the reward model.
    """
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import GRPOTrainer

    method_args = {"beta": config.beta, "loss_type": config.loss_type, "scale_rewards": config.scale_rewards}
    return run_online("grpo", config, GRPOTrainer, TRLGRPOConfig, method_args, callbacks, reward_fn)


def build_parser():
    return build_config_parser(GRPOConfig, DESCRIPTION)


def parse_args(argv: list[str] | None = None) -> GRPOConfig:
    return parse_config(GRPOConfig, DESCRIPTION, argv)


if __name__ == "__main__":
    run_cli(main, GRPOConfig, DESCRIPTION, None)
