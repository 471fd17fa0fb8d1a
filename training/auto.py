"""The settings a job gets for what its params leave out: sized to its data and its base model, each with the
reason it was chosen. The Train tab's default preset, ``POST /v1/jobs`` with no params, ``tunehub train STAGE
--data feedback`` and the automatic trigger all train this way; bench/loop.py measures what it gives.

    chosen = auto_settings("dpo", "lora", n_train=120, n_eval=14, hidden_size=576, given={"beta"})
    chosen["learning_rate"].value, chosen["learning_rate"].reason

The rules (README, "Training defaults"):

- Learning rate follows the model's width: ``LR_WIDTH / sqrt(hidden_size)`` for a LoRA-family adapter on a
  preference stage (5e-4 on the 128-wide demo model, 2.4e-4 on SmolLM2's 576, 8.8e-5 at 4096), twice that for
  SFT, and PPO at 0.4 of it; full and freeze tuning move every weight and take a tenth. A wider layer's output
  moves more for the same step on each weight, so a fixed rate is too timid on small models (the old 5e-5
  left SmolLM2 at a KL of 0.0002 from its base) or too bold on large ones.
- Steps follow the data: ``EPOCHS`` passes over the training rows at the stage's batch size (``DPO_EPOCHS``
  for DPO), at least ``MIN_STEPS`` (a few votes still get a real update) and at most ``MAX_STEPS``. A few
  hundred votes are all a small team casts before the first retrain; more passes over them learn the rater's
  taste, and early stopping on the held-out votes and the KL bound stop it before it memorises them.
- DPO's beta follows how much of each pair differs: ``DPO_BETA_TOKENS`` over the mean number of tokens after
  the two answers' shared beginning, within 0.1-2 (TRL's default is 0.1), and DPO passes over the pairs twice
  as often as the other stages. The DPO margin is a sum of log-ratios over the tokens where the answers
  differ (the shared beginning cancels), and beta sets how far that sum moves before a pair stops pulling.
  Two sampled answers of a real chat model differ over most of their length (about 80 tokens for SmolLM2):
  beta 0.1 there. The demo model's differ in about 6 (one word, a remark): with 0.1 the loss keeps pushing
  every pair at full strength, much of each step goes to driving already-rejected wrong answers further
  down, and the style pairs (the taste) are not learned; beta 2 stops a pair once it is separated. Measured
  with bench/retrain.py on the votes of earlier bench/loop.py runs (docs/benchmarks.md): on 24 demo vote
  sets beta 0.1 and 4 passes beat the base blind on 9, this rule and 8 passes on all of them (and on the 2
  of a later run; 22 of the 26 within the accuracy bound); on SmolLM2's concise votes beta 2 lost what 0.1
  won (0.62 against 0.73), and the rule's 0.14-0.15 keeps it (0.71, 0.73).
- DPO adds an SFT term on the chosen answers (weight 0.5, as RPO): with two sampled answers per vote the
  chosen one is often the only good example of the taste, and the term keeps the answers fluent while the
  preference loss pushes the pair apart.
- PPO: one step per rollout batch of the voted prompts, at least 10 and at most 50.
- SFT and DPO end on the weights they stopped with (``keep_best_weights`` false), not on the evaluation with
  the lowest held-out loss: early stopping still ends the run once the held-out loss has not improved for a
  few evaluations, and the KL bound still goes back to the last evaluation within it. The held-out loss on a
  few dozen votes is a guard against memorising them, not a measure of the taste: SFT's turns up as soon as
  the answers start to take the rater's style (the held-out winners are in many styles), and DPO's is
  mostly its SFT term. Retrained on the same votes (bench/retrain.py, the sft and dpo jobs of two demo-model
  runs), ending where they stopped beat the base on 6 of 8 (0.84-0.96), ending on the lowest held-out loss on
  2 of 8 (the others 0.49-0.61: a concise SFT run kept step 6 of 15, a detailed DPO run step 12 of 48).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from feedback.formats import text_of
from training.methods import ADAPTER_METHODS

LR_WIDTH = 5.66e-3  # preference-stage adapter rate times sqrt(width): 5e-4 at width 128 (bench/loop.py)
STAGE_LR_SCALE = {"sft": 2.0, "dpo": 1.0, "kto": 1.0, "reward": 1.0, "ppo": 0.4, "rloo": 0.4, "grpo": 0.4}
FULL_LR_SCALE = 0.1  # full and freeze tuning change every weight of the layers they train
EPOCHS = 4.0
DPO_EPOCHS = 8.0
# DPO beta times the tokens where a pair's answers differ (sigmoid loss; a run that names its loss_type keeps
# the config's beta): 2 at the demo model's ~6 differing tokens, 0.15 at SmolLM2's ~80
DPO_BETA_TOKENS = 12.0
DPO_BETA_MIN, DPO_BETA_MAX = 0.1, 2.0
MIN_STEPS, MAX_STEPS = 30, 300
PPO_PASSES = 1
PPO_MIN_STEPS, PPO_MAX_STEPS = 10, 50
DPO_SFT_WEIGHT = 0.5
# Stages that end on the weights they stopped with rather than on the lowest held-out loss (see above)
KEEP_LAST_STAGES = ("sft", "dpo")
DEFAULT_WIDTH = 1024  # when the base's config cannot be read


@dataclass(frozen=True)
class Choice:
    """One setting chosen for a job, and why (shown in the job's summary and log)."""

    value: Any
    reason: str


def auto_settings(
    stage: str,
    method: str,
    *,
    n_train: int,
    n_eval: int,
    hidden_size: int | None,
    batch_size: int,
    rollout_batch_size: int = 16,
    differing_tokens: float | None = None,
    given: Collection[str] = (),
) -> dict[str, Choice]:
    """The settings to add to a job of `stage` trained with `method` on `n_train` rows (`n_eval` held out):
    those the rules above cover that are not in `given` (the fields the user set). `differing_tokens` is the
    pairs' mean `differing_tokens` (DPO's beta; without it the config's beta stays)."""
    chosen: dict[str, Choice] = {}
    width = hidden_size or DEFAULT_WIDTH
    known = f"width {width}" if hidden_size else f"width unknown, taken as {DEFAULT_WIDTH}"
    scale = STAGE_LR_SCALE.get(stage, 1.0)
    lr = LR_WIDTH / math.sqrt(width) * scale
    why = f"{LR_WIDTH:g}/sqrt({known})"
    if scale != 1.0:
        why += f" x {scale:g} for {stage}"
    if method not in ADAPTER_METHODS:
        lr *= FULL_LR_SCALE
        why += f" x {FULL_LR_SCALE:g} for {method} tuning"
    chosen["learning_rate"] = Choice(float(f"{lr:.3g}"), why)
    if stage in ("ppo", "rloo", "grpo") and not {"num_train_epochs", "total_episodes"} & set(given):
        batches = math.ceil(PPO_PASSES * n_train / max(1, rollout_batch_size))
        steps = _clamp(batches, PPO_MIN_STEPS, PPO_MAX_STEPS)
        chosen["max_steps"] = Choice(
            steps,
            f"one pass over {n_train} prompts in rollout batches of {rollout_batch_size}, "
            f"within {PPO_MIN_STEPS}-{PPO_MAX_STEPS}",
        )
    elif not {"num_train_epochs", "total_episodes"} & set(given):  # the user sized the run in epochs
        per_epoch = math.ceil(n_train / max(1, batch_size))
        epochs = DPO_EPOCHS if stage == "dpo" else EPOCHS
        steps = _clamp(math.ceil(per_epoch * epochs), MIN_STEPS, MAX_STEPS)
        chosen["max_steps"] = Choice(
            steps,
            f"{epochs:g} passes over {n_train} rows at batch {batch_size}, within {MIN_STEPS}-{MAX_STEPS}"
            + (f"; early stopping on {n_eval} held-out rows picks the best" if n_eval else ""),
        )
    if stage == "dpo" and differing_tokens and "loss_type" not in given:
        beta = _clamp(DPO_BETA_TOKENS / differing_tokens, DPO_BETA_MIN, DPO_BETA_MAX)
        chosen["beta"] = Choice(
            float(f"{beta:.2g}"),
            f"{DPO_BETA_TOKENS:g} / {differing_tokens:.1f} tokens where a pair's answers differ, within "
            f"{DPO_BETA_MIN:g}-{DPO_BETA_MAX:g}: the margin sums over those tokens",
        )
    if stage == "dpo":
        chosen["sft_weight"] = Choice(DPO_SFT_WEIGHT, "an SFT term on the chosen answers keeps them fluent")
    if stage in KEEP_LAST_STAGES and n_eval:
        chosen["keep_best_weights"] = Choice(
            False,
            f"on {n_eval} held-out rows the held-out loss turns up while the taste is still being learned: "
            "the run stops once it has not improved for a few evaluations and keeps the weights it stopped with",
        )
    return {key: choice for key, choice in chosen.items() if key not in given}


def model_width(model: str) -> int | None:
    """The base model's hidden size from its config (local directory or cached hub id), or None."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError):
        return None
    config = getattr(config, "text_config", None) or config
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    return int(width) if width else None


def differing_tokens(rows: list[dict[str, Any]], tokenize: Callable[[str], list[int]]) -> float | None:
    """Mean over preference pairs of the tokens after the chosen and rejected answers' shared beginning
    (the two answers' counts averaged); None for no pairs."""
    counts = []
    for row in rows:
        chosen, rejected = tokenize(_answer(row["chosen"])), tokenize(_answer(row["rejected"]))
        shared = 0
        for a, b in zip(chosen, rejected):
            if a != b:
                break
            shared += 1
        counts.append(max(1.0, (len(chosen) + len(rejected)) / 2 - shared))
    return sum(counts) / len(counts) if counts else None


def pair_differing_tokens(rows: list[dict[str, Any]], model: str) -> float | None:
    """`differing_tokens` with the base model's tokenizer (local directory or cached hub id); None when it
    cannot be read."""
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError):
        return None
    return differing_tokens(rows, lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])


def _answer(value: Any) -> str:
    """An answer's text: a string, or the last message of a conversation."""
    if isinstance(value, list):
        return text_of(value[-1].get("content")) if value else ""
    return str(value)


def describe(chosen: dict[str, Choice]) -> str:
    """One line for the log and the job's summary: ``learning_rate 0.0005 (why); max_steps 60 (why)``."""
    return "; ".join(f"{key} {choice.value} ({choice.reason})" for key, choice in chosen.items())


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))
