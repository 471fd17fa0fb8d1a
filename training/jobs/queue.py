"""The job queue: training jobs persisted in the store's jobs table, oldest first, one at a time per device.

    queue = JobQueue(store)
    job = queue.submit(JobSpec(stage="sft", method="lora", data="feedback", name="helpful", base="./demo"))
    queue.cancel(job.id)          # a running job's worker is stopped by the runner that follows it

A prompt stage (ppo, rloo, grpo) that names no ``params.reward_model`` is scored by the newest registered
reward model, written into its params; with none registered it is refused, naming that field. A reward
model whose recorded held-out accuracy is below 0.6 is refused too (`training.reward_check`), unless
``params.allow_weak_reward_model`` is true.

A job row keeps the whole spec in ``params`` (stage and method also have columns). Cancelling only marks
the job: the runner that runs it sees the mark on its next poll and stops the worker's process group, so
a cancel works from the API, the UI or `tunehub jobs cancel` in another process alike.
"""

from __future__ import annotations

import dataclasses

from feedback.errors import Conflict, Invalid
from feedback.records import JOB_FINISHED, Job
from training.jobs.publish import newest_reward_model, resolve_parent
from training.jobs.spec import STAGES, JobError, JobSpec, check_spec
from training.reward_check import check_reward_model


def job_spec(job: Job) -> JobSpec:
    return JobSpec.from_dict(job.params)


def with_reward_model(store, spec: JobSpec) -> JobSpec:
    """`spec` with the newest registered reward model in ``params.reward_model`` when it is a prompt stage
    that names none; raises `JobError` when there is none to take, or when the reward model's held-out
    accuracy is below the bar and ``params.allow_weak_reward_model`` is not set."""
    if STAGES[spec.stage][2] != "prompts":
        return spec
    if not spec.params.get("reward_model"):
        spec = _newest_reward_model(store, spec)
    try:
        check_reward_model(
            spec.params["reward_model"], allow_weak=bool(spec.params.get("allow_weak_reward_model"))
        )
    except Invalid as e:
        raise JobError(e.message, "params.reward_model") from None
    return spec


def _newest_reward_model(store, spec: JobSpec) -> JobSpec:
    reward = newest_reward_model(store)
    if reward is None:
        raise JobError(
            f"stage {spec.stage!r} scores its answers with a reward model, and none is registered: train one "
            "first (stage 'reward', on the votes' pairs) or give params.reward_model (a directory)",
            "params.reward_model",
        )
    return dataclasses.replace(spec, params={**spec.params, "reward_model": reward.path})


class JobQueue:
    def __init__(self, store) -> None:
        self.store = store

    def submit(self, spec: JobSpec) -> Job:
        """Check the spec (raises `JobError` naming the bad field) and queue it; the parent is pinned to
        the version that exists now."""
        spec = with_reward_model(self.store, check_spec(spec))
        parent_ref, parent_path = resolve_parent(self.store, spec.parent)
        spec = dataclasses.replace(spec, parent=parent_ref or parent_path)
        return self.store.create_job(spec.stage, spec.method, params=spec.to_dict())

    def get(self, job_id: str) -> Job:
        return self.store.get_job(job_id)

    def list(self, *, status: str | None = None, limit: int = 100) -> list[Job]:
        return self.store.list_jobs(status=status, limit=limit)

    def queued(self) -> list[Job]:
        """Jobs waiting for the hub's runner, oldest first (`tunehub train` runs its own)."""
        jobs = reversed(self.store.list_jobs(status="queued", limit=10_000))
        return [job for job in jobs if not job_spec(job).foreground]

    def cancel(self, job_id: str) -> Job:
        """Mark a queued or running job cancelled; raises `Conflict` for a finished one."""
        job = self.store.get_job(job_id)
        if job.status in JOB_FINISHED:
            raise Conflict(f"job {job_id!r} already {job.status}; there is nothing to cancel")
        return self.store.update_job(job_id, status="cancelled", error="cancelled on request")
