"""Is a reward model good enough to train a policy on? Its pairwise accuracy on held-out votes decides.

`training.reward` records ``heldout_accuracy`` (the share of held-out pairs whose chosen answer it scores
above the rejected one) and ``heldout_pairs`` in the metrics of its `tunehub_training.json`. PPO, RLOO and
GRPO read them here before loading anything, and the job queue reads them when a job is submitted: a
reward model below `MIN_HELDOUT_ACCURACY` is refused with its figure, unless the job sets
``allow_weak_reward_model``. A policy trained on a reward model near chance (0.5) learns its noise.

A reward model whose accuracy was never measured (no held-out pairs, or a directory not trained here) is
let through with a warning: there is no figure to refuse it on.

    from training.reward_check import check_reward_model
    check_reward_model("adapters/rm/job_1", allow_weak=False)   # raises Invalid when below 0.6
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from feedback.errors import Invalid
from training.result import METADATA_FILE

MIN_HELDOUT_ACCURACY = 0.6


@dataclass(frozen=True)
class RewardModelQuality:
    """What a reward model's training recorded about it: held-out accuracy (None: not measured) and pairs."""

    path: str
    accuracy: float | None
    pairs: int

    @property
    def weak(self) -> bool:
        return self.accuracy is not None and self.accuracy < MIN_HELDOUT_ACCURACY

    def summary(self) -> str:
        if self.accuracy is None:
            return f"reward model {self.path!r}: held-out accuracy not measured (no held-out pairs)"
        return (
            f"reward model {self.path!r}: held-out pairwise accuracy {accuracy_text(self.accuracy)} on "
            f"{self.pairs} held-out pairs (at least {MIN_HELDOUT_ACCURACY:g} is required)"
        )


def accuracy_text(accuracy: float) -> str:
    """The accuracy to 2 decimals, or 3 where 2 would round a refused figure up to the bar (0.597: not 0.60)."""
    text = f"{accuracy:.2f}"
    if accuracy < MIN_HELDOUT_ACCURACY <= float(text):
        text = f"{accuracy:.3f}"
    return text


def heldout_metrics(accuracy: float | None, pairs: int) -> dict[str, float | int | None]:
    """The two metrics `training.reward` records: the accuracy (None without held-out pairs) and the count."""
    return {"heldout_accuracy": accuracy if pairs else None, "heldout_pairs": pairs}


def reward_model_quality(path: str | Path) -> RewardModelQuality:
    """What the reward model directory's `tunehub_training.json` says; (None, 0) when it has none."""
    metadata_file = Path(path).expanduser() / METADATA_FILE
    try:
        metrics = json.loads(metadata_file.read_text()).get("metrics") or {}
    except (OSError, ValueError):
        metrics = {}
    accuracy = metrics.get("heldout_accuracy")
    pairs = metrics.get("heldout_pairs") or 0
    return RewardModelQuality(
        str(path), float(accuracy) if isinstance(accuracy, (int, float)) else None, int(pairs)
    )


def check_reward_model(
    path: str | Path, *, allow_weak: bool, param: str = "reward_model"
) -> RewardModelQuality:
    """The reward model's quality; raises `Invalid` (naming `param`) when it is below the bar and the job
    does not allow a weak one."""
    quality = reward_model_quality(path)
    if quality.weak and not allow_weak:
        raise Invalid(
            f"{quality.summary()}: a policy trained on it would learn its noise. Train a better one (more "
            "votes, or more steps), or set allow_weak_reward_model to true to use it anyway",
            param=param,
        )
    return quality


def quality_metrics(quality: RewardModelQuality) -> dict[str, float | int | None]:
    """What a policy stage records about the reward model it used."""
    return {"reward_model_heldout_accuracy": quality.accuracy, "reward_model_heldout_pairs": quality.pairs}
