"""The progress file of a job: JSON lines that the worker appends and the runner (and UI) read.

Each line is one event with a ``t`` (unix time) and an ``event`` name:

    {"event": "start", "step": 0, "total": 200}                 training began (step > 0: resumed)
    {"event": "step", "step": 12, "total": 200, "eta_s": 31.5}   at most a few per second
    {"event": "log", "step": 10, "loss": 1.93, ...}              what the trainer logged
    {"event": "eval", "step": 20, "eval_loss": 1.7, ...}
    {"event": "checkpoint", "step": 20}                          a resumable checkpoint was saved
    {"event": "dataset", "dataset_id": "ds_...", "rows": 96}     the feedback snapshot it trains on
    {"event": "done", "output": "/.../adapter", "metrics": {...}}
    {"event": "error", "kind": "invalid"|"oom"|"training"|"crash", "message": "..."}

`ProgressReader` folds the lines into a `Progress` (step, total, ETA, loss curve...) and reads only what
was appended since its last call, so the runner can follow a live job cheaply; reading a file from the
start gives the same picture after a restart.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROGRESS_FILE = "progress.jsonl"
MAX_CURVE_POINTS = 500  # the loss curve kept in the store's metrics is thinned beyond this


def write_event(path: Path, event: str, **fields: Any) -> None:
    """Append one event line (a single write, so a reader never sees half of it)."""
    line = json.dumps({"t": round(time.time(), 3), "event": event, **fields}, default=str) + "\n"
    with path.open("a", encoding="utf-8") as f:
        f.write(line)
        f.flush()


@dataclass
class Progress:
    """What the events of one job say so far."""

    step: int = 0
    total: int | None = None
    eta_s: float | None = None
    loss: float | None = None
    loss_curve: list[list[float]] = field(default_factory=list)
    eval: dict[str, float] = field(default_factory=dict)
    checkpoint_step: int | None = None
    resumed_from_step: int | None = None
    dataset_id: str | None = None
    done: dict[str, Any] | None = None  # the "done" event
    error: dict[str, Any] | None = None  # the last "error" event

    @property
    def fraction(self) -> float:
        if self.done is not None:
            return 1.0
        if not self.total:
            return 0.0
        return max(0.0, min(1.0, self.step / self.total))

    def live_metrics(self) -> dict[str, Any]:
        """The running job's metrics as the store keeps them."""
        metrics: dict[str, Any] = {
            "step": self.step,
            "total_steps": self.total,
            "eta_s": self.eta_s,
            "loss": self.loss,
            "loss_curve": _thin(self.loss_curve),
        }
        if self.eval:
            metrics["eval"] = self.eval
        if self.checkpoint_step is not None:
            metrics["checkpoint_step"] = self.checkpoint_step
        if self.resumed_from_step is not None:
            metrics["resumed_from_step"] = self.resumed_from_step
        return metrics


class ProgressReader:
    """Folds a progress file into a `Progress`, reading only new complete lines on each `read()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.progress = Progress()

    def read(self) -> Progress:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return self.progress
        end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next read
        self.offset += end
        for line in chunk[:end].splitlines():
            try:
                self._apply(json.loads(line))
            except (json.JSONDecodeError, TypeError, ValueError):
                continue  # a stray line (say, a truncated write of a killed worker) is skipped
        return self.progress

    def _apply(self, event: dict[str, Any]) -> None:
        p = self.progress
        kind = event.get("event")
        if "step" in event and isinstance(event["step"], int):
            p.step = max(p.step, event["step"]) if kind != "start" else event["step"]
        if event.get("total"):
            p.total = int(event["total"])
        if kind == "launch":  # a new attempt: what the last one ended with no longer holds
            p.error = p.done = None
        elif kind == "start":
            p.eta_s = None
            if event.get("step"):
                p.resumed_from_step = event["step"]
        elif kind == "step":
            p.eta_s = event.get("eta_s")
        elif kind == "log" and isinstance(event.get("loss"), (int, float)):
            p.loss = float(event["loss"])
            p.loss_curve.append([event.get("step", p.step), round(p.loss, 5)])
        elif kind == "eval":
            p.eval = {k: v for k, v in event.items() if k.startswith("eval_") and isinstance(v, (int, float))}
        elif kind == "checkpoint":
            p.checkpoint_step = event.get("step")
        elif kind == "dataset":
            p.dataset_id = event.get("dataset_id")
        elif kind == "done":
            p.done, p.eta_s = event, 0.0
        elif kind == "error":
            p.error = event


def read_progress(path: Path) -> Progress:
    """Everything a progress file says, read from the start."""
    return ProgressReader(path).read()


def _thin(curve: list[list[float]]) -> list[list[float]]:
    if len(curve) <= MAX_CURVE_POINTS:
        return curve
    stride = len(curve) / MAX_CURVE_POINTS
    return [curve[int(i * stride)] for i in range(MAX_CURVE_POINTS - 1)] + [curve[-1]]


def progress_callback(path: Path, min_interval_s: float = 0.5):
    """A transformers `TrainerCallback` that writes the events above (imports transformers: call it in the
    worker only)."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def __init__(self) -> None:
            self.started = 0.0
            self.start_step = 0
            self.last_write = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started, self.start_step = time.monotonic(), state.global_step
            write_event(path, "start", step=state.global_step, total=state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            now = time.monotonic()
            if now - self.last_write < min_interval_s and state.global_step < state.max_steps:
                return
            self.last_write = now
            done = state.global_step - self.start_step
            eta = (state.max_steps - state.global_step) * (now - self.started) / done if done > 0 else None
            write_event(
                path,
                "step",
                step=state.global_step,
                total=state.max_steps,
                eta_s=round(eta, 1) if eta is not None else None,
            )

        def on_log(self, args, state, control, logs=None, **kwargs):
            values = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            if values and not any(k.startswith("eval_") for k in values):
                write_event(path, "log", step=state.global_step, **values)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            values = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
            write_event(path, "eval", step=state.global_step, **values)

        def on_save(self, args, state, control, **kwargs):
            write_event(path, "checkpoint", step=state.global_step)

    return ProgressCallback()
