"""Votes and the leaderboard over the feedback store: the one path the API routes and the UI tabs both use.

A served answer is named by the response id the hub returned and its choice index (a *generation
reference*); :meth:`FeedbackService.resolve` turns one into the store's generation id. Votes are recorded
under the voter's name (a rater, "admin", "api" or the local user) and read back only by their voter or an
admin. Store calls block, so async callers run these methods in a thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from feedback.errors import NotFound
from feedback.leaderboard import Leaderboard, fit_leaderboard
from feedback.records import Vote
from feedback.store import Store, generation_id

from .auth import Principal

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


Ranked = str | Sequence[str]  # a store generation id, or several tied ones


class FeedbackService:
    def __init__(self, store: Store, anchor: Callable[[], str | None] = lambda: None) -> None:
        """``anchor`` names the model the leaderboard rates at 1000 (the served base model)."""
        self.store = store
        self.anchor = anchor

    # ----- votes -----------------------------------------------------------------------------------------

    def thumbs(
        self,
        rater: str,
        generation: str,
        value: str,
        *,
        reasons: Sequence[str] = (),
        comment: str | None = None,
        source: str = "api",
    ) -> Vote:
        return self.store.add_thumbs(
            generation, value, rater=rater, tags=reasons, comment=comment, source=source
        )

    def pairwise(
        self,
        rater: str,
        a: str,
        b: str,
        winner: str,
        *,
        reasons: Sequence[str] = (),
        comment: str | None = None,
        source: str = "api",
    ) -> Vote:
        return self.store.add_pairwise(
            a, b, winner, rater=rater, tags=reasons, comment=comment, source=source
        )

    def ranking(
        self,
        rater: str,
        order: Sequence[Ranked],
        *,
        reasons: Sequence[str] = (),
        comment: str | None = None,
        source: str = "api",
    ) -> Vote:
        """``order`` best first; an inner list holds answers tied with each other."""
        tiers = [entry if isinstance(entry, str) else list(entry) for entry in order]
        return self.store.add_ranking(tiers, rater=rater, tags=reasons, comment=comment, source=source)

    def edit(
        self,
        rater: str,
        generation: str,
        text: str,
        *,
        reasons: Sequence[str] = (),
        comment: str | None = None,
        source: str = "api",
    ) -> Vote:
        return self.store.add_edit(
            generation, text, rater=rater, tags=reasons, comment=comment, source=source
        )

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

    def votes(
        self,
        rater: str | None,
        *,
        kind: str | None = None,
        limit: int = 100,
        offset: int = 0,
        include_replaced: bool = False,
    ) -> list[Vote]:
        """``rater``'s votes (everyone's for None), newest first."""
        return self.store.list_votes(
            rater, kind=kind, limit=limit, offset=offset, include_replaced=include_replaced
        )

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
        """Bradley-Terry ratings over every active pairwise vote, anchored on the base model."""
        return fit_leaderboard(
            self.store.pairwise_comparisons(), anchor=self.anchor(), rounds=rounds, min_votes=min_votes
        )
