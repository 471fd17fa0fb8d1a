"""The store's record of what the hub served: conversations and the generations (answers) in them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from feedback.connections import StoreConnections, new_id
from feedback.errors import Conflict, Invalid, NotFound
from feedback.records import SOURCES, Conversation, Generation, utc_now
from feedback.validation import (
    canonical_json,
    check_choice,
    check_count,
    check_messages,
    check_ms,
    check_optional_text,
    check_text,
    sha256_hex,
)

_CHUNK = 500  # ids per "IN (...)" query, well under SQLite's variable limit


def generation_id(response_id: str, choice_index: int = 0) -> str:
    """The generation id of choice ``choice_index`` of an API response.

    Choice 0 keeps the response id itself (``chatcmpl-abc``), so clients that asked for one answer vote
    with the id they were given; choice N > 0 is ``chatcmpl-abc:N``.
    """
    return response_id if choice_index == 0 else f"{response_id}:{choice_index}"


def conversation_from_row(row: dict[str, Any]) -> Conversation:
    return Conversation(
        id=row["id"],
        title=row["title"],
        rater=row["rater"],
        source=row["source"],
        created_at=row["created_at"],
    )


def generation_from_row(row: dict[str, Any]) -> Generation:
    return Generation(
        id=row["id"],
        conversation_id=row["conversation_id"],
        prompt=json.loads(row["prompt"]),
        model=row["model"],
        text=row["text"],
        params=json.loads(row["params"]) if row["params"] else {},
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        latency_ms=row["latency_ms"],
        ttft_ms=row["ttft_ms"],
        finish_reason=row["finish_reason"],
        source=row["source"],
        rater=row["rater"],
        response_id=row["response_id"],
        choice_index=row["choice_index"],
        created_at=row["created_at"],
    )


class GenerationMethods(StoreConnections):
    """Conversations and generations (mixed into :class:`~feedback.store.Store`)."""

    def add_conversation(
        self, *, id: str | None = None, title: str | None = None, rater: str | None = None, source: str = "ui"
    ) -> Conversation:
        """Start a conversation; ``id`` defaults to a fresh ``conv-...``. Raises ``Conflict`` if it exists."""
        check_choice(source, SOURCES, "source")
        row = {
            "id": check_text(id, "id", max_chars=200) if id is not None else new_id("conv"),
            "title": check_optional_text(title, "title", max_chars=500),
            "rater": rater,
            "source": source,
            "created_at": utc_now(),
        }
        with self._write() as db:
            if db.execute("SELECT 1 FROM conversations WHERE id = ?", [row["id"]]).fetchone():
                raise Conflict(f"conversation {row['id']!r} already exists", param="id")
            db.execute(
                "INSERT INTO conversations (id, title, rater, source, created_at) VALUES (?, ?, ?, ?, ?)",
                list(row.values()),
            )
        return conversation_from_row(row)

    def get_conversation(self, id: str) -> Conversation:
        """The conversation ``id``; raises ``NotFound`` if there is none."""
        rows = list(self._read().query("SELECT * FROM conversations WHERE id = ?", [id]))
        if not rows:
            raise NotFound(f"conversation {id!r} not found", param="conversation_id")
        return conversation_from_row(rows[0])

    def list_conversations(
        self, *, rater: str | None = None, source: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[Conversation]:
        """Conversations newest first; only ``rater``'s and only those from ``source`` (ui, api) if given."""
        clauses, params = [], []
        for column, value in (("rater", rater), ("source", source)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM conversations {where} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
        return [conversation_from_row(r) for r in self._read().query(sql, [*params, limit, offset])]

    def add_generation(
        self,
        *,
        prompt: list[dict[str, Any]],
        model: str,
        text: str,
        conversation_id: str | None = None,
        id: str | None = None,
        response_id: str | None = None,
        choice_index: int = 0,
        params: dict[str, Any] | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        latency_ms: float | None = None,
        ttft_ms: float | None = None,
        finish_reason: str | None = None,
        source: str = "api",
        rater: str | None = None,
    ) -> Generation:
        """Record one answer the hub served.

        ``prompt`` is the chat messages the model answered (OpenAI shape), ``model`` the base model or
        adapter name the request named, ``params`` the sampling parameters, ``rater`` the rater name or
        API key id behind the request. The id is ``id`` if given, else :func:`generation_id` of
        ``response_id`` and ``choice_index``, else a fresh ``gen-...``. The conversation is created if it
        does not exist; without ``conversation_id`` the generation starts its own. Raises ``Conflict``
        if the id is taken and ``Invalid`` for a bad value.
        """
        check_messages(prompt, "prompt")
        check_text(model, "model", max_chars=200)
        check_text(text, "text", allow_empty=True)
        check_choice(source, SOURCES, "source")
        if params is not None and not isinstance(params, dict):
            raise Invalid(f"params must be a JSON object, got {params!r:.80}", param="params")
        if isinstance(choice_index, bool) or not isinstance(choice_index, int) or choice_index < 0:
            raise Invalid(
                f"choice_index must be a non-negative integer, got {choice_index!r}", param="choice_index"
            )
        if id is None:
            id = generation_id(response_id, choice_index) if response_id is not None else new_id("gen")
        check_text(id, "id", max_chars=200)
        prompt_json = canonical_json(prompt)
        now = utc_now()
        row = {
            "id": id,
            "conversation_id": conversation_id if conversation_id is not None else new_id("conv"),
            "prompt": prompt_json,
            "prompt_hash": sha256_hex(prompt_json),
            "model": model,
            "text": text,
            "params": canonical_json(params or {}),
            "prompt_tokens": check_count(prompt_tokens, "prompt_tokens"),
            "completion_tokens": check_count(completion_tokens, "completion_tokens"),
            "latency_ms": check_ms(latency_ms, "latency_ms"),
            "ttft_ms": check_ms(ttft_ms, "ttft_ms"),
            "finish_reason": check_optional_text(finish_reason, "finish_reason", max_chars=50),
            "source": source,
            "rater": rater,
            "response_id": response_id,
            "choice_index": choice_index,
            "created_at": now,
        }
        with self._write() as db:
            if db.execute("SELECT 1 FROM generations WHERE id = ?", [id]).fetchone():
                raise Conflict(f"generation {id!r} already exists; generation ids are unique", param="id")
            db.execute(
                "INSERT OR IGNORE INTO conversations (id, title, rater, source, created_at) "
                "VALUES (?, NULL, ?, ?, ?)",
                [row["conversation_id"], rater, source, now],
            )
            columns = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            db.execute(f"INSERT INTO generations ({columns}) VALUES ({marks})", list(row.values()))
        return generation_from_row(row)

    def get_generation(self, id: str) -> Generation:
        """The generation ``id``; raises ``NotFound`` if there is none."""
        return self.get_generations([id])[id]

    def get_generations(self, ids: Iterable[str]) -> dict[str, Generation]:
        """Generations by id; raises ``NotFound`` naming the first unknown id."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, Generation] = {}
        db = self._read()
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            sql = f"SELECT * FROM generations WHERE id IN ({', '.join('?' for _ in chunk)})"
            found.update((row["id"], generation_from_row(row)) for row in db.query(sql, chunk))
        for id in wanted:
            if id not in found:
                raise NotFound(f"generation {id!r} not found", param="generation_id")
        return found

    def list_generations(
        self,
        *,
        conversation_id: str | None = None,
        model: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Generation]:
        """Generations oldest first, filtered by conversation and/or model."""
        clauses, params = [], []
        if conversation_id is not None:
            clauses.append("conversation_id = ?")
            params.append(conversation_id)
        if model is not None:
            clauses.append("model = ?")
            params.append(model)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM generations {where} ORDER BY created_at, rowid LIMIT ? OFFSET ?"
        rows = self._read().query(sql, [*params, -1 if limit is None else limit, offset])
        return [generation_from_row(row) for row in rows]
