"""The store's training lineage: dataset snapshots and adapter versions, and the votes behind them.

A snapshot records the votes it was built from; a job (:mod:`feedback.jobs`) records its snapshot; an
adapter records its job, snapshot and parent adapter. So every adapter can say which votes trained it
(:meth:`adapter_vote_ids`), and every vote which adapters it trained (:meth:`vote_adapters`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from feedback.connections import StoreConnections, new_id
from feedback.errors import NotFound
from feedback.lookups import one_row, require_row
from feedback.records import ADAPTER_STATUSES, Adapter, DatasetSnapshot, utc_now
from feedback.validation import canonical_json, check_choice, check_name, check_object, check_text


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


class LineageMethods(StoreConnections):
    """Dataset snapshots and adapters (mixed into :class:`~feedback.store.Store`)."""

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
            "params": canonical_json(check_object(params, "params")),
            "created_at": utc_now(),
        }
        with self._write() as db:
            db["datasets"].insert(row)
        return dataset_from_row(row)

    def get_dataset(self, id: str) -> DatasetSnapshot:
        """The snapshot ``id``; raises ``NotFound`` if there is none."""
        rows = self._read().query("SELECT * FROM datasets WHERE id = ?", [id])
        return dataset_from_row(one_row(rows, f"dataset {id!r}", "dataset_id"))

    def list_datasets(self, *, kind: str | None = None, limit: int = 100) -> list[DatasetSnapshot]:
        """Snapshots newest first; only one kind if given."""
        where, params = ("WHERE kind = ?", [kind]) if kind is not None else ("", [])
        sql = f"SELECT * FROM datasets {where} ORDER BY created_at DESC, rowid DESC LIMIT ?"
        return [dataset_from_row(row) for row in self._read().query(sql, [*params, limit])]

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
            "metrics": canonical_json(check_object(metrics, "metrics")),
            "status": check_choice(status, ADAPTER_STATUSES, "status"),
            "path": check_text(path, "path", max_chars=4096),
            "created_at": utc_now(),
        }
        with self._write() as db:
            require_row(db, "jobs", job_id, "job_id")
            require_row(db, "datasets", dataset_id, "dataset_id")
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
        return adapter_from_row(one_row(self._read().query(sql, params), what, "adapter"))

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
            dataset_id = self.get_job(adapter.job_id).dataset_id  # type: ignore[attr-defined]  # JobMethods
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
