"""Promotion routes (admin only), through `PromotionService`:

    GET  /v1/adapters/{adapter}/replay     the stored regression replay: answers beside the promoted model's,
                                           checkable accuracy, KL from the base, reward scores, and `flips`:
                                           the prompts that flipped against the promoted model and the base,
                                           with both answers and their lengths (404: none yet)
    POST /v1/adapters/{adapter}/replay     replay it now against the promoted model (or the base); the report
    GET  /v1/adapters/{adapter}/promotion  the rule's decision: {"verdict": promote|not_yet|refuse, "reasons"}
    POST /v1/adapters/auto-promote         run the automatic check now; the decisions (promotes only when
                                           automatic promotion is on)

Replays and decisions block for seconds (a model is loaded and answers ~50 prompts): they run in a thread.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from ..auth import Auth, Principal
from ..errors import ApiError
from ..promotion_service import PromotionService


def build_promotion_router(promotion: PromotionService, auth: Auth) -> APIRouter:
    router = APIRouter()
    admin = Depends(auth.require_admin)

    @router.post("/v1/adapters/auto-promote")
    async def auto_promote(principal: Principal = admin):
        decisions = await asyncio.to_thread(promotion.auto_promote)
        return {
            "object": "list",
            "auto": promotion.rule.auto,
            "data": [d.as_dict() for d in decisions],
        }

    @router.get("/v1/adapters/{ref}/replay")
    async def get_replay(ref: str, principal: Principal = admin):
        report = await asyncio.to_thread(promotion.report, ref)
        if report is None:
            raise ApiError(
                404,
                f"{ref} has no replay yet: POST /v1/adapters/{ref}/replay makes one",
                param="adapter",
                code="replay_not_found",
            )
        return {"object": "replay", **report}

    @router.post("/v1/adapters/{ref}/replay")
    async def run_replay(ref: str, principal: Principal = admin):
        return {"object": "replay", **await asyncio.to_thread(promotion.replay, ref)}

    @router.get("/v1/adapters/{ref}/promotion")
    async def decision(ref: str, principal: Principal = admin):
        found = await asyncio.to_thread(promotion.decision, ref)
        return {"object": "promotion_decision", "rule": promotion.rule.kind, **found.as_dict()}

    return router
