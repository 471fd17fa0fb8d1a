"""Training job routes (admin only): POST /v1/jobs, GET /v1/jobs, GET /v1/jobs/{id}, POST /v1/jobs/{id}/cancel,
and the hub's side of the runner: its thread, hot-loading each finished adapter into the engine, and the
automatic trigger (off unless ``DATA_DIR/auto-train.json`` or $TUNEHUB_AUTO_TRAIN sets it up).

    POST /v1/jobs {"stage": "dpo", "method": "lora", "data": "feedback" | "/path", "name": "polite",
                   "parent": null, "params": {"max_steps": 100, "beta": 0.2}, "only_new": false,
                   "gpus": 1, "strategy": "ddp"}
      -> {"id": "job-...", "object": "training.job", "status": "queued", "progress": 0.0, "command": "...", ...}

A job answer carries ``status`` (queued, running, succeeded, failed, cancelled), ``progress`` (0 to 1),
``adapter`` (the served model name once it is live), ``error``, ``metrics`` (step, total_steps, eta_s, loss
and the loss curve while it runs; the training metrics once it is done) and ``command``, the exact command the
runner runs for it (`accelerate launch` with the strategy's config when ``gpus`` > 1). A bad stage, method, name, data or
param is a 400 naming the field; an unknown job a 404; cancelling a finished job a 409.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from feedback.records import JOB_STATUSES
from training.jobs.launch import DEFAULT_STRATEGY, STRATEGIES
from training.jobs.spec import FEEDBACK, STAGES, JobError
from training.methods import METHODS

from ..auth import Auth, Principal
from ..errors import ApiError
from ..jobs_service import JobsService, NoBaseModel
from ..views import job_body

log = logging.getLogger("tunehub.jobs")


class CreateJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # checked against training.jobs.spec.STAGES by check_spec, so a stage registered there is accepted here
    stage: str = Field(min_length=1, max_length=50, description=f"one of {', '.join(STAGES)}")
    method: str = Field("lora", description=f"one of {', '.join(METHODS)}")
    data: str = Field(FEEDBACK, min_length=1, max_length=4096, description="'feedback' or a file/dir path")
    name: str = Field(min_length=1, max_length=64, description="the adapter's name")
    parent: str | None = Field(
        None, max_length=4096, description="adapter name[@N] or directory to start from"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="the stage's settings")
    base: str | None = Field(
        None, max_length=200, description="a further base model the hub serves, by name (default: the first)"
    )
    only_new: bool = Field(False, description="feedback data: only votes since the stage's last run")
    # checked by check_spec: more than 1 runs under `accelerate launch` with the strategy's shipped config
    gpus: int = Field(1, description="GPUs (processes) the job trains on")
    strategy: str = Field(DEFAULT_STRATEGY, description=f"with gpus > 1: one of {', '.join(STRATEGIES)}")


def build_jobs_router(jobs: JobsService, auth: Auth) -> APIRouter:
    router = APIRouter()
    admin = Depends(auth.require_admin)

    @router.post("/v1/jobs")
    async def create_job(body: CreateJob, principal: Principal = admin):
        try:
            job = await asyncio.to_thread(
                jobs.submit,
                stage=body.stage,
                method=body.method,
                data=body.data,
                name=body.name,
                parent=body.parent,
                params=body.params,
                only_new=body.only_new,
                gpus=body.gpus,
                strategy=body.strategy,
                base=body.base,
            )
        except NoBaseModel as e:
            raise ApiError(503, str(e), code="no_base_model") from None
        except JobError as e:
            raise ApiError(400, e.message, param=e.param, code="invalid_value") from None
        return job_body(job, jobs.command(job))

    @router.get("/v1/jobs")
    async def list_jobs(
        status: str | None = Query(None, description=f"one of {', '.join(JOB_STATUSES)}"),
        limit: int = Query(100, ge=1, le=1000),
        principal: Principal = admin,
    ):
        if status is not None and status not in JOB_STATUSES:
            raise ApiError(400, f"status {status!r} is not one of {', '.join(JOB_STATUSES)}", param="status")
        found = await asyncio.to_thread(jobs.list, status=status, limit=limit)
        return {"object": "list", "data": [job_body(job, jobs.command(job)) for job in found]}

    @router.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str, principal: Principal = admin):
        job = await asyncio.to_thread(jobs.get, job_id)
        return job_body(job, jobs.command(job))

    @router.post("/v1/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str, principal: Principal = admin):
        job = await asyncio.to_thread(jobs.cancel, job_id)
        return job_body(job, jobs.command(job))

    return router
