"""Votes and the leaderboard over the feedback store: the one path the API routes and the UI tabs both use.

A served answer is named by the response id the hub returned and its choice index (a *generation
reference*); :meth:`FeedbackService.resolve` turns one into the store's generation id. Votes are recorded
under the voter's name (a rater, "admin", "api" or the local user) and read back only by their voter or an
admin. Store calls block, so async callers run these methods in a thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from feedback.errors import NotFound
from feedback.leaderboard import Leaderboard, fit_leaderboard
from feedback.records import Vote
from feedback.store import Store, generation_id
from feedback.vote_search import VotePage, VoteQuery

from .auth import Principal
from .errors import ApiError

THUMBS_UP_REASONS = ("correct", "helpful", "well written", "concise")
THUMBS_DOWN_REASONS = ("wrong", "unhelpful", "unsafe", "too long", "off topic", "bad format")


@dataclass(frozen=True)
class GenerationRef:
    """What a client calls an answer: the response id it got and the choice index within that response."""

    generation_id: str
    choice: int = 0

    @property
    def store_id(self) -> str:
        return generation_id(self.generation_id, self.choice)

    def describe(self) -> str:
        return f"generation_id {self.generation_id!r} choice {self.choice}"


class FeedbackService:
    def __init__(self, store: Store, anchor: Callable[[], str | None] = lambda: None) -> None:
        """``anchor`` names the model the leaderboard rates at 1000 (the served base model)."""
        self.store = store
        self.anchor = anchor

    # ----- votes (recorded with the store's own `add_thumbs`, `add_pairwise`, `add_ranking`, `add_edit`) -----

    def withdraw(self, id: int, viewer: Principal) -> Vote:
        """Take back the active vote ``id``; only its rater or an admin may (others get NotFound)."""
        self.vote(id, viewer)
        return self.store.withdraw_vote(id)

    def withdraw_thumbs(self, rater: str, generation: str) -> Vote | None:
        """Take back ``rater``'s thumb on one answer (a second click on the same thumb); None if there is none."""
        vote = self.store.active_thumbs(generation, rater)
        return self.store.withdraw_vote(vote.id) if vote is not None else None

    def missing(self, refs: Sequence[GenerationRef]) -> NotFound | None:
        """A NotFound naming the first reference the store does not hold (for a clearer message than the
        store's own), or None when all exist."""
        for ref in refs:
            try:
                self.store.get_generation(ref.store_id)
            except NotFound:
                hint = " (is choice within the n answers returned?)" if ref.choice else ""
                return NotFound(
                    f"no answer with {ref.describe()}{hint}: vote with the id of a chat or completion "
                    "response this hub returned",
                    param="generation_id",
                )
        return None

    # ----- reading votes ---------------------------------------------------------------------------------

    def search(
        self, viewer: Principal, query: VoteQuery = VoteQuery(), *, cursor: str | None = None, limit: int = 50
    ) -> VotePage:
        """A page of votes newest first (triage: GET /v1/feedback and the Data tab). An admin sees everyone's
        votes (or one ``query.rater``'s); anyone else only their own, and a 403 for naming another rater."""
        if not viewer.is_admin:
            if query.rater is not None and query.rater != viewer.name:
                raise ApiError(
                    403,
                    f"you are {viewer.name!r}: only an admin may read another rater's votes ({query.rater!r})",
                    param="rater",
                )
            query = replace(query, rater=viewer.name)
        return self.store.search_votes(query, cursor=cursor, limit=limit)

    def vote_detail(self, id: int, viewer: Principal) -> dict:
        """The vote ``id`` with its answers (prompt, text, and which model, adapter version and generation
        produced each) and the adapters it trained: what the Data tab opens and GET /v1/feedback/{id}/lineage
        returns."""
        found = self.lineage(id, viewer)
        vote = found["vote"]
        generations = self.store.get_generations(vote.generation_ids)
        adapters: dict[str, dict | None] = {}
        answers = []
        for position, gid in enumerate(vote.generation_ids):
            g = generations.get(gid)
            if g is None:  # pragma: no cover - a vote's generations are foreign keys
                continue
            if g.model not in adapters:
                a = self.store.adapter_for_model(g.model)
                adapters[g.model] = (
                    None
                    if a is None
                    else {
                        "id": a.ref,
                        "base": a.base,
                        "method": a.method,
                        "stage": a.metrics.get("stage"),
                        "parent": a.parent,
                        "job_id": a.job_id,
                        "dataset_id": a.dataset_id,
                        "status": a.status,
                    }
                )
            answers.append(
                {
                    "position": position,
                    "generation": gid,
                    "response_id": g.response_id,
                    "choice": g.choice_index,
                    "model": g.model,
                    "adapter": adapters[g.model],
                    "prompt": g.prompt,
                    "text": g.text,
                    "params": g.params,
                    "created_at": g.created_at,
                }
            )
        return {**found, "answers": answers}

    def models_of(self, votes: Sequence[Vote]) -> dict[int, list[str]]:
        """The models of each vote's answers, in the vote's order of answers."""
        generations = self.store.get_generations({id for v in votes for id in v.generation_ids})
        return {
            v.id: list(dict.fromkeys(generations[g].model for g in v.generation_ids if g in generations))
            for v in votes
        }

    def top_reasons(self, per_model: int = 3) -> list[dict]:
        """Per model (most thumbs-down reasons first), its most given thumbs-down and thumbs-up reasons:
        ``{"model", "down": [(reason, n), ...], "up": [...], "down_given", "up_given"}`` (reasons given)."""
        table: dict[str, dict] = {}
        for model, value, reason, n in self.store.thumbs_reason_counts():
            row = table.setdefault(
                model, {"model": model, "down": [], "up": [], "down_given": 0, "up_given": 0}
            )
            row[f"{value}_given"] += n
            if len(row[value]) < per_model:
                row[value].append((reason, n))
        return sorted(table.values(), key=lambda r: (-r["down_given"], -r["up_given"], r["model"]))

    def vote(self, id: int, viewer: Principal) -> Vote:
        """The vote ``id`` if ``viewer`` cast it or is an admin; others get NotFound, as for a missing id."""
        vote = self.store.get_vote(id)
        if not viewer.is_admin and vote.rater != viewer.name:
            raise NotFound(f"vote {id!r} not found", param="vote_id")
        return vote

    def lineage(self, id: int, viewer: Principal) -> dict:
        """The vote ``id`` (as :meth:`vote` shows it) and the adapter versions it trained, oldest first."""
        vote = self.vote(id, viewer)
        trained = [
            {
                "id": a.ref,
                "status": a.status,
                "method": a.method,
                "stage": a.metrics.get("stage"),
                "job_id": a.job_id,
                "dataset_id": a.dataset_id,
                "created_at": a.created_at,
            }
            for a in self.store.vote_adapters(vote.id)
        ]
        return {"vote": vote, "trained_adapters": trained}

    def refs(self, votes: Sequence[Vote]) -> dict[str, GenerationRef]:
        """The references (response id, choice) of every generation the votes are about."""
        ids = {id for vote in votes for id in vote.generation_ids}
        generations = self.store.get_generations(ids)
        return {
            id: GenerationRef(g.response_id, g.choice_index) if g.response_id else GenerationRef(id)
            for id, g in generations.items()
        }

    # ----- the leaderboard -------------------------------------------------------------------------------

    def leaderboard(self, *, rounds: int = 200, min_votes: int = 20) -> Leaderboard:
        """Bradley-Terry ratings over every active pairwise vote, anchored on the base model. The votes are
        counted per (model, model, outcome) in SQL first: a million of them fit in a second."""
        return fit_leaderboard(
            self.store.pairwise_counts(), anchor=self.anchor(), rounds=rounds, min_votes=min_votes
        )
