"""Trainer callbacks that watch a run: a NaN or flat training loss stops it with advice.

Early stopping on a rising eval loss (or a falling held-out preference accuracy) is transformers'
`EarlyStoppingCallback`, set up in `training.common.stage_callbacks`. This module imports transformers
at the top, so import it only inside the functions that train.
"""

from __future__ import annotations

import math

from transformers import TrainerCallback

# The loss check compares the latest logged loss with the first: a fall of less than MIN_LOSS_DROP is "flat",
# a rise of more than MAX_LOSS_RISE is divergence (a smaller rise is noise, or the plateau before a drop).
MIN_LOSS_DROP = 0.01
MAX_LOSS_RISE = 0.1


class LossWatch(TrainerCallback):
    """Stops training when the loss is NaN/infinite, or after `check_steps` steps has risen by over 10% or
    not fallen by 1%.

    The problem, with advice, is kept in `problem`; `training.common.run_training` raises it once the
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
