"""The records the feedback store returns: one frozen dataclass per table row.

Timestamps are ISO 8601 strings in UTC (``2025-01-31T12:00:00.123456Z``). JSON columns come back decoded.
``dataclasses.asdict(record)`` gives a JSON-ready dict for the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, NamedTuple

Role = Literal["admin", "rater"]
Source = Literal["api", "ui"]
VoteKind = Literal["thumbs", "pairwise", "ranking", "edit"]
ThumbsValue = Literal["up", "down"]
PairwiseOutcome = Literal["a", "b", "tie", "both_bad"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
AdapterStatus = Literal["candidate", "promoted", "retired"]

ROLES: tuple[str, ...] = ("admin", "rater")
SOURCES: tuple[str, ...] = ("api", "ui")
VOTE_KINDS: tuple[str, ...] = ("thumbs", "pairwise", "ranking", "edit")
THUMBS_VALUES: tuple[str, ...] = ("up", "down")
PAIRWISE_OUTCOMES: tuple[str, ...] = ("a", "b", "tie", "both_bad")
JOB_STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
JOB_FINISHED: tuple[str, ...] = ("succeeded", "failed", "cancelled")
ADAPTER_STATUSES: tuple[str, ...] = ("candidate", "promoted", "retired")


@dataclass(frozen=True)
class Rater:
    """A person (or script) who rates answers. ``name`` is the rater id used on votes."""

    name: str
    role: str
    has_password: bool
    created_at: str


@dataclass(frozen=True)
class ApiKey:
    """An API key's public half; the key itself is only ever shown once, when it is created."""

    id: str
    rater: str
    label: str | None
    created_at: str
    revoked_at: str | None


@dataclass(frozen=True)
class Conversation:
    """A chat thread; generations belong to one, and train/eval splits never cut through one."""

    id: str
    title: str | None
    rater: str | None
    source: str
    created_at: str


@dataclass(frozen=True)
class Generation:
    """One answer the hub served: the prompt it answered, who answered (model or adapter) and how."""

    id: str
    conversation_id: str
    prompt: list[dict[str, Any]]
    model: str
    text: str
    params: dict[str, Any]
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float | None
    ttft_ms: float | None
    finish_reason: str | None
    source: str
    rater: str | None
    response_id: str | None
    choice_index: int
    created_at: str


@dataclass(frozen=True)
class Vote:
    """A rater's judgement of one item.

    ``generation_ids`` are the generations voted on: one for thumbs and edits, ``(a, b)`` for pairwise,
    every ranked answer best first for rankings. ``value`` is ``up``/``down`` (thumbs) or
    ``a``/``b``/``tie``/``both_bad`` (pairwise). ``ranking`` holds tiers best first; answers in one tier
    are tied. A revote by the same rater on the same item makes a new vote that ``replaces`` the old one,
    which stays stored with ``active=False`` so datasets that used it keep their lineage. A withdrawn vote
    (the rater took it back) is inactive too, with ``withdrawn_at`` set.
    """

    id: int
    kind: str
    rater: str
    generation_ids: tuple[str, ...]
    value: str | None
    ranking: tuple[tuple[str, ...], ...] | None
    edited_text: str | None
    tags: tuple[str, ...]
    comment: str | None
    conversation_id: str
    source: str
    created_at: str
    replaces: int | None
    active: bool
    withdrawn_at: str | None = None


class Comparison(NamedTuple):
    """One pairwise vote between two models, as the leaderboard consumes it."""

    model_a: str
    model_b: str
    outcome: str


@dataclass(frozen=True)
class VoteCounts:
    """Counts for the Data tab; votes are active ones (replaced votes are counted in ``replaced``)."""

    generations: int
    conversations: int
    votes: int
    replaced: int
    by_kind: dict[str, int] = field(default_factory=dict)
    by_rater: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSnapshot:
    """An exported or imported dataset: what it holds, a hash of its content and the votes it used."""

    id: str
    kind: str
    format: str
    source: str
    content_hash: str
    vote_ids: tuple[int, ...]
    n_rows: int
    n_train: int
    n_eval: int
    path: str | None
    params: dict[str, Any]
    created_at: str


@dataclass(frozen=True)
class Job:
    """A training job: ``stage`` is the training method (sft, dpo, ...), ``method`` the tuning method
    (full, lora, ...)."""

    id: str
    stage: str
    method: str
    status: str
    progress: float
    params: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None
    dataset_id: str | None
    log_path: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    adapter: str | None = None  # the served model name of its adapter, once hot-loaded


@dataclass(frozen=True)
class Adapter:
    """One version of a trained adapter and its lineage (parent adapter, job, dataset)."""

    id: int
    name: str
    version: int
    base: str
    method: str
    parent: str | None
    job_id: str | None
    dataset_id: str | None
    metrics: dict[str, Any]
    status: str
    path: str
    created_at: str

    @property
    def ref(self) -> str:
        """``name@version``, the form ``parent`` uses."""
        return f"{self.name}@{self.version}"


def utc_now() -> str:
    """The current time as the records write it: ISO 8601, UTC, microseconds, ``Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
