"""Why a job's worker failed, in words, and whether an out-of-memory failure earns a retry.

The worker exits with a code that says what it caught (`EXIT_*`) and writes an "error" event; a worker that
was killed leaves neither, so the signal in its exit status and the end of its log say what happened.

    fault = diagnose(returncode, progress.error, log_tail(job_dir / "worker.log"))
    retry = oom_retry(fault, attempt=1, params=params, defaults={"per_device_batch_size": 8, ...})
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_FAILED = 1  # training stopped with advice, or an unexpected error
EXIT_INVALID = 2  # the data or settings were refused before training
EXIT_OOM = 3  # out of memory (CUDA or host)
OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError", "MemoryError", "out of memory")
MAX_ATTEMPTS = 2  # an OOM retries once


@dataclass(frozen=True)
class Fault:
    """``kind``: invalid, training, oom, signal or crash; ``message`` is what the job's ``error`` says."""

    kind: str
    message: str


def log_tail(path: Path, lines: int = 15, max_chars: int = 4000) -> str:
    """The last lines of a log (what a user needs to see why a process died)."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 64_000))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])[-max_chars:]


def diagnose(returncode: int, error: dict[str, Any] | None, tail: str) -> Fault:
    """The fault behind a worker's non-zero exit, from its exit code, its last error event and its log."""
    if returncode < 0:
        name = _signal_name(-returncode)
        hint = (
            " (killed from outside: by hand, or by the kernel's out-of-memory killer; `dmesg` tells which)"
            if -returncode == signal.SIGKILL
            else ""
        )
        return Fault("signal", f"the training process was killed by {name}{hint}; nothing was saved")
    if error is not None and error.get("message"):
        kind = error.get("kind") or "crash"
        if returncode == EXIT_OOM or kind == "oom":
            kind = "oom"
        return Fault(kind, str(error["message"]))
    if returncode == EXIT_OOM or any(marker in tail for marker in OOM_MARKERS):
        return Fault("oom", f"out of memory; the log ends:\n{tail}")
    return Fault("crash", f"the training process exited with code {returncode}; the log ends:\n{tail}")


def oom_retry(
    fault: Fault, *, attempt: int, params: dict[str, Any], defaults: dict[str, Any]
) -> dict[str, Any] | None:
    """The params of a retry after an out-of-memory failure (half the batch, twice the accumulation, so
    the effective batch stays the same), or None: not an OOM, already retried, or the batch is already 1."""
    if fault.kind != "oom" or attempt >= MAX_ATTEMPTS:
        return None
    batch = params.get("per_device_batch_size", defaults["per_device_batch_size"])
    accumulation = params.get("gradient_accumulation_steps", defaults["gradient_accumulation_steps"])
    if batch <= 1:
        return None
    return {**params, "per_device_batch_size": batch // 2, "gradient_accumulation_steps": accumulation * 2}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
