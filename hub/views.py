"""The JSON views of jobs and of the leaderboard: what the API answers and the CLI prints, built in one
place so the two never differ."""

from __future__ import annotations

from typing import Any

from feedback.leaderboard import Leaderboard
from feedback.records import Job
from training.jobs.launch import DEFAULT_STRATEGY


def job_body(job: Job, command: str | None = None) -> dict[str, Any]:
    spec = job.params
    return {
        "id": job.id,
        "object": "training.job",
        "stage": job.stage,
        "method": job.method,
        "name": spec.get("name"),
        "data": spec.get("data"),
        "parent": spec.get("parent"),
        "params": spec.get("params", {}),
        "gpus": spec.get("gpus", 1),
        "strategy": spec.get("strategy", DEFAULT_STRATEGY),
        "command": command,  # the exact command the runner runs for it
        "trigger": spec.get("trigger"),  # set when the automatic trigger queued it: its count and newest vote
        "status": job.status,
        "progress": job.progress,
        "adapter": job.adapter,
        "error": job.error,
        "metrics": job.metrics,
        "dataset_id": job.dataset_id,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def leaderboard_body(board: Leaderboard) -> dict:
    def rounded(x: float | None) -> float | None:
        return None if x is None else round(x, 1)

    return {
        "object": "leaderboard",
        "anchor": board.anchor,
        "n_votes": board.n_votes,
        "uncounted_votes": board.n_uncounted,  # between two answers of one model: they rate nothing
        "rounds": board.rounds,
        "data": [
            {
                "rank": r.rank,
                "model": r.model,
                "rating": rounded(r.rating),
                "lower": rounded(r.lower),
                "upper": rounded(r.upper),
                "votes": r.votes,
                "wins": r.wins,
                "losses": r.losses,
                "ties": r.ties,
                "both_bad": r.both_bad,
                "provisional": r.provisional,
            }
            for r in board.ratings
        ],
        "models": board.models,
        "win_rate": [[None if x is None else round(x, 4) for x in row] for row in board.win_rate],
    }
