"""Named schema migrations for the feedback store, applied in order at start-up.

Each migration runs once per database file; the ``_migrations`` table records the names applied, so opening
an existing file again applies only what is new. Add a migration by appending a decorated function with the
next number; never edit one that has shipped.

    from feedback.schema.migrations import apply_migrations
    apply_migrations(db)      # db: sqlite_utils.Database on the writer connection
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations


class _TunehubMigrations(Migrations):
    migrations_table = "_migrations"


migrations = _TunehubMigrations("tunehub.feedback")


@migrations(name="0001_initial")
def initial(db: Database) -> None:
    db["raters"].create(
        {"name": str, "role": str, "password_hash": str, "created_at": str},
        pk="name",
        not_null=["role", "created_at"],
    )
    db["api_keys"].create(
        {"id": str, "rater": str, "label": str, "key_hash": str, "created_at": str, "revoked_at": str},
        pk="id",
        foreign_keys=[("rater", "raters", "name")],
        not_null=["rater", "key_hash", "created_at"],
    )
    db["api_keys"].create_index(["key_hash"], unique=True)
    db["conversations"].create(
        {"id": str, "title": str, "rater": str, "source": str, "created_at": str},
        pk="id",
        not_null=["source", "created_at"],
    )
    db["generations"].create(
        {
            "id": str,
            "conversation_id": str,
            "prompt": str,  # JSON list of chat messages
            "prompt_hash": str,  # sha256 of the canonical prompt JSON: "same context" checks, prompt dedupe
            "model": str,
            "text": str,
            "params": str,  # JSON sampling params
            "prompt_tokens": int,
            "completion_tokens": int,
            "latency_ms": float,
            "ttft_ms": float,
            "finish_reason": str,
            "source": str,
            "rater": str,
            "response_id": str,
            "choice_index": int,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("conversation_id", "conversations", "id")],
        not_null=["conversation_id", "prompt", "prompt_hash", "model", "text", "source", "created_at"],
    )
    db["generations"].create_index(["conversation_id"])
    db["generations"].create_index(["model"])
    db["votes"].create(
        {
            "id": int,
            "kind": str,
            "rater": str,
            "item_key": str,  # what a revote replaces: the generation, or the sorted ids voted on
            "generation_id": str,  # the first generation voted on (indexed, foreign key)
            "generation_ids": str,  # JSON list, ranked order for rankings
            "value": str,
            "ranking": str,  # JSON tiers, best first
            "edited_text": str,
            "tags": str,  # JSON list
            "comment": str,
            "conversation_id": str,
            "source": str,
            "created_at": str,
            "replaces": int,
            "active": int,
        },
        pk="id",
        foreign_keys=[
            ("generation_id", "generations", "id"),
            ("conversation_id", "conversations", "id"),
            ("replaces", "votes", "id"),
        ],
        not_null=["kind", "rater", "item_key", "generation_id", "generation_ids", "tags", "source"]
        + ["conversation_id", "created_at", "active"],
    )
    # One active vote per rater and item; replaced votes stay for lineage.
    db.execute("CREATE UNIQUE INDEX idx_votes_active_item ON votes (kind, rater, item_key) WHERE active = 1")
    db["votes"].create_index(["rater", "id"])
    db["votes"].create_index(["generation_id"])
    db["datasets"].create(
        {
            "id": str,
            "kind": str,
            "format": str,
            "source": str,
            "content_hash": str,
            "vote_ids": str,  # JSON list of vote ids whose rows the snapshot holds
            "n_rows": int,
            "n_train": int,
            "n_eval": int,
            "path": str,
            "params": str,
            "created_at": str,
        },
        pk="id",
        not_null=["kind", "format", "source", "content_hash", "vote_ids", "n_rows", "created_at"],
    )
    db["jobs"].create(
        {
            "id": str,
            "stage": str,
            "method": str,
            "status": str,
            "progress": float,
            "params": str,
            "metrics": str,
            "error": str,
            "dataset_id": str,
            "log_path": str,
            "created_at": str,
            "started_at": str,
            "finished_at": str,
        },
        pk="id",
        foreign_keys=[("dataset_id", "datasets", "id")],
        not_null=["stage", "method", "status", "progress", "params", "metrics", "created_at"],
    )
    db["jobs"].create_index(["status"])
    db["adapters"].create(
        {
            "id": int,
            "name": str,
            "version": int,
            "base": str,
            "method": str,
            "parent": str,  # "name@version" of the adapter it was trained from
            "job_id": str,
            "dataset_id": str,
            "metrics": str,
            "status": str,
            "path": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("job_id", "jobs", "id"), ("dataset_id", "datasets", "id")],
        not_null=["name", "version", "base", "method", "metrics", "status", "path", "created_at"],
    )
    db["adapters"].create_index(["name", "version"], unique=True)


@migrations(name="0002_pairwise_models")
def pairwise_models(db: Database) -> None:
    """The two models a pairwise vote compared, kept on the vote, so the leaderboard reads 100,000 votes
    from one covering index instead of joining every vote to two generations (bench/store.py)."""
    db.execute("ALTER TABLE votes ADD COLUMN model_a TEXT")
    db.execute("ALTER TABLE votes ADD COLUMN model_b TEXT")
    db.execute(
        "UPDATE votes SET "
        "model_a = (SELECT model FROM generations WHERE id = json_extract(votes.generation_ids, '$[0]')), "
        "model_b = (SELECT model FROM generations WHERE id = json_extract(votes.generation_ids, '$[1]')) "
        "WHERE kind = 'pairwise'"
    )
    db.execute(
        "CREATE INDEX idx_votes_pairwise ON votes (id, model_a, model_b, value) "
        "WHERE kind = 'pairwise' AND active = 1"
    )


@migrations(name="0003_job_adapter")
def job_adapter(db: Database) -> None:
    """The served model name of the adapter a job produced, once it is live (training/jobs)."""
    db.execute("ALTER TABLE jobs ADD COLUMN adapter TEXT")


@migrations(name="0004_promotions")
def promotions(db: Database) -> None:
    """Each promotion of an adapter version and the version it replaced, so a rollback can go back."""
    db["promotions"].create(
        {"id": int, "adapter_id": int, "previous_id": int, "action": str, "at": str},
        pk="id",
        foreign_keys=[("adapter_id", "adapters", "id"), ("previous_id", "adapters", "id")],
        not_null=["adapter_id", "action", "at"],
    )
    db["promotions"].create_index(["adapter_id"])


@migrations(name="0005_vote_withdrawn_at")
def vote_withdrawn_at(db: Database) -> None:
    """When a rater took a vote back (un-clicking a thumb): inactive like a replaced vote, but not replaced."""
    db.execute("ALTER TABLE votes ADD COLUMN withdrawn_at TEXT")


@migrations(name="0006_vote_triage")
def vote_triage(db: Database) -> None:
    """Triage at scale (issue 16): keyset pages of votes newest first, filtered by kind, rater, model or
    reason, read from indexes (GET /v1/feedback, the Data tab). A vote's models (of every answer it judged)
    and its reason keys (feedback/reasons.py) are kept beside it, each row with the vote's time, so a filter
    on either walks one index in page order instead of every vote's JSON."""
    from feedback.reasons import reason_key

    for facet in ("model", "reason"):
        db.execute(
            f"CREATE TABLE vote_{facet}s (vote_id INTEGER NOT NULL REFERENCES votes(id), {facet} TEXT NOT NULL, "
            f"created_at TEXT NOT NULL, PRIMARY KEY (vote_id, {facet})) WITHOUT ROWID"
        )
        db.execute(f"CREATE INDEX idx_vote_{facet}s_recent ON vote_{facet}s ({facet}, created_at, vote_id)")
    db.execute(
        "INSERT OR IGNORE INTO vote_models (vote_id, model, created_at) "
        "SELECT votes.id, generations.model, votes.created_at FROM votes, json_each(votes.generation_ids) AS j "
        "JOIN generations ON generations.id = j.value"
    )
    db.conn.create_function("tunehub_reason_key", 1, reason_key, deterministic=True)
    db.execute(
        "INSERT OR IGNORE INTO vote_reasons (vote_id, reason, created_at) "
        "SELECT votes.id, tunehub_reason_key(j.value), votes.created_at FROM votes, json_each(votes.tags) AS j "
        "WHERE tunehub_reason_key(j.value) != ''"
    )
    db.execute("CREATE INDEX idx_votes_recent ON votes (created_at, id)")
    db.execute("CREATE INDEX idx_votes_kind_recent ON votes (kind, created_at, id)")
    db.execute("CREATE INDEX idx_votes_rater_recent ON votes (rater, created_at, id)")
    # the leaderboard counts active pairwise votes per (model, model, outcome) in SQL: in this order the
    # GROUP BY streams through the index instead of sorting a million rows (bench/store.py: 1,000,000 votes)
    db.execute(
        "CREATE INDEX idx_votes_pairwise_cells ON votes (model_a, model_b, value) "
        "WHERE kind = 'pairwise' AND active = 1"
    )


def apply_migrations(db: Database) -> list[str]:
    """Apply every pending migration inside one ``BEGIN IMMEDIATE`` transaction; return the names applied.

    The immediate transaction takes the write lock first, so two processes opening the same new file at once
    (the server and a training job) apply the migrations once, one after the other.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        pending = [m.name for m in migrations.pending(db)]
        migrations.apply(db)
    except BaseException:
        db.rollback()
        raise
    db.commit()
    return pending


def applied_migrations(db: Database) -> list[str]:
    """Names of the migrations this database has applied, in order."""
    return [m.name for m in migrations.applied(db)]
