"""Trainer callbacks that watch a run: a NaN or flat training loss stops it with advice; a run stops when it
drifts past the promotion guard's bounds (a preference run's KL divergence from the base, the perplexity of a
real model's held-out text).

Early stopping on a rising eval loss (or a held-out preference accuracy that stops improving) is
transformers' `EarlyStoppingCallback`, set up in `training.stage_run.stage_callbacks`; `DriftWatch` adds the
bounds beside it. This module imports transformers at the top, so import it only inside the functions that
train.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from training.demo.corpus import CheckablePrompt

# The loss check compares the latest logged loss with the first: a fall of less than MIN_LOSS_DROP is "flat",
# a rise of more than MAX_LOSS_RISE is divergence (a smaller rise is noise, or the plateau before a drop).
MIN_LOSS_DROP = 0.01
MAX_LOSS_RISE = 0.1


class LossWatch(TrainerCallback):
    """Stops training when the loss is NaN/infinite, or after `check_steps` steps has risen by over 10% or
    not fallen by 1%.

    The problem, with advice, is kept in `problem`; `training.stage_run.run_training` raises it once the
    trainer returns, so a broken run saves nothing.
    """

    def __init__(self, check_steps: int, learning_rate: float) -> None:
        self.check_steps = check_steps
        self.learning_rate = learning_rate
        self.losses: list[tuple[int, float]] = []
        self.evals: list[tuple[int, float]] = []  # (step, the metric early stopping watches)
        self.problem: str | None = None
        self.checked = False
        self.start_step = 0  # a resumed run starts past 0: the check counts the steps of this run

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        name = args.metric_for_best_model
        if metrics and name:
            key = name if name.startswith("eval_") else f"eval_{name}"
            if key in metrics:
                self.evals.append((state.global_step, float(metrics[key])))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        loss = float(logs["loss"])
        self.losses.append((state.global_step, loss))
        if not math.isfinite(loss):
            self.problem = (
                f"training loss became {loss} at step {state.global_step}: lower --learning-rate (now "
                f"{self.learning_rate:g}), use --precision fp32 or bf16 rather than fp16, and look for empty "
                "or very long rows in the data; nothing was saved"
            )
            control.should_training_stop = True
        elif (
            not self.checked and self.check_steps and state.global_step - self.start_step >= self.check_steps
        ):
            # Each logged loss is the mean over its logging window: compare the latest window with the first.
            self.checked = True
            first, latest = self.losses[0][1], loss
            if latest > first * (1 + MAX_LOSS_RISE):
                self.problem = (
                    f"training loss rose in {state.global_step} steps ({first:.4f} at the start, {latest:.4f} "
                    f"now): lower --learning-rate (now {self.learning_rate:g}) or raise --warmup-ratio; "
                    "nothing was saved"
                )
                control.should_training_stop = True
            elif not latest < first * (1 - MIN_LOSS_DROP):
                self.problem = (
                    f"training loss did not fall in {state.global_step} steps ({first:.4f} at the start, "
                    f"{latest:.4f} now): raise --learning-rate (now {self.learning_rate:g}), check that the "
                    "rows have replies to learn from, or turn this check off with --loss-check-steps 0; "
                    "nothing was saved"
                )
                control.should_training_stop = True


class DriftWatch(TrainerCallback):
    """At each evaluation, how far the run has moved from where it started, by the promotion guard's measures
    (feedback/promotion_rule.py, `training.replay`): the mean per-token KL(policy || base) on the policy's own
    greedy answers to held-out prompts, and the perplexity of the regression replay's held-out text (a real
    model's; `training.replay_sets`) against its perplexity at the start of the run.

    Past either bound (`max_kl` nats; a rise of more than `max_perplexity_rise` over the start) training stops,
    and that evaluation is made the worst one for `metric` (its value in the metrics is replaced before
    transformers picks the best checkpoint), so the weights kept at the end are the best ones evaluated within
    the bounds. A bound of 0 (or no text) is not watched. A preference run that over-optimises drifts from the
    base before its held-out accuracy falls (DESIGN.md: 0.85 -> 0.12 checkable accuracy while the rater's
    accuracy held), and an SFT run on a few dozen answers raises the text's perplexity past the guard's bound
    while its held-out loss barely moves (SmolLM2: +10-14% at the step it stopped on), so the held-out rows
    alone catch neither: a job would hand the hub a candidate its guard refuses.

    `reference` is the model to measure the KL against: None for an adapter (the same model with its adapters
    disabled), the frozen starting weights for full and freeze tuning. The starting perplexity is measured
    once, before the first step, and kept beside the run's checkpoints (`START_FILE`), so a resumed run
    compares with the same figure. Evaluations after training (the final one in
    `training.stage_run.run_training`) only record.

    A run that keeps the weights it stops with (`keep_best_weights` false: transformers loads nothing at the
    end) sets `go_back`: the trainable weights of each evaluation within the bounds are written beside the
    run (`WITHIN_BOUND_FILE`, replaced each time, its step in the file's metadata), and a run stopped by a bound
    ends on them (`went_back_to` is their step), a resumed run too.
    """

    WITHIN_BOUND_FILE = "within-bounds.safetensors"
    START_FILE = "drift-start.json"

    def __init__(
        self,
        prompts: list[list[dict]],
        tokenizer,
        max_kl: float,
        metric: str | None,
        greater_is_better: bool,
        reference=None,
        max_new_tokens: int = 32,
        go_back: bool = False,
        text: str | None = None,
        max_perplexity_rise: float = 0.0,
    ) -> None:
        from training.replay import text_passages

        self.prompts = [CheckablePrompt("eval", messages, "") for messages in prompts] if max_kl > 0 else []
        self.tokenizer = tokenizer
        self.max_kl = max_kl
        self.passages = text_passages(text) if text and max_perplexity_rise > 0 else []
        self.max_perplexity_rise = max_perplexity_rise
        self.metric = None if metric is None else (metric if metric.startswith("eval_") else f"eval_{metric}")
        self.worst = -math.inf if greater_is_better else math.inf
        self.reference = reference
        self.max_new_tokens = max_new_tokens
        self.kls: list[tuple[int, float]] = []  # (step, KL) at each evaluation
        self.start_perplexity: float | None = None
        self.perplexities: list[tuple[int, float]] = []  # (step, perplexity of the text) at each evaluation
        self.exceeded_at: int | None = None  # the step whose evaluation passed a bound
        self.exceeded: str | None = None  # which: "kl" or "perplexity"
        self.training = False
        self.go_back = go_back
        self.within_bound: tuple[int, str] | None = None  # (step, file) of the last weights within them
        self.went_back_to: int | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.training = True
        if model is None:
            return
        start = Path(args.output_dir) / self.START_FILE
        if self.passages:
            if state.global_step == 0:
                self.start_perplexity = self._perplexity(model)
                start.parent.mkdir(parents=True, exist_ok=True)
                start.write_text(json.dumps({"perplexity": self.start_perplexity}))
            elif start.exists():  # a resumed run: the figure its first part measured before step 1
                self.start_perplexity = json.loads(start.read_text())["perplexity"]
        within = Path(args.output_dir) / self.WITHIN_BOUND_FILE
        if self.go_back and state.global_step > 0 and within.exists():  # what the first part kept
            from safetensors import safe_open

            with safe_open(str(within), "pt") as saved:
                self.within_bound = (int((saved.metadata() or {}).get("step", 0)), str(within))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.training = False
        if self.go_back and self.exceeded_at is not None and self.within_bound and model is not None:
            from safetensors.torch import load_file

            step, path = self.within_bound
            saved = load_file(path)
            with torch.no_grad():
                for name, param in _trainable(model):
                    param.copy_(saved[name].to(param.device, param.dtype))
            self.went_back_to = step

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        if model is None or metrics is None:
            return
        measured: dict[str, float] = {}
        exceeded = None
        if self.prompts:
            kl = measured["eval_base_kl"] = self.measure(model)  # not "eval_kl": KTO logs its own batch KL
            self.kls.append((state.global_step, kl))
            exceeded = "kl" if kl > self.max_kl else None
        if self.passages and self.start_perplexity:
            perplexity = measured["eval_heldout_perplexity"] = self._perplexity(model)
            self.perplexities.append((state.global_step, perplexity))
            if perplexity > self.start_perplexity * (1 + self.max_perplexity_rise):
                exceeded = exceeded or "perplexity"
        if not measured:
            return
        metrics.update(measured)
        if state.log_history and any(key.startswith("eval_") for key in state.log_history[-1]):
            state.log_history[-1].update(measured)  # the evaluation was logged before this callback ran
        if self.training and exceeded:
            self.exceeded_at, self.exceeded = state.global_step, exceeded
            if self.metric in metrics:
                metrics[self.metric] = self.worst
            control.should_training_stop = True
        elif self.training and self.go_back:
            from safetensors.torch import save_file

            path = str(Path(args.output_dir) / self.WITHIN_BOUND_FILE)
            weights = {name: param.detach().cpu().contiguous() for name, param in _trainable(model)}
            save_file(weights, path, metadata={"step": str(state.global_step)})
            self.within_bound = (state.global_step, path)

    def measure(self, model) -> float:
        """The KL from the reference on the policy's greedy answers to the held-out prompts."""
        from training.replay import greedy_answers, mean_kl

        with _evaluating(model):
            replies = greedy_answers(model, self.tokenizer, self.prompts, self.max_new_tokens)
            return round(mean_kl(model, self.tokenizer, self.prompts, replies, self.reference), 5)

    def _perplexity(self, model) -> float:
        from training.replay import text_perplexity

        with _evaluating(model):
            return round(text_perplexity(model, self.tokenizer, self.passages), 4)

    def summary(self) -> dict[str, Any]:
        """What `run_training` adds to the run's metrics: each watched bound, its curve and where it stopped
        the run (None: it did not)."""
        out: dict[str, Any] = {}
        if self.prompts:
            out |= {
                "max_kl": self.max_kl,
                "kl_curve": [[step, kl] for step, kl in self.kls],
                "stopped_on_kl": self.exceeded_at if self.exceeded == "kl" else None,
            }
        if self.passages:
            out |= {
                "max_perplexity_rise": self.max_perplexity_rise,
                "start_perplexity": self.start_perplexity,
                "perplexity_curve": [[step, value] for step, value in self.perplexities],
                "stopped_on_perplexity": self.exceeded_at if self.exceeded == "perplexity" else None,
            }
        return out


@contextmanager
def _evaluating(model):
    """The model in eval mode for a measurement, back in training mode after if it was."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


def _trainable(model):
    """(name, parameter) of the weights a run trains."""
    return [(name, param) for name, param in model.named_parameters() if param.requires_grad]
