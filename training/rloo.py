"""REINFORCE leave-one-out (trl.RLOOTrainer) on prompts, scored by the project's reward model.

Each prompt gets ``--num-generations`` sampled answers; an answer's advantage is its reward minus the mean
reward of the other answers to the same prompt, so no value model is needed. A KL penalty (``--beta``) to
the reference keeps the policy near it; with an adapter the reference is the base with adapters disabled.
Shared fields and CPU-friendly defaults: `training.online`.

    python -m training.rloo --model ./demo --data exports/prompts --reward-model adapters/rm-1 \\
        --output-dir adapters/rloo-1 --max-steps 100
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from training.config import build_parser as build_config_parser
from training.config import parse_config
from training.online import OnlineConfig, RewardFn, run_online
from training.stage_run import run_cli

DESCRIPTION = (
    "RLOO on prompts with a reward model (TRL RLOOTrainer): leave-one-out baselines, KL to the base."
)


@dataclass
class RLOOConfig(OnlineConfig):
    """RLOO: the online fields plus the KL coefficient and advantage normalisation."""

    beta: float = field(default=0.05, metadata={"help": "KL coefficient to the reference (0: no reference)"})
    normalize_advantages: bool = field(
        default=False, metadata={"help": "scale the advantages of each batch to mean 0 and std 1"}
    )


def main(config: RLOOConfig, callbacks: list | None = None, reward_fn: RewardFn | None = None) -> Path:
    """Train, then return the directory holding the adapter (or model) and `tunehub_training.json`.

    `reward_fn(prompts=..., completions=...) -> list[float]`, when given, replaces the reward model.
    """
    from trl import RLOOConfig as TRLRLOOConfig
    from trl import RLOOTrainer

    method_args = {"beta": config.beta, "normalize_advantages": config.normalize_advantages}
    return run_online("rloo", config, RLOOTrainer, TRLRLOOConfig, method_args, callbacks, reward_fn)


def build_parser():
    return build_config_parser(RLOOConfig, DESCRIPTION)


def parse_args(argv: list[str] | None = None) -> RLOOConfig:
    return parse_config(RLOOConfig, DESCRIPTION, argv)


if __name__ == "__main__":
    run_cli(main, RLOOConfig, DESCRIPTION, None)
