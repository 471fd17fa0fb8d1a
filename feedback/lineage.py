"""The store's training lineage: dataset snapshots, training jobs and adapter versions.

A snapshot records the votes it was built from; a job records its snapshot; an adapter records its job,
snapshot and parent adapter. So every adapter can say which votes trained it (:meth:`adapter_vote_ids`),
and every vote which adapters it trained (:meth:`vote_adapters`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlite_utils import Database

from feedback.connections import StoreConnections, new_id
from feedback.errors import Conflict, Invalid, NotFound
from feedback.records import (
    ADAPTER_STATUSES,
    JOB_FINISHED,
    JOB_STATUSES,
    Adapter,
    DatasetSnapshot,
    Job,
    utc_now,
)
from feedback.validation import canonical_json, check_choice, check_name, check_optional_text, check_text


def dataset_from_row(row: dict[str, Any]) -> DatasetSnapshot:
    return DatasetSnapshot(
        id=row["id"],
        kind=row["kind"],
        format=row["format"],
        source=row["source"],
        content_hash=row["content_hash"],
        vote_ids=tuple(json.loads(row["vote_ids"])),
        n_rows=row["n_rows"],
        n_train=row["n_train"],
        n_eval=row["n_eval"],
        path=row["path"],
        params=json.loads(row["params"]) if row["params"] else {},
        created_at=row["created_at"],
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


def adapter_from_row(row: dict[str, Any]) -> Adapter:
    return Adapter(
        id=row["id"],
        name=row["name"],
        version=row["version"],
        base=row["base"],
        method=row["method"],
        parent=row["parent"],
        job_id=row["job_id"],
        dataset_id=row["dataset_id"],
        metrics=json.loads(row["metrics"]),
        status=row["status"],
        path=row["path"],
        created_at=row["created_at"],
    )


def _check_object(value: object, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(f"{param} must be a JSON object, got {value!r:.80}", param=param)
    return value


def _require(db: Database, table: str, id: str | None, param: str) -> None:
    if id is not None and not db.execute(f"SELECT 1 FROM {table} WHERE id = ?", [id]).fetchone():
        raise NotFound(f"{param} {id!r} not found", param=param)


def _one(rows: Iterable[dict[str, Any]], what: str, param: str) -> dict[str, Any]:
    found = list(rows)
    if not found:
        raise NotFound(f"{what} not found", param=param)
    return found[0]


class LineageMethods(StoreConnections):
    """Dataset snapshots, jobs and adapters (mixed into :class:`~feedback.store.Store`)."""

    # -- dataset snapshots ------------------------------------------------------------------------

    def add_dataset(
        self,
        *,
        kind: str,
        format: str,
        content_hash: str,
        n_rows: int,
        vote_ids: Iterable[int] = (),
        n_train: int | None = None,
        n_eval: int = 0,
        path: str | None = None,
        source: str = "export",
        params: dict[str, Any] | None = None,
    ) -> DatasetSnapshot:
        """Record a dataset snapshot: its kind (sft, pairs, kto, prompts), format, content hash, size,
        where it was written and the ids of the votes it holds. Exports and imports call this."""
        row = {
            "id": new_id("ds"),
            "kind": check_text(kind, "kind", max_chars=50),
            "format": check_text(format, "format", max_chars=50),
            "source": check_choice(source, ("export", "import"), "source"),
            "content_hash": check_text(content_hash, "content_hash", max_chars=128),
            "vote_ids": json.dumps(sorted(set(vote_ids))),
            "n_rows": n_rows,
            "n_train": n_rows - n_eval if n_train is None else n_train,
            "n_eval": n_eval,
            "path": path,
            "params": canonical_json(_check_object(params, "params")),
            "created_at": utc_now(),
        }
        with self._write() as db:
            db["datasets"].insert(row)
        return dataset_from_row(row)

    def get_dataset(self, id: str) -> DatasetSnapshot:
        """The snapshot ``id``; raises ``NotFound`` if there is none."""
        rows = self._read().query("SELECT * FROM datasets WHERE id = ?", [id])
        return dataset_from_row(_one(rows, f"dataset {id!r}", "dataset_id"))

    def list_datasets(self, *, kind: str | None = None, limit: int = 100) -> list[DatasetSnapshot]:
        """Snapshots newest first; only one kind if given."""
        where, params = ("WHERE kind = ?", [kind]) if kind is not None else ("", [])
        sql = f"SELECT * FROM datasets {where} ORDER BY created_at DESC, rowid DESC LIMIT ?"
        return [dataset_from_row(row) for row in self._read().query(sql, [*params, limit])]

    # -- jobs -------------------------------------------------------------------------------------

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
            "params": canonical_json(_check_object(params, "params")),
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
            _require(db, "datasets", dataset_id, "dataset_id")
            db["jobs"].insert(row)
        return job_from_row(row)

    def get_job(self, id: str) -> Job:
        """The job ``id``; raises ``NotFound`` if there is none."""
        return job_from_row(
            _one(self._read().query("SELECT * FROM jobs WHERE id = ?", [id]), f"job {id!r}", "job_id")
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
            changes["metrics"] = canonical_json(_check_object(metrics, "metrics"))
        if log_path is not None:
            changes["log_path"] = log_path
        if adapter is not None:
            changes["adapter"] = check_name(adapter, "adapter")
        with self._write() as db:
            if dataset_id is not None:
                _require(db, "datasets", dataset_id, "dataset_id")
                changes["dataset_id"] = dataset_id
            current = _one(db.query("SELECT * FROM jobs WHERE id = ?", [id]), f"job {id!r}", "job_id")
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
            row = _one(db.query("SELECT * FROM jobs WHERE id = ?", [id]), f"job {id!r}", "job_id")
        return job_from_row(row)

    # -- adapters ---------------------------------------------------------------------------------

    def add_adapter(
        self,
        name: str,
        *,
        base: str,
        method: str,
        path: str,
        parent: str | None = None,
        job_id: str | None = None,
        dataset_id: str | None = None,
        metrics: dict[str, Any] | None = None,
        status: str = "candidate",
    ) -> Adapter:
        """Register the next version of adapter ``name`` (1 for a new name). ``parent`` is the
        ``name@version`` of the adapter it was trained from, if any."""
        check_name(name, "name")
        row = {
            "name": name,
            "base": check_text(base, "base", max_chars=500),
            "method": check_text(method, "method", max_chars=50),
            "parent": parent,
            "job_id": job_id,
            "dataset_id": dataset_id,
            "metrics": canonical_json(_check_object(metrics, "metrics")),
            "status": check_choice(status, ADAPTER_STATUSES, "status"),
            "path": check_text(path, "path", max_chars=4096),
            "created_at": utc_now(),
        }
        with self._write() as db:
            _require(db, "jobs", job_id, "job_id")
            _require(db, "datasets", dataset_id, "dataset_id")
            if parent is not None:
                parent_name, _, parent_version = parent.rpartition("@")
                found = db.execute(
                    "SELECT 1 FROM adapters WHERE name = ? AND version = ?", [parent_name, parent_version]
                ).fetchone()
                if not found:
                    raise NotFound(
                        f"parent adapter {parent!r} not found; give it as name@version", param="parent"
                    )
            (latest,) = db.execute("SELECT max(version) FROM adapters WHERE name = ?", [name]).fetchone()
            row["version"] = (latest or 0) + 1
            row["id"] = db["adapters"].insert(row).last_pk
        return adapter_from_row(row)

    def get_adapter(self, name: str, version: int | None = None) -> Adapter:
        """Adapter ``name`` at ``version`` (the latest if None); raises ``NotFound``."""
        if version is None:
            sql, params = "SELECT * FROM adapters WHERE name = ? ORDER BY version DESC LIMIT 1", [name]
        else:
            sql, params = "SELECT * FROM adapters WHERE name = ? AND version = ?", [name, version]
        what = f"adapter {name!r}" + (f" version {version}" if version is not None else "")
        return adapter_from_row(_one(self._read().query(sql, params), what, "adapter"))

    def list_adapters(self, *, name: str | None = None, status: str | None = None) -> list[Adapter]:
        """Adapters by name then version, filtered by name and/or status."""
        clauses, params = [], []
        if name is not None:
            clauses.append("name = ?")
            params.append(name)
        if status is not None:
            clauses.append("status = ?")
            params.append(check_choice(status, ADAPTER_STATUSES, "status"))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return [
            adapter_from_row(r)
            for r in self._read().query(f"SELECT * FROM adapters {where} ORDER BY name, version", params)
        ]

    def set_adapter_status(self, name: str, version: int, status: str) -> Adapter:
        """Mark an adapter version candidate, promoted or retired; returns it."""
        check_choice(status, ADAPTER_STATUSES, "status")
        with self._write() as db:
            cursor = db.execute(
                "UPDATE adapters SET status = ? WHERE name = ? AND version = ?", [status, name, version]
            )
            if cursor.rowcount == 0:
                raise NotFound(f"adapter {name!r} version {version} not found", param="adapter")
        return self.get_adapter(name, version)

    def adapter_vote_ids(self, name: str, version: int | None = None) -> tuple[int, ...]:
        """Ids of the votes that trained an adapter version: its dataset's, or its job's dataset's."""
        adapter = self.get_adapter(name, version)
        dataset_id = adapter.dataset_id
        if dataset_id is None and adapter.job_id is not None:
            dataset_id = self.get_job(adapter.job_id).dataset_id
        return self.get_dataset(dataset_id).vote_ids if dataset_id is not None else ()

    def vote_adapters(self, vote_id: int) -> list[Adapter]:
        """The adapter versions a vote trained: those whose dataset snapshot (their own, or their job's)
        holds the vote, oldest first. Raises ``NotFound`` for an unknown vote."""
        db = self._read()
        if not db.execute("SELECT 1 FROM votes WHERE id = ?", [vote_id]).fetchone():
            raise NotFound(f"vote {vote_id!r} not found", param="vote_id")
        sql = """
            WITH snapshots AS (
                SELECT datasets.id FROM datasets, json_each(datasets.vote_ids) AS v WHERE v.value = ?
            )
            SELECT adapters.* FROM adapters LEFT JOIN jobs ON jobs.id = adapters.job_id
            WHERE adapters.dataset_id IN snapshots
               OR (adapters.dataset_id IS NULL AND jobs.dataset_id IN snapshots)
            ORDER BY adapters.id
        """
        return [adapter_from_row(row) for row in db.query(sql, [vote_id])]
