"""The store's training jobs: a queue of stage runs with their status, progress, metrics and error.

A job is queued, runs, and ends succeeded, failed or cancelled; a finished job only moves back to queued (a
resume). It records the dataset snapshot it trained on and the served name of its adapter
(:mod:`feedback.lineage` links adapters back to their job). The runner that works through the queue is
`training.jobs.runner`.

    job = store.create_job("sft", "lora", params={"name": "km"})
    store.update_job(job.id, status="running")
    store.list_jobs(status="running")
"""

from __future__ import annotations

import json
from typing import Any

from feedback.connections import StoreConnections, new_id
from feedback.errors import Conflict, Invalid
from feedback.lookups import one_row, require_row
from feedback.records import JOB_FINISHED, JOB_STATUSES, Job, utc_now
from feedback.validation import (
    canonical_json,
    check_choice,
    check_name,
    check_object,
    check_optional_text,
    check_text,
)


def job_from_row(row: dict[str, Any]) -> Job:
    return Job(
        id=row["id"],
        stage=row["stage"],
        method=row["method"],
        status=row["status"],
        progress=row["progress"],
        params=json.loads(row["params"]),
        metrics=json.loads(row["metrics"]),
        error=row["error"],
        dataset_id=row["dataset_id"],
        log_path=row["log_path"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        adapter=row.get("adapter"),
    )


class JobMethods(StoreConnections):
    """Training jobs (mixed into :class:`~feedback.store.Store`)."""

    def create_job(
        self,
        stage: str,
        method: str,
        *,
        params: dict[str, Any] | None = None,
        dataset_id: str | None = None,
        log_path: str | None = None,
    ) -> Job:
        """Queue a training job: ``stage`` is the training method (sft, reward, dpo, ...), ``method`` the
        tuning method (full, lora, ...), ``params`` its config as JSON."""
        row = {
            "id": new_id("job"),
            "stage": check_text(stage, "stage", max_chars=50),
            "method": check_text(method, "method", max_chars=50),
            "status": "queued",
            "progress": 0.0,
            "params": canonical_json(check_object(params, "params")),
            "metrics": "{}",
            "error": None,
            "dataset_id": dataset_id,
            "log_path": log_path,
            "created_at": utc_now(),
            "started_at": None,
            "finished_at": None,
            "adapter": None,
        }
        with self._write() as db:
            require_row(db, "datasets", dataset_id, "dataset_id")
            db["jobs"].insert(row)
        return job_from_row(row)

    def get_job(self, id: str) -> Job:
        """The job ``id``; raises ``NotFound`` if there is none."""
        return job_from_row(
            one_row(self._read().query("SELECT * FROM jobs WHERE id = ?", [id]), f"job {id!r}", "job_id")
        )

    def list_jobs(self, *, status: str | None = None, limit: int = 100) -> list[Job]:
        """Jobs newest first; only those with ``status`` if given."""
        where, params = (
            ("WHERE status = ?", [check_choice(status, JOB_STATUSES, "status")]) if status else ("", [])
        )
        sql = f"SELECT * FROM jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?"
        return [job_from_row(row) for row in self._read().query(sql, [*params, limit])]

    def update_job(
        self,
        id: str,
        *,
        status: str | None = None,
        progress: float | None = None,
        error: str | None = None,
        metrics: dict[str, Any] | None = None,
        log_path: str | None = None,
        dataset_id: str | None = None,
        adapter: str | None = None,
    ) -> Job:
        """Update a job's status, progress (0 to 1), error, metrics, log path, dataset snapshot or the served
        name of its adapter; returns the job.

        Moving to ``running`` stamps ``started_at``; to succeeded/failed/cancelled stamps ``finished_at``.
        A finished job only moves back to ``queued`` (resume); anything else raises ``Conflict``.
        """
        changes: dict[str, Any] = {}
        if status is not None:
            changes["status"] = check_choice(status, JOB_STATUSES, "status")
        if progress is not None:
            if isinstance(progress, bool) or not isinstance(progress, (int, float)) or not 0 <= progress <= 1:
                raise Invalid(f"progress must be a number from 0 to 1, got {progress!r}", param="progress")
            changes["progress"] = float(progress)
        if error is not None:
            changes["error"] = check_optional_text(error, "error", max_chars=20000)
        if metrics is not None:
            changes["metrics"] = canonical_json(check_object(metrics, "metrics"))
        if log_path is not None:
            changes["log_path"] = log_path
        if adapter is not None:
            changes["adapter"] = check_name(adapter, "adapter")
        with self._write() as db:
            if dataset_id is not None:
                require_row(db, "datasets", dataset_id, "dataset_id")
                changes["dataset_id"] = dataset_id
            current = one_row(db.query("SELECT * FROM jobs WHERE id = ?", [id]), f"job {id!r}", "job_id")
            if current["status"] in JOB_FINISHED and changes and changes.get("status") != "queued":
                raise Conflict(f"job {id!r} already {current['status']}; only a resume (queued) can follow")
            now = utc_now()
            if status == "running" and current["started_at"] is None:
                changes["started_at"] = now
            if status in JOB_FINISHED:
                changes["finished_at"] = now
            if status == "queued":
                changes["finished_at"] = None
            if changes:
                db["jobs"].update(id, changes)
            row = one_row(db.query("SELECT * FROM jobs WHERE id = ?", [id]), f"job {id!r}", "job_id")
        return job_from_row(row)
