"""Feedback routes: POST /v1/feedback (thumbs, pairwise, ranking, edit), GET /v1/feedback (votes newest
first by cursor, filtered: an admin's view of everyone's, a rater's of their own), GET /v1/feedback/{id}, GET /v1/feedback/{id}/lineage (the adapters the vote trained), GET
/v1/leaderboard.

A generation reference is ``{"generation_id": "<response id>", "choice": 0}``: the ``id`` of a chat or text
completion this hub returned and the choice index within it (when ``n`` > 1). Bodies:

    {"type": "thumbs", "generation": REF, "value": "up"|"down", "reasons": [...], "comment": "..."}
    {"type": "pairwise", "a": REF, "b": REF, "winner": "a"|"b"|"tie"|"both_bad"}
    {"type": "ranking", "order": [REF, REF, ...]}       best first; an inner list of REFs marks a tie
    {"type": "edit", "generation": REF, "text": "the corrected answer"}

Every kind also takes optional ``reasons`` and ``comment``. The answer is the stored vote, with its ``id``.
A second vote by the same voter on the same answers replaces the first (the answer says which in
``replaces``). Wrong shapes get 400, unknown answers 404, answers that cannot be compared (different
prompts, one answer twice) 422, all in OpenAI's error envelope.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError

from feedback.errors import NotFound
from feedback.records import Vote
from feedback.store import Store
from feedback.vote_search import VoteQuery

from ..auth import Auth, Principal
from ..errors import ApiError
from ..feedback_service import FeedbackService, GenerationRef
from ..views import leaderboard_body
from ..write_batcher import WriteBatcher

# ----- request bodies ----------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Ref(_Body):
    generation_id: str = Field(min_length=1, max_length=200, description="the id of the response")
    choice: int = Field(0, ge=0, le=1023, description="the choice index within the response")

    def ref(self) -> GenerationRef:
        return GenerationRef(self.generation_id, self.choice)


class _Vote(_Body):
    reasons: list[str] = Field(default_factory=list, max_length=16)
    comment: str | None = Field(None, max_length=4000)


class ThumbsFeedback(_Vote):
    type: Literal["thumbs"]
    generation: Ref
    value: Literal["up", "down"]

    def refs(self) -> list[GenerationRef]:
        return [self.generation.ref()]

    def submit(self, store: Store, rater: str) -> Vote:
        return store.add_thumbs(
            self.generation.ref().store_id,
            self.value,
            rater=rater,
            tags=self.reasons,
            comment=self.comment,
            source="api",
        )


class PairwiseFeedback(_Vote):
    type: Literal["pairwise"]
    a: Ref
    b: Ref
    winner: Literal["a", "b", "tie", "both_bad"]

    def refs(self) -> list[GenerationRef]:
        return [self.a.ref(), self.b.ref()]

    def submit(self, store: Store, rater: str) -> Vote:
        a, b = (ref.store_id for ref in self.refs())
        return store.add_pairwise(
            a, b, self.winner, rater=rater, tags=self.reasons, comment=self.comment, source="api"
        )


class RankingFeedback(_Vote):
    type: Literal["ranking"]
    order: list[Ref | Annotated[list[Ref], Field(min_length=1)]] = Field(min_length=1, max_length=6)

    def refs(self) -> list[GenerationRef]:
        return [ref.ref() for entry in self.order for ref in (entry if isinstance(entry, list) else [entry])]

    def submit(self, store: Store, rater: str) -> Vote:
        order = [
            [r.ref().store_id for r in entry] if isinstance(entry, list) else entry.ref().store_id
            for entry in self.order
        ]
        return store.add_ranking(order, rater=rater, tags=self.reasons, comment=self.comment, source="api")


class EditFeedback(_Vote):
    type: Literal["edit"]
    generation: Ref
    text: str = Field(min_length=1, max_length=100_000)

    def refs(self) -> list[GenerationRef]:
        return [self.generation.ref()]

    def submit(self, store: Store, rater: str) -> Vote:
        return store.add_edit(
            self.generation.ref().store_id,
            self.text,
            rater=rater,
            tags=self.reasons,
            comment=self.comment,
            source="api",
        )


def _feedback_type(value: object) -> str | None:
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


Feedback = Annotated[
    Annotated[ThumbsFeedback, Tag("thumbs")]
    | Annotated[PairwiseFeedback, Tag("pairwise")]
    | Annotated[RankingFeedback, Tag("ranking")]
    | Annotated[EditFeedback, Tag("edit")],
    Discriminator(
        _feedback_type,
        custom_error_type="invalid_feedback_type",
        custom_error_message="'type' must be 'thumbs', 'pairwise', 'ranking' or 'edit'",
        custom_error_context={},
    ),
]


FEEDBACK: TypeAdapter[Feedback] = TypeAdapter(Feedback)
FEEDBACK_OPENAPI = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": FEEDBACK.json_schema()}}}
}


# ----- answers -----------------------------------------------------------------------------------------


def vote_body(vote: Vote, refs: dict[str, GenerationRef]) -> dict:
    def ref(id: str) -> dict:
        r = refs.get(id, GenerationRef(id))
        return {"generation_id": r.generation_id, "choice": r.choice}

    body: dict = {"id": vote.id, "object": "feedback", "type": vote.kind}
    if vote.kind in ("thumbs", "edit"):
        body["generation"] = ref(vote.generation_ids[0])
    if vote.kind == "thumbs":
        body["value"] = vote.value
    elif vote.kind == "pairwise":
        body.update(a=ref(vote.generation_ids[0]), b=ref(vote.generation_ids[1]), winner=vote.value)
    elif vote.kind == "ranking":
        body["order"] = [ref(t[0]) if len(t) == 1 else [ref(id) for id in t] for t in vote.ranking or ()]
    elif vote.kind == "edit":
        body["text"] = vote.edited_text
    body.update(
        reasons=list(vote.tags),
        comment=vote.comment,
        rater=vote.rater,
        source=vote.source,
        conversation_id=vote.conversation_id,
        created_at=vote.created_at,
        active=vote.active,
        replaces=vote.replaces,
        withdrawn_at=vote.withdrawn_at,
    )
    return body


# ----- routes ------------------------------------------------------------------------------------------

SQLITE_MAX_INT = 2**63 - 1  # a larger id or offset overflows SQLite's integers: a 400, not a 500 (issue 7)
VoteId = Annotated[int, Path(ge=1, le=SQLITE_MAX_INT)]


def build_feedback_router(service: FeedbackService, auth: Auth) -> APIRouter:
    # The store blocks, so reads run as plain `def` routes in FastAPI's thread pool. Votes come fast
    # (bench/store.py): those that arrive together are written in one worker-thread hop and one commit.
    router = APIRouter()
    batcher = WriteBatcher(service.store)

    async def caller(request: Request) -> Principal:
        # no thread hop: constant-time compares, and one indexed read for a rater's own API key
        return auth.identify(request)

    api = Depends(caller)

    def record(body: Feedback, principal: Principal) -> dict:
        refs = body.refs()
        try:
            vote = body.submit(service.store, principal.name)
        except NotFound:
            missing = service.missing(refs)
            if missing is not None:
                raise missing from None
            raise
        return vote_body(vote, {r.store_id: r for r in refs})

    @router.post("/v1/feedback", response_model=None, openapi_extra=FEEDBACK_OPENAPI)
    async def post_feedback(request: Request):
        # The hot path parses its own body: FastAPI's dependency and body machinery cost a vote more than
        # the store's write does (bench/store.py). Errors come out exactly as from a declared body.
        principal = auth.identify(request)
        try:
            body = FEEDBACK.validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
        return JSONResponse(await batcher.run(lambda: record(body, principal)))

    @router.get("/v1/feedback", response_model=None)
    def list_feedback(
        request: Request,
        type: Literal["thumbs", "pairwise", "ranking", "edit"] | None = None,
        model: Annotated[str | None, Query(max_length=200)] = None,
        rater: Annotated[str | None, Query(max_length=200)] = None,
        reason: Annotated[str | None, Query(max_length=64)] = None,
        value: Annotated[str | None, Query(max_length=20)] = None,
        since: Annotated[str | None, Query(max_length=40)] = None,
        until: Annotated[str | None, Query(max_length=40)] = None,
        include_replaced: bool = False,
        cursor: Annotated[str | None, Query(max_length=400)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        principal: Principal = api,
    ):
        """Votes newest first, a page at a time (``next_cursor``): an admin sees everyone's, anyone else
        their own. Filters: type, model (any answer's model or adapter), rater, reason, value, since
        (inclusive) and until (exclusive)."""
        if "offset" in request.query_params:
            raise ApiError(
                400,
                f"offset {request.query_params['offset']!r} is not supported: pages go by cursor; pass the "
                "previous page's next_cursor as cursor",
                param="offset",
            )
        query = VoteQuery(
            kind=type,
            rater=rater,
            model=model,
            reason=reason,
            value=value,
            since=since,
            until=until,
            include_replaced=include_replaced,
        )
        page = service.search(principal, query, cursor=cursor, limit=limit)
        refs = service.refs(page.votes)
        return JSONResponse(
            {
                "object": "list",
                "data": [vote_body(v, refs) for v in page.votes],
                "has_more": page.next_cursor is not None,
                "next_cursor": page.next_cursor,
            }
        )

    @router.get("/v1/feedback/{vote_id}", response_model=None)
    def get_feedback(vote_id: VoteId, principal: Principal = api):
        vote = service.vote(vote_id, principal)
        return JSONResponse(vote_body(vote, service.refs([vote])))

    @router.delete("/v1/feedback/{vote_id}", response_model=None)
    def withdraw_feedback(vote_id: VoteId, principal: Principal = api):
        """Withdraw one's own active vote (an admin: anyone's); it stays stored, inactive, with withdrawn_at."""
        vote = service.withdraw(vote_id, principal)
        return JSONResponse(vote_body(vote, service.refs([vote])))

    @router.get("/v1/feedback/{vote_id}/lineage", response_model=None)
    def get_feedback_lineage(vote_id: VoteId, principal: Principal = api):
        """The vote, its answers (which model, adapter version and generation produced each) and the
        adapters it trained (``trained_adapters``: those whose dataset held it)."""
        found = service.vote_detail(vote_id, principal)
        vote = found["vote"]
        body = vote_body(vote, service.refs([vote]))
        return JSONResponse(
            {
                "object": "vote_lineage",
                "vote": body,
                "answers": found["answers"],  # each answer's model, adapter version and generation
                "trained_adapters": found["trained_adapters"],
            }
        )

    @router.get("/v1/leaderboard", response_model=None)
    def leaderboard(
        rounds: Annotated[int, Query(ge=0, le=2000)] = 200,
        min_votes: Annotated[int, Query(ge=0)] = 20,
        principal: Principal = api,
    ):
        """Bradley-Terry ratings (1000 = the base model), 95% bootstrap intervals, counts, win rates."""
        return JSONResponse(leaderboard_body(service.leaderboard(rounds=rounds, min_votes=min_votes)))

    return router
