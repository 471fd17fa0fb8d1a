"""Votes found at scale: keyset pages newest first, filtered by kind, rater, model, reason, value and time;
aggregates the leaderboard and the reasons table read in SQL; and the adapter behind a served model name.

    from feedback.vote_search import VoteQuery
    page = store.search_votes(VoteQuery(model="polite", reason="too_long"), limit=50)
    more = store.search_votes(VoteQuery(model="polite", reason="too_long"), cursor=page.next_cursor)

Pages are ordered by (created_at, id), newest first, and the cursor is the last vote's key: a vote that
arrives while someone pages cannot shift a later page (no duplicates, no gaps), as an OFFSET would. Each
filter walks one index in page order (migration 0006_vote_triage): ``vote_models`` and ``vote_reasons`` hold
a vote's models (of every answer it judged) and its reason keys beside the vote's time.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from feedback.connections import StoreConnections
from feedback.errors import Invalid, NotFound
from feedback.reasons import reason_key
from feedback.records import PAIRWISE_OUTCOMES, THUMBS_VALUES, VOTE_KINDS, Adapter, Vote
from feedback.validation import check_choice, check_text

VALUES_BY_KIND: dict[str, tuple[str, ...]] = {
    "thumbs": THUMBS_VALUES,
    "pairwise": PAIRWISE_OUTCOMES,
    "ranking": (),
    "edit": (),
}
ALL_VALUES: tuple[str, ...] = (*THUMBS_VALUES, *PAIRWISE_OUTCOMES)
MAX_PAGE = 1000
_STORED_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"  # records.utc_now(): ISO 8601 strings compare in time order


@dataclass(frozen=True)
class VoteQuery:
    """Which votes to list. Every field is optional; ``since`` is inclusive and ``until`` exclusive (ISO 8601
    dates or times; without a zone, UTC). ``model`` matches a vote about any answer of that model or adapter;
    ``reason`` matches a reason tag in any spelling (``too long`` = ``too_long``)."""

    kind: str | None = None
    rater: str | None = None
    model: str | None = None
    reason: str | None = None
    value: str | None = None
    since: str | None = None
    until: str | None = None
    include_replaced: bool = False

    def checked(self) -> VoteQuery:
        """The query with times in the stored form and the reason as its key; Invalid names a bad value."""
        if self.kind is not None:
            check_choice(self.kind, VOTE_KINDS, "kind")
        if self.value is not None:
            allowed = VALUES_BY_KIND[self.kind] if self.kind is not None else ALL_VALUES
            if self.value not in allowed:
                if not allowed:
                    raise Invalid(
                        f"value {self.value!r}: {self.kind} votes have no value; leave value out",
                        param="value",
                    )
                which = f"a {self.kind} vote's value" if self.kind else "a vote value"
                raise Invalid(
                    f"value {self.value!r} is not {which}: use one of {', '.join(allowed)}", param="value"
                )
        for name in ("rater", "model"):
            if getattr(self, name) is not None:
                check_text(getattr(self, name), name, max_chars=200)
        reason = None
        if self.reason is not None:
            check_text(self.reason, "reason", max_chars=64)
            reason = reason_key(self.reason)
        since = parse_time(self.since, "since") if self.since is not None else None
        until = parse_time(self.until, "until") if self.until is not None else None
        if since is not None and until is not None and since >= until:
            raise Invalid(f"since {self.since!r} is not before until {self.until!r}", param="since")
        return replace(self, reason=reason, since=since, until=until)


@dataclass(frozen=True)
class VotePage:
    """One page of votes, newest first; ``next_cursor`` fetches the next (None on the last page)."""

    votes: list[Vote]
    next_cursor: str | None


def parse_time(value: str, param: str) -> str:
    """An ISO 8601 date or time as the store writes times (UTC, microseconds, ``Z``); Invalid otherwise."""
    text = value.strip() if isinstance(value, str) else value
    try:
        if not isinstance(text, str) or not re.match(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Invalid(
            f"{param} {value!r} is not an ISO 8601 date or time (e.g. 2025-01-31 or 2025-01-31T12:00:00Z)",
            param=param,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime(_STORED_TIME)


def encode_cursor(vote: Vote) -> str:
    """The opaque cursor after ``vote``: its (created_at, id) key."""
    return base64.urlsafe_b64encode(json.dumps([vote.created_at, vote.id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, int]:
    """(created_at, id) from a cursor; Invalid names a cursor this store did not give out."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, id = json.loads(raw)
        if not isinstance(created_at, str) or not isinstance(id, int) or isinstance(id, bool):
            raise ValueError
        return created_at, id
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise Invalid(
            f"cursor {cursor!r:.80} is not a cursor this hub gave out: pass next_cursor from the previous page",
            param="cursor",
        ) from None


def write_facets(
    conn: sqlite3.Connection, vote_id: int, models: Iterable[str], tags: Iterable[str], created_at: str
) -> None:
    """Index a new vote by its answers' models and its reason keys (inside the vote's own transaction)."""
    model_rows = [(vote_id, m, created_at) for m in dict.fromkeys(models)]
    if model_rows:
        conn.executemany("INSERT INTO vote_models (vote_id, model, created_at) VALUES (?, ?, ?)", model_rows)
    keys = [k for k in dict.fromkeys(reason_key(t) for t in tags) if k]
    if keys:
        conn.executemany(
            "INSERT INTO vote_reasons (vote_id, reason, created_at) VALUES (?, ?, ?)",
            [(vote_id, k, created_at) for k in keys],
        )


