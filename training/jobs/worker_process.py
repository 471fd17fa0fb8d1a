"""A job's worker process as the runner controls it: started in its own process group with its log, signalled
(SIGTERM, then SIGKILL after a grace period), and the state file that outlives it.

    worker = start_worker(command, job_dir, worker_env("cuda:0", {}), note="attempt 1")
    worker.cancel(grace_s=10.0)      # SIGTERM the group now; `returncode` sends SIGKILL once the grace is over
    worker.returncode()              # None while it runs
    write_state(job_dir, {"attempt": 1, "pid": worker.pid})

The worker leads its own process group (``start_new_session``), so a signal reaches everything it started
(``accelerate launch`` and its ranks), and a crash or kill of the worker never touches the process that runs
the runner. ``DATA_DIR/jobs/JOB_ID/state.json`` keeps the attempt, effective params and worker pid across
restarts of that process; ``worker.log`` is the worker's stdout and stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from training.jobs.launch import format_command

STATE_FILE = "state.json"
LOG_FILE = "worker.log"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Worker:
    """A worker process this process started, and the log file it writes to."""

    process: subprocess.Popen
    log_file: IO[bytes]
    kill_at: float | None = None  # SIGKILL after this monotonic time (set when SIGTERM was sent)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def cancelling(self) -> bool:
        return self.kill_at is not None

    def cancel(self, grace_s: float) -> None:
        """SIGTERM its process group; `returncode` sends SIGKILL if it is still there after `grace_s`."""
        signal_group(self.pid, signal.SIGTERM)
        self.kill_at = time.monotonic() + grace_s

    def returncode(self) -> int | None:
        """Its exit code once it has ended (its log then closed); None while it runs."""
        returncode = self.process.poll()
        if returncode is None:
            if self.kill_at is not None and time.monotonic() >= self.kill_at:
                signal_group(self.pid, signal.SIGKILL)
            return None
        self.log_file.close()
        return returncode

    def stop(self, grace_s: float) -> None:
        """Stop it and wait until it is gone (SIGTERM, SIGKILL after `grace_s`); its log closed."""
        stop_group(self.pid, grace_s, process=self.process)
        self.log_file.close()


def start_worker(command: list[str], job_dir: Path, env: dict[str, str], *, note: str) -> Worker:
    """Start `command` in a new process group, appending its output to ``JOB_DIR/worker.log`` after a
    ``--- note`` line and the command itself."""
    log_file = (job_dir / LOG_FILE).open("ab")
    log_file.write(f"--- {note}\n".encode())
    log_file.write(f"$ {format_command(command)}\n".encode())
    log_file.flush()
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=PROJECT_ROOT,
        env=env,
        start_new_session=True,  # its own process group: signals reach all it starts, and only that
    )
    return Worker(process, log_file)


def worker_env(device: str, extra: dict[str, str]) -> dict[str, str]:
    """This process's environment plus `extra`, with the project importable and only `device` visible."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = device.removeprefix("cuda:")
    return env


# ----- the state file ----------------------------------------------------------------------------------


def read_state(job_dir: Path) -> dict[str, Any]:
    """``state.json`` of a job; empty when there is none (or it cannot be read)."""
    try:
        return json.loads((job_dir / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def write_state(job_dir: Path, state: dict[str, Any]) -> None:
    """Replace ``state.json`` of a job (written beside it, then renamed: never half written)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    tmp = job_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, job_dir / STATE_FILE)


# ----- processes and their groups ------------------------------------------------------------------------


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # the worker leads its own group: its pid is the group id


def is_worker(pid: int, job_id: str) -> bool:
    """Whether `pid` is still the worker of `job_id` (not a recycled pid), where /proc can tell."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return alive(pid)
    return job_id in cmdline


def stop_group(
    pid: int, grace_s: float, *, process: subprocess.Popen | None = None, only_if: str | None = None
) -> None:
    """SIGTERM the process group of `pid`, then SIGKILL it if it is still there after `grace_s`. `process`
    is our own `Popen` of it (waited on); without it (a worker a previous process started), `only_if` names
    the job whose worker it must still be."""
    if only_if is not None and not is_worker(pid, only_if):
        return
    signal_group(pid, signal.SIGTERM)
    if process is not None:
        try:
            process.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            signal_group(pid, signal.SIGKILL)
            process.wait(timeout=30)
            return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.05)
    if alive(pid):
        signal_group(pid, signal.SIGKILL)
