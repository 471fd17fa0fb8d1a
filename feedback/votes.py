"""The store's votes: thumbs, pairwise, rankings and edits, with replace-on-revote, and their counts.

A vote is about an item: one generation for thumbs and edits, the set of generations for pairwise votes
and rankings. When a rater votes again on the same item (same kind), the new vote replaces the old one:
the old row stays, marked inactive, so a dataset snapshot that used it keeps its lineage. A rater may also
withdraw an active vote (un-clicking a thumb): it becomes inactive with the time it was withdrawn. Nothing
else is ever changed after it is written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlite_utils import Database

from feedback.connections import StoreConnections
from feedback.errors import Conflict, Invalid, NotFound
from feedback.records import (
    PAIRWISE_OUTCOMES,
    SOURCES,
    THUMBS_VALUES,
    VOTE_KINDS,
    Comparison,
    Vote,
    VoteCounts,
    utc_now,
)
from feedback.validation import (
    check_choice,
    check_optional_text,
    check_ranking,
    check_tags,
    check_text,
)
from feedback.vote_search import write_facets

_VOTE_COLUMNS = (
    "kind, rater, item_key, generation_id, generation_ids, value, ranking, edited_text, tags, comment, "
    "conversation_id, source, created_at, replaces, active, model_a, model_b"
)


def vote_from_row(row: dict[str, Any]) -> Vote:
    ranking = json.loads(row["ranking"]) if row["ranking"] else None
    return Vote(
        id=row["id"],
        kind=row["kind"],
        rater=row["rater"],
        generation_ids=tuple(json.loads(row["generation_ids"])),
        value=row["value"],
        ranking=tuple(tuple(tier) for tier in ranking) if ranking is not None else None,
        edited_text=row["edited_text"],
        tags=tuple(json.loads(row["tags"])),
        comment=row["comment"],
        conversation_id=row["conversation_id"],
        source=row["source"],
        created_at=row["created_at"],
        replaces=row["replaces"],
        active=bool(row["active"]),
        withdrawn_at=row.get("withdrawn_at"),
    )


def _same_context(db: Database, ids: Sequence[str], param: str) -> dict[str, dict[str, Any]]:
    """Rows (id, prompt_hash, conversation_id, text, model) of ``ids``; NotFound for an unknown id, Invalid
    when they answer different prompts."""
    marks = ", ".join("?" for _ in ids)
    columns = ("id", "prompt_hash", "conversation_id", "text", "model")
    cursor = db.conn.execute(f"SELECT {', '.join(columns)} FROM generations WHERE id IN ({marks})", list(ids))
    rows = {row[0]: dict(zip(columns, row)) for row in cursor}
    for id in ids:
        if id not in rows:
            raise NotFound(f"generation {id!r} not found; vote on an id the hub returned", param=param)
    if len({rows[id]["prompt_hash"] for id in ids}) > 1:
        raise Invalid(
            f"{param}: generations {', '.join(map(repr, ids))} answer different prompts; "
            "compare answers to the same context",
            param=param,
        )
    return rows


class VoteMethods(StoreConnections):
    """Votes (mixed into :class:`~feedback.store.Store`)."""

    def add_thumbs(
        self,
        generation_id: str,
        value: str,
        *,
        rater: str,
        tags: Sequence[str] | None = None,
        comment: str | None = None,
        source: str = "ui",
    ) -> Vote:
        """Thumbs ``up`` or ``down`` on one generation, with optional reason tags and comment."""
        check_choice(value, THUMBS_VALUES, "value")
        tags_, comment_ = check_tags(tags), check_optional_text(comment, "comment")
        with self._write() as db:
            rows = _same_context(db, [generation_id], "generation_id")
            return self._insert_vote(
                db,
                "thumbs",
                rater,
                generation_id,
                [generation_id],
                value=value,
                tags=tags_,
                comment=comment_,
                conversation_id=rows[generation_id]["conversation_id"],
                source=source,
                answer_models=[rows[generation_id]["model"]],
            )

    def add_pairwise(
        self,
        generation_a: str,
        generation_b: str,
        outcome: str,
        *,
        rater: str,
        tags: Sequence[str] | None = None,
        comment: str | None = None,
        source: str = "ui",
    ) -> Vote:
        """A pairwise vote between two answers to the same prompt: ``a``, ``b``, ``tie`` or ``both_bad``.

        Voting again on the same two generations (in either order) replaces the rater's earlier vote.
        """
        check_choice(outcome, PAIRWISE_OUTCOMES, "outcome")
        if generation_a == generation_b:
            raise Invalid(
                f"generation_a and generation_b are both {generation_a!r}; compare two answers",
                param="generation_b",
            )
        tags_, comment_ = check_tags(tags), check_optional_text(comment, "comment")
        ids = [generation_a, generation_b]
        with self._write() as db:
            rows = _same_context(db, ids, "generation_ids")
            return self._insert_vote(
                db,
                "pairwise",
                rater,
                "|".join(sorted(ids)),
                ids,
                value=outcome,
                tags=tags_,
                comment=comment_,
                conversation_id=rows[generation_a]["conversation_id"],
                source=source,
                models=(rows[generation_a]["model"], rows[generation_b]["model"]),
                answer_models=[rows[id]["model"] for id in ids],
            )

    def add_ranking(
        self,
        ranking: Sequence[str | Sequence[str]],
        *,
        rater: str,
        tags: Sequence[str] | None = None,
        comment: str | None = None,
        source: str = "ui",
    ) -> Vote:
        """A ranking of 2 to 6 answers to one prompt, best first; a nested list marks answers tied.

        ``["g1", ["g2", "g3"], "g4"]``: g1 best, g2 and g3 tied, g4 worst. Ranking the same set of
        answers again replaces the rater's earlier ranking.
        """
        tiers = check_ranking(ranking)
        tags_, comment_ = check_tags(tags), check_optional_text(comment, "comment")
        ids = [id for tier in tiers for id in tier]
        with self._write() as db:
            rows = _same_context(db, ids, "ranking")
            return self._insert_vote(
                db,
                "ranking",
                rater,
                "|".join(sorted(ids)),
                ids,
                ranking=tiers,
                tags=tags_,
                comment=comment_,
                conversation_id=rows[ids[0]]["conversation_id"],
                source=source,
                answer_models=[rows[id]["model"] for id in ids],
            )

    def add_edit(
        self,
        generation_id: str,
        text: str,
        *,
        rater: str,
        tags: Sequence[str] | None = None,
        comment: str | None = None,
        source: str = "ui",
    ) -> Vote:
        """A rater's corrected answer; exports use it as an SFT example and as chosen over the original."""
        check_text(text, "text")
        tags_, comment_ = check_tags(tags), check_optional_text(comment, "comment")
        with self._write() as db:
            rows = _same_context(db, [generation_id], "generation_id")
            if rows[generation_id]["text"] == text:
                raise Invalid(
                    "the edited text equals the original answer; vote thumbs up instead", param="text"
                )
            return self._insert_vote(
                db,
                "edit",
                rater,
                generation_id,
                [generation_id],
                edited_text=text,
                tags=tags_,
                comment=comment_,
                conversation_id=rows[generation_id]["conversation_id"],
                source=source,
                answer_models=[rows[generation_id]["model"]],
            )

    def _insert_vote(
        self,
        db: Database,
        kind: str,
        rater: str,
        item_key: str,
        generation_ids: list[str],
        *,
        value: str | None = None,
        ranking: tuple[tuple[str, ...], ...] | None = None,
        edited_text: str | None = None,
        tags: tuple[str, ...],
        comment: str | None,
        conversation_id: str,
        source: str,
        models: tuple[str, str] | None = None,
        answer_models: Sequence[str] = (),
    ) -> Vote:
        check_text(rater, "rater", max_chars=200)
        check_choice(source, SOURCES, "source")
        # The hot path of every vote (bench/store.py): plain sqlite3 calls, one statement to retire the
        # rater's earlier vote on the item (the partial unique index finds it), one to insert. The kind is
        # part of the SQL text, not a parameter: a parameter compared with a partial index's WHERE column
        # (idx_votes_pairwise: kind = 'pairwise') makes SQLite prepare the statement again at every run,
        # which tripled its cost. `kind` is one of VOTE_KINDS, never caller text.
        assert kind in VOTE_KINDS, kind
        conn = db.conn
        old = conn.execute(
            f"UPDATE votes SET active = 0 WHERE kind = '{kind}' AND rater = ? AND item_key = ? AND active = 1 "
            "RETURNING id",
            [rater, item_key],
        ).fetchone()
        replaces = old[0] if old is not None else None
        created_at = utc_now()
        row = (
            kind,
            rater,
            item_key,
            generation_ids[0],
            json.dumps(generation_ids),
            value,
            json.dumps(ranking) if ranking is not None else None,
            edited_text,
            json.dumps(list(tags)),
            comment,
            conversation_id,
            source,
            created_at,
            replaces,
            1,
            models[0] if models else None,  # pairwise only: what the leaderboard reads
            models[1] if models else None,
        )
        cursor = conn.execute(
            f"INSERT INTO votes ({_VOTE_COLUMNS}) VALUES ({', '.join('?' * len(row))})", row
        )
        write_facets(conn, cursor.lastrowid, answer_models, tags, created_at)
        return Vote(
            id=cursor.lastrowid,
            kind=kind,
            rater=rater,
            generation_ids=tuple(generation_ids),
            value=value,
            ranking=ranking,
            edited_text=edited_text,
            tags=tuple(tags),
            comment=comment,
            conversation_id=conversation_id,
            source=source,
            created_at=created_at,
            replaces=replaces,
            active=True,
        )

    def withdraw_vote(self, id: int) -> Vote:
        """Take back the active vote ``id``: it stops counting (datasets, leaderboard, jobs) and stays stored
        with ``withdrawn_at``. NotFound for an unknown id, Conflict for a vote no longer active."""
        with self._write() as db:
            row = db.conn.execute(
                "UPDATE votes SET active = 0, withdrawn_at = ? WHERE id = ? AND active = 1 RETURNING id",
                [utc_now(), id],
            ).fetchone()
            if row is None:
                found = db.conn.execute("SELECT withdrawn_at FROM votes WHERE id = ?", [id]).fetchone()
                if found is None:
                    raise NotFound(f"vote {id!r} not found", param="vote_id")
                how = "withdrawn" if found[0] else "replaced by a later vote"
                raise Conflict(f"vote {id} is no longer active: it was {how}", param="vote_id")
        return self.get_vote(id)

    def active_thumbs(self, generation_id: str, rater: str) -> Vote | None:
        """``rater``'s active thumbs vote on one generation, if any."""
        rows = self._read().query(
            "SELECT * FROM votes WHERE kind = 'thumbs' AND rater = ? AND item_key = ? AND active = 1",
            [rater, generation_id],
        )
        return next((vote_from_row(row) for row in rows), None)

    def get_vote(self, id: int) -> Vote:
        """The vote ``id`` (active or replaced); raises ``NotFound`` if there is none."""
        rows = list(self._read().query("SELECT * FROM votes WHERE id = ?", [id]))
        if not rows:
            raise NotFound(f"vote {id!r} not found", param="vote_id")
        return vote_from_row(rows[0])

    def list_votes(
        self,
        rater: str | None = None,
        *,
        kind: str | None = None,
        include_replaced: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Vote]:
        """Votes newest first: ``rater``'s own if given, else everyone's; active ones unless asked."""
        clauses, params = [], []
        if rater is not None:
            clauses.append("rater = ?")
            params.append(rater)
        if kind is not None:
            clauses.append("kind = ?")
            params.append(check_choice(kind, VOTE_KINDS, "kind"))
        if not include_replaced:
            clauses.append("active = 1")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM votes {where} ORDER BY id DESC LIMIT ? OFFSET ?"
        rows = self._read().query(sql, [*params, -1 if limit is None else limit, offset])
        return [vote_from_row(row) for row in rows]

    def pairwise_comparisons(self) -> list[Comparison]:
        """Every active pairwise vote as (model of a, model of b, outcome), for the leaderboard."""
        sql = (
            "SELECT model_a, model_b, value FROM votes INDEXED BY idx_votes_pairwise "
            "WHERE kind = 'pairwise' AND active = 1 ORDER BY id"
        )
        return [Comparison(*row) for row in self._read().execute(sql).fetchall()]

    def counts(self) -> VoteCounts:
        """Generations, conversations and active votes by kind and by rater, for the Data tab."""
        db = self._read()
        by_kind: dict[str, int] = {}
        by_rater: dict[str, dict[str, int]] = {}
        sql = "SELECT rater, kind, count(*) FROM votes WHERE active = 1 GROUP BY rater, kind ORDER BY 1, 2"
        for rater, kind, n in db.execute(sql).fetchall():
            by_kind[kind] = by_kind.get(kind, 0) + n
            by_rater.setdefault(rater, {})[kind] = n
        return VoteCounts(
            generations=db.execute("SELECT count(*) FROM generations").fetchone()[0],
            conversations=db.execute("SELECT count(*) FROM conversations").fetchone()[0],
            votes=sum(by_kind.values()),
            replaced=db.execute("SELECT count(*) FROM votes WHERE active = 0").fetchone()[0],
            by_kind=by_kind,
            by_rater=by_rater,
        )
