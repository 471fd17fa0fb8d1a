"""The job runner: a thread that starts queued jobs, each in its own worker process, and follows them.

    runner = JobRunner(store, data_dir, publish=load_into_engine)   # publish(adapter) -> served name
    runner.start()        # recovers jobs a previous process left running, then polls the queue
    runner.stop()         # stops the workers; their jobs stay "running" and resume at the next start

With `trigger=AutoTrigger(...)` each round also queues the stages whose automatic trigger fired. With
`replay=...` a chat adapter's last step, once it is live, is its regression replay (the hub passes
`PromotionService.replay`): the job succeeds with the replay's summary in its metrics, so the candidate's
answers beside the promoted model's are ready before anyone looks at it.

Each job gets ``DATA_DIR/jobs/JOB_ID/``: ``launch.json`` (what the worker runs), ``state.json`` (attempt,
effective params, worker pid), ``progress.jsonl``, ``worker.log`` and the worker's checkpoints. Starting,
signalling and stopping the worker process, and the state file, are `training.jobs.worker_process`; this
module decides what runs when, and what a job's end means.

`run_foreground` runs one job to its end in the calling thread (`tunehub train`) with the same code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from feedback.errors import Conflict, StoreError
from feedback.records import JOB_FINISHED, Adapter, Job
from training.jobs.faults import diagnose, log_tail, oom_retry
from training.jobs.launch import job_command
from training.jobs.progress import PROGRESS_FILE, ProgressReader, write_event
from training.jobs.publish import register_result, resolve_parent
from training.jobs.queue import JobQueue, job_spec
from training.jobs.spec import JobError, JobSpec, config_class
from training.jobs.trigger import AutoTrigger
from training.jobs.worker import LAUNCH_FILE
from training.jobs.worker_process import (
    LOG_FILE,
    Worker,
    alive,
    read_state,
    start_worker,
    stop_group,
    worker_env,
    write_state,
)

log = logging.getLogger("tunehub.jobs")

Publish = Callable[[Adapter], str]  # load a registered adapter into the engine; returns its served name
Replay = Callable[
    [Adapter], dict[str, Any]
]  # a live candidate's regression replay report (training/replay.py)


@dataclass
class _Running:
    """A worker process the runner follows."""

    job_id: str
    spec: JobSpec
    job_dir: Path
    worker: Worker
    reader: ProgressReader
    attempt: int
    params: dict[str, Any]
    parent_ref: str | None
    restarts: int = 0  # hub restarts it went through (each resumed it)
    written_at: float = 0.0
    written: tuple = field(default_factory=tuple)

    def counts(self) -> dict[str, int]:
        return {"attempt": self.attempt, "restarts": self.restarts}


class EngineLease(Protocol):
    """Lends the serving engines' GPU or cores to training: `acquire` before the first job starts (vLLM goes
    to sleep; local engines leave the job a core), `release` once the last one has ended and before its
    adapter is hot-loaded (vLLM wakes up; local engines take every core again)."""

    def acquire(self) -> None: ...

    def release(self) -> None: ...


class JobRunner:
    def __init__(
        self,
        store,
        data_dir: Path,
        *,
        publish: Publish | None = None,
        max_jobs_per_device: int = 1,
        poll_s: float = 0.5,
        grace_s: float = 10.0,
        worker_command: list[str] | None = None,
        env: dict[str, str] | None = None,
        trigger: AutoTrigger | None = None,
        engine_leases: Sequence[EngineLease] = (),
        replay: Replay | None = None,
    ) -> None:
        self.store = store
        self.queue = JobQueue(store)
        self.jobs_dir = Path(data_dir) / "jobs"
        self.adapters_dir = Path(data_dir) / "adapters"
        self.publish = publish
        self.max_jobs_per_device = max_jobs_per_device
        self.poll_s = poll_s
        self.grace_s = grace_s
        # a test's stand-in for the worker (one process); None: `job_command` (accelerate over N GPUs)
        self.worker_command = worker_command
        self.env = env or {}
        self.trigger = trigger  # the automatic trigger (training/jobs/trigger.py); None: off
        self.engine_leases = tuple(engine_leases)  # none: the engines keep what they hold while jobs run
        self.replay = replay  # None: no replay when a job ends (the Adapters tab or API can run one)
        self._engine_lent = False
        self._running: dict[str, _Running] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----- the thread --------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tunehub-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the loop and its workers; jobs it was running stay "running" and resume at the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        try:
            self.recover()
        except Exception:
            log.exception("recovering jobs left running failed")
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # the runner keeps running whatever one job does
                log.exception("job runner step failed")
            self._stop.wait(self.poll_s)
        for running in list(self._running.values()):
            self._interrupt(running)
        self._return_engine()

    def step(self) -> None:
        """One round: follow every running worker, then start what the free devices can take."""
        for job_id, running in list(self._running.items()):
            if self._poll(running):
                del self._running[job_id]
        if self.trigger is not None:
            try:
                self.trigger.maybe_check()
            except Exception:  # a failed count must not stop the jobs already queued
                log.exception("auto-train check failed")
        busy = Counter(r.spec.device for r in self._running.values())
        for job in self.queue.queued():
            spec = job_spec(job)
            if busy[spec.device] >= self.max_jobs_per_device:
                continue
            self._lend_engine()
            running = self._launch(job)
            if running is not None:
                self._running[job.id] = running
                busy[spec.device] += 1
        if not self._running:
            self._return_engine()  # also when a launch failed before its worker started

    def _lend_engine(self) -> None:
        if self._engine_lent:
            return
        self._engine_lent = True
        for lease in self.engine_leases:
            try:
                lease.acquire()
            except Exception:  # the job may still fit beside the engine; if not, it fails and says why
                log.exception("lending the serving engine's %s to training failed", type(lease).__name__)

    def _return_engine(self) -> None:
        if not self._engine_lent:
            return
        self._engine_lent = False
        for lease in reversed(self.engine_leases):
            try:
                lease.release()
            except Exception:
                log.exception(
                    "taking back the serving engine's %s after training failed", type(lease).__name__
                )

    # ----- after a restart ---------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Jobs left "running" by a process that is gone: stop any worker still alive, then queue them
        to resume from their last checkpoint (a `tunehub train` job fails: its terminal is gone; a job whose
        adapter was already served, stopped during its replay, succeeds without it)."""
        recovered = []
        for job in self.store.list_jobs(status="running", limit=10_000):
            if job.id in self._running:
                continue
            job_dir = self.jobs_dir / job.id
            state = read_state(job_dir)
            owner = state.get("owner_pid")
            if owner and owner != os.getpid() and alive(owner):
                continue  # another process (a `tunehub train`, another hub) is running it
            if state.get("pid"):
                stop_group(state["pid"], self.grace_s, only_if=job.id)
            if job.adapter:  # trained, registered and served: the hub stopped during its replay
                replay = {"error": "the hub stopped during the replay; replay it from the Adapters tab"}
                self._update(
                    job.id, status="succeeded", progress=1.0, metrics={**job.metrics, "replay": replay}
                )
                continue
            if job_spec(job).foreground:
                self._update(
                    job.id,
                    status="failed",
                    error=f"the `tunehub train` process (pid {owner}) ended before the job finished",
                )
                continue
            state["resume"] = True
            write_state(job_dir, state)
            metrics = {**job.metrics, "restarts": int(job.metrics.get("restarts", 0)) + 1}
            self._update(job.id, status="queued", metrics=metrics)
            log.info("job %s was running when the hub stopped; queued to resume", job.id)
            recovered.append(job.id)
        return recovered

    # ----- one job -------------------------------------------------------------------------------------

    def run_foreground(self, job_id: str, on_progress: Callable[[Any], None] | None = None) -> Job:
        """Run a queued job to its end in this thread (OOM retries included); Ctrl-C cancels it."""
        while True:
            job = self.store.get_job(job_id)
            if job.status in JOB_FINISHED:
                return job
            running = self._launch(job)
            if running is None:
                continue
            try:
                while not self._poll(running):
                    if on_progress is not None:
                        on_progress(running.reader.progress)
                    time.sleep(self.poll_s)
            except KeyboardInterrupt:
                self.queue.cancel(job_id)
                self._interrupt(running)
                raise

    def _launch(self, job: Job) -> _Running | None:
        spec = job_spec(job)
        job_dir = self.jobs_dir / job.id
        job_dir.mkdir(parents=True, exist_ok=True)
        state = read_state(job_dir)
        attempt = int(state.get("attempt", 1))
        params = state.get("params", spec.params)
        try:
            parent_ref, parent_path = resolve_parent(self.store, spec.parent)
        except JobError as e:
            self._update(job.id, status="failed", error=e.message)
            return None
        launch = {
            "job_id": job.id,
            "spec": spec.to_dict(),
            "params": params,
            "store": str(self.store.path),
            "parent_path": parent_path,
            "resume": bool(state.get("resume")),
            "attempt": attempt,
        }
        (job_dir / LAUNCH_FILE).write_text(json.dumps(launch, indent=2) + "\n")
        log_path = job_dir / LOG_FILE
        try:
            self.store.update_job(job.id, status="running", log_path=str(log_path))
        except Conflict:
            return None  # cancelled between the queue read and now
        write_event(job_dir / PROGRESS_FILE, "launch", attempt=attempt, resume=launch["resume"])
        if self.worker_command is not None:
            command = [*self.worker_command, str(job_dir)]
        else:
            command = job_command(spec, job_dir)
        note = f"attempt {attempt}{' (resuming)' if launch['resume'] else ''}"
        worker = start_worker(command, job_dir, worker_env(spec.device, self.env), note=note)
        write_state(
            job_dir,
            {**state, "attempt": attempt, "params": params, "pid": worker.pid, "owner_pid": os.getpid()},
        )
        log.info(
            "job %s (%s %s) started: pid %d, attempt %d",
            job.id,
            spec.stage,
            spec.method,
            worker.pid,
            attempt,
        )
        reader = ProgressReader(job_dir / PROGRESS_FILE)
        restarts = int(job.metrics.get("restarts", 0))
        return _Running(job.id, spec, job_dir, worker, reader, attempt, params, parent_ref, restarts)

    def _poll(self, running: _Running) -> bool:
        """Follow one worker: progress into the store, cancels into signals. True once it is over."""
        progress = running.reader.read()
        now = time.monotonic()
        snapshot = (progress.step, progress.loss, progress.checkpoint_step, progress.dataset_id)
        if snapshot != running.written and now - running.written_at >= 1.0:
            running.written, running.written_at = snapshot, now
            with contextlib.suppress(Conflict):  # cancelled meanwhile: handled below
                self.store.update_job(
                    running.job_id,
                    progress=min(progress.fraction, 0.99),
                    metrics={**progress.live_metrics(), **running.counts()},
                    dataset_id=progress.dataset_id,
                )
        job = self.store.get_job(running.job_id)
        if job.status == "cancelled" and not running.worker.cancelling:
            log.info("job %s cancelled: stopping pid %d", running.job_id, running.worker.pid)
            running.worker.cancel(self.grace_s)
        returncode = running.worker.returncode()
        if returncode is None:
            return False
        if list(self._running) == [running.job_id]:
            self._return_engine()  # the last job on the engine's GPU: wake it before the hot-load
        self._finish(running, returncode, job)
        return True

    def _finish(self, running: _Running, returncode: int, job: Job) -> None:
        progress = running.reader.read()
        if job.status == "cancelled":
            log.info("job %s cancelled", running.job_id)
            return
        if returncode == 0 and progress.done is not None:
            self._succeed(running, progress)
            return
        fault = diagnose(returncode, progress.error, log_tail(running.job_dir / LOG_FILE))
        defaults = _defaults(running.spec.stage)
        retry = oom_retry(fault, attempt=running.attempt, params=running.params, defaults=defaults)
        metrics = {**progress.live_metrics(), **running.counts()}
        if retry is not None:
            state = read_state(running.job_dir)
            write_state(
                running.job_dir, {**state, "attempt": running.attempt + 1, "params": retry, "resume": False}
            )
            metrics["oom_retry"] = {
                "per_device_batch_size": retry["per_device_batch_size"],
                "gradient_accumulation_steps": retry["gradient_accumulation_steps"],
                "error": fault.message[:500],
            }
            log.warning("job %s ran out of memory; retrying with half the batch", running.job_id)
            self._update(running.job_id, status="queued", metrics=metrics)
            return
        log.warning("job %s failed: %s", running.job_id, fault.message.splitlines()[0])
        self._update(running.job_id, status="failed", error=fault.message, metrics=metrics)

    def _succeed(self, running: _Running, progress) -> None:
        output = Path(progress.done["output"])
        try:
            adapter = register_result(
                self.store,
                running.job_id,
                running.spec,
                output,
                self.adapters_dir,
                parent_ref=running.parent_ref,
                dataset_id=progress.dataset_id,
            )
        except (OSError, StoreError, KeyError, ValueError) as e:
            self._update(
                running.job_id, status="failed", error=f"the trained result could not be registered: {e}"
            )
            return
        metrics = {
            **(progress.done.get("metrics") or {}),
            **running.counts(),
            "adapter_ref": adapter.ref,
            "adapter_path": adapter.path,
        }
        served = None
        if running.spec.trains_chat_adapter and self.publish is not None:
            try:
                served = self.publish(adapter)
            except Exception as e:
                self._update(
                    running.job_id,
                    status="failed",
                    metrics=metrics,
                    error=f"trained and registered as {adapter.ref} ({adapter.path}), but loading it into "
                    f"the engine failed: {e}",
                )
                return
        if served is not None and self.replay is not None:
            self._update(running.job_id, adapter=served)  # it answers already; the replay comes last
            metrics["replay"] = self._replay(running, adapter)
        log.info(
            "job %s succeeded: %s at %s, served as %s", running.job_id, adapter.ref, adapter.path, served
        )
        self._update(
            running.job_id,
            status="succeeded",
            progress=1.0,
            metrics=metrics,
            adapter=served,
            dataset_id=adapter.dataset_id,
        )

    def _replay(self, running: _Running, adapter: Adapter) -> dict[str, Any]:
        """The live candidate's replay, summarised for the job's metrics (per model: accuracy, KL, reward, and
        perplexity on the held-out text where the replay set has one);
        a replay that fails is recorded as an error, and the job still succeeds: its adapter is live."""
        with (running.job_dir / LOG_FILE).open("a") as log_file:
            log_file.write(f"--- regression replay of {adapter.ref}\n")
            started = time.monotonic()
            try:
                report = self.replay(adapter)
            except Exception as e:  # noqa: BLE001 - the adapter is trained and live whatever the replay does
                log.warning("the replay of %s failed: %s", adapter.ref, e)
                log_file.write(f"replay failed: {type(e).__name__}: {e}\n")
                return {"error": f"{type(e).__name__}: {e}"[:2000]}
            seconds = round(time.monotonic() - started, 2)
            summary = {
                "against": report.get("against"),
                "seconds": seconds,
                **{side: _replay_side(report.get(side) or {}) for side in ("candidate", "incumbent")},
            }
            log_file.write(f"replay: {json.dumps(summary)}\n")
        return summary

    def _interrupt(self, running: _Running) -> None:
        """Stop a worker because this process is stopping: its job stays "running", to resume later."""
        running.worker.stop(self.grace_s)
        state = read_state(running.job_dir)
        write_state(running.job_dir, {**state, "resume": True})

    def _update(self, job_id: str, **changes) -> None:
        with contextlib.suppress(Conflict):  # cancelled meanwhile: the cancel stands
            self.store.update_job(job_id, **changes)


# ----- helpers -----------------------------------------------------------------------------------------


def _replay_side(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        key: summary.get(key) for key in ("name", "accuracy", "kl", "reward", "perplexity") if key in summary
    }


def _defaults(stage: str) -> dict[str, Any]:
    import dataclasses

    return {f.name: f.default for f in dataclasses.fields(config_class(stage))}
