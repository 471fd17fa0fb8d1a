"""Registered adapter routes (admin only), through `AdapterService`, the same one the Adapters tab and
`tunehub adapters` use:

    GET  /v1/adapters                    every registered version, newest first
    POST /v1/adapters/{adapter}/promote  promote it; the one promoted before it (same base) is retired;
                                         409 when the replay guard refuses it (?override=true skips it)
    POST /v1/adapters/rollback           promote again the version the promoted one replaced
    POST /v1/adapters/{adapter}/load     load it into the engine (if it is not); answers its served name
    POST /v1/adapters/{adapter}/unload   unload it from the engine

ADAPTER is name (the latest version), name@N or name@vN. Each answer is an ``{"object": "adapter", ...}``
card; an unknown adapter is a 404, nothing to roll back or not loaded a 409. Loading an adapter by its
directory stays vLLM's /v1/load_lora_adapter.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends

from ..adapters_service import AdapterRow, AdapterService
from ..auth import Auth, Principal
from ..promotion_service import PromotionService


def adapter_body(row: AdapterRow) -> dict[str, Any]:
    a = row.adapter
    return {
        "id": row.ref,
        "object": "adapter",
        "name": a.name,
        "version": a.version,
        "status": a.status,
        "served_as": row.served,
        "method": a.method,
        "stage": row.stage,
        "base": a.base,
        "parent": a.parent,
        "job_id": a.job_id,
        "path": a.path,
        "created_at": a.created_at,
    }


def build_adapters_router(adapters: AdapterService, promotion: PromotionService, auth: Auth) -> APIRouter:
    router = APIRouter()
    admin = Depends(auth.require_admin)

    @router.get("/v1/adapters")
    async def list_adapters(principal: Principal = admin):
        rows = await asyncio.to_thread(adapters.rows)
        return {"object": "list", "data": [adapter_body(row) for row in rows]}

    @router.post("/v1/adapters/rollback")
    async def rollback(principal: Principal = admin):
        promoted = await asyncio.to_thread(adapters.rollback)
        return adapter_body(await asyncio.to_thread(adapters.row, promoted.ref))

    @router.post("/v1/adapters/{ref}/promote")
    async def promote(ref: str, override: bool = False, principal: Principal = admin):
        # the guard may replay the candidate first (seconds): in a thread; override skips it
        promoted = await asyncio.to_thread(lambda: promotion.promote(ref, override=override))
        return adapter_body(await asyncio.to_thread(adapters.row, promoted.ref))

    @router.post("/v1/adapters/{ref}/load")
    async def load(ref: str, principal: Principal = admin):
        await adapters.load(ref)
        return adapter_body(await asyncio.to_thread(adapters.row, ref))

    @router.post("/v1/adapters/{ref}/unload")
    async def unload(ref: str, principal: Principal = admin):
        served = await adapters.unload(ref)
        return {**adapter_body(await asyncio.to_thread(adapters.row, ref)), "unloaded": served}

    return router