class VoteSearchMethods(StoreConnections):
    """Vote search and aggregates (mixed into :class:`~feedback.store.Store`)."""

    def search_votes(
        self, query: VoteQuery = VoteQuery(), *, cursor: str | None = None, limit: int = 50
    ) -> VotePage:
        """A page of at most ``limit`` votes matching ``query``, newest first, after ``cursor``."""
        from feedback.votes import vote_from_row

        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise Invalid(f"limit must be a whole number from 1 to {MAX_PAGE}, got {limit!r}", param="limit")
        q = query.checked()
        where: list[str] = []
        params: list[Any] = []
        if q.model is not None or q.reason is not None:
            # the rarer facet is unknown; the model drives, the reason is a primary-key probe per vote
            facet, value = ("model", q.model) if q.model is not None else ("reason", q.reason)
            source = f"vote_{facet}s AS f JOIN votes AS v ON v.id = f.vote_id"
            time, id = "f.created_at", "f.vote_id"
            where.append(f"f.{facet} = ?")
            params.append(value)
            if q.model is not None and q.reason is not None:
                where.append(
                    "EXISTS (SELECT 1 FROM vote_reasons AS r WHERE r.vote_id = v.id AND r.reason = ?)"
                )
                params.append(q.reason)
        else:
            source, time, id = "votes AS v", "v.created_at", "v.id"
        for column in ("kind", "rater", "value"):
            if getattr(q, column) is not None:
                where.append(f"v.{column} = ?")
                params.append(getattr(q, column))
        if not q.include_replaced:
            where.append("v.active = 1")
        if q.since is not None:
            where.append(f"{time} >= ?")
            params.append(q.since)
        if q.until is not None:
            where.append(f"{time} < ?")
            params.append(q.until)
        if cursor is not None:
            where.append(f"({time}, {id}) < (?, ?)")
            params.extend(decode_cursor(cursor))
        sql = (
            f"SELECT v.* FROM {source} WHERE {' AND '.join(where) or '1'} "
            f"ORDER BY {time} DESC, {id} DESC LIMIT ?"
        )
        rows = list(self._read().query(sql, [*params, limit + 1]))
        votes = [vote_from_row(row) for row in rows[:limit]]
        return VotePage(votes, encode_cursor(votes[-1]) if len(rows) > limit else None)

    def vote_models(self, vote_ids: Sequence[int]) -> dict[int, list[str]]:
        """The models of the answers each vote judged (each model once)."""
        if not vote_ids:
            return {}
        marks = ", ".join("?" for _ in vote_ids)
        found: dict[int, list[str]] = {id: [] for id in vote_ids}
        sql = f"SELECT vote_id, model FROM vote_models WHERE vote_id IN ({marks})"
        for vote_id, model in self._read().execute(sql, list(vote_ids)).fetchall():
            found[vote_id].append(model)
        return found

    def pairwise_counts(self) -> list[tuple[str, str, str, int]]:
        """Active pairwise votes counted per (model of a, model of b, outcome), for the leaderboard: a
        million votes arrive as a few hundred rows."""
        sql = (
            "SELECT model_a, model_b, value, count(*) FROM votes INDEXED BY idx_votes_pairwise_cells "
            "WHERE kind = 'pairwise' AND active = 1 GROUP BY model_a, model_b, value"
        )
        return [tuple(row) for row in self._read().execute(sql).fetchall()]

    def thumbs_reason_counts(self) -> list[tuple[str, str, str, int]]:
        """(model, thumbs value, reason key, active votes) for every reason given with a thumb, most first.

        Only thumbs count: a thumb judges one model's answer, while a pairwise vote's or a ranking's reason
        may be about either side."""
        sql = """
            SELECT m.model, v.value, r.reason, count(*) AS n
            FROM vote_reasons AS r JOIN votes AS v ON v.id = r.vote_id JOIN vote_models AS m ON m.vote_id = r.vote_id
            WHERE v.kind = 'thumbs' AND v.active = 1
            GROUP BY m.model, v.value, r.reason ORDER BY n DESC, m.model, r.reason
        """
        return [tuple(row) for row in self._read().execute(sql).fetchall()]

    def adapter_for_model(self, model: str) -> Adapter | None:
        """The registered adapter version a served model name stands for, if any: the one a job published
        under that name, else ``name@vN``'s version N, else the latest version of ``name``."""
        from feedback.lineage import adapter_from_row

        rows = list(
            self._read().query(
                "SELECT adapters.* FROM jobs JOIN adapters ON adapters.job_id = jobs.id WHERE jobs.adapter = ? "
                "ORDER BY adapters.id DESC LIMIT 1",
                [model],
            )
        )
        if rows:
            return adapter_from_row(rows[0])
        name, version = model, None
        match = re.fullmatch(r"(.+)@v(\d+)", model)
        if match:
            name, version = match.group(1), int(match.group(2))
        try:
            return self.get_adapter(name, version)  # type: ignore[attr-defined]  # LineageMethods
        except NotFound:
            return None
