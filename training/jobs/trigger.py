"""The automatic trigger (off by default): queue a stage's job once enough new clean training rows have
arrived since that stage's last run. The job runner calls `AutoTrigger.check` from its loop.

A settings file (``DATA_DIR/auto-train.json``, or `tunehub serve --auto-train FILE`) holds the rules:

    {"triggers": [
        {"stage": "dpo", "min_new": 50, "method": "lora", "name": "auto-dpo", "params": {"max_steps": 200}},
        {"stage": "kto", "min_new": 100}
    ]}

"New clean rows" are what the stage's feedback export would give from votes newer than its baseline:
preference pairs for reward/dpo (ties and both_bad give none), thumbs and other labelled answers for kto,
preferred answers for sft, each deduplicated. The baseline is the newest vote the stage's last successful
job trained on, or, if a triggered job of the stage came later (and failed or was cancelled), the newest vote
when that one was queued: a failing job is not re-queued every poll, only after N more new rows. Nothing is
queued while a job of the stage is queued or running. The triggered job trains on the votes new since the
stage's last successful run (`only_new`). Prompt-only stages (ppo, rloo, grpo) count no votes and cannot be
triggered.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.jobs.queue import JobQueue, job_spec
from training.jobs.spec import EXPORTS, FEEDBACK, NAME, JobError, JobSpec, check_params
from training.methods import METHODS

log = logging.getLogger("tunehub.jobs")

SETTINGS_FILE = "auto-train.json"
TRIGGERED_STAGES = ("sft", "reward", "dpo", "kto")  # stages whose data comes from votes
ACTIVE = ("queued", "running")


class TriggerError(ValueError):
    """A settings file the trigger cannot use; the message names the file, the rule and the field."""


@dataclass(frozen=True)
class TriggerRule:
    """Queue `stage` with `method` and `params` under `name` once `min_new` new clean rows arrived."""

    stage: str
    min_new: int
    method: str = "lora"
    name: str = ""  # default auto-STAGE
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def adapter_name(self) -> str:
        return self.name or f"auto-{self.stage}"


def load_rules(path: Path) -> list[TriggerRule]:
    """The rules of a settings file, each checked (stage, min_new, method, name, params) before the hub
    starts; raises `TriggerError` naming the rule and field."""
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as e:
        raise TriggerError(f"auto-train settings {str(path)!r} could not be read: {e}") from None
    except json.JSONDecodeError as e:
        raise TriggerError(f"auto-train settings {str(path)!r} are not valid JSON: {e}") from None
    rules = raw.get("triggers") if isinstance(raw, dict) else raw
    if not isinstance(rules, list):
        raise TriggerError(
            f'auto-train settings {str(path)!r} must be {{"triggers": [...]}}, got {raw!r:.80}'
        )
    return [_rule(path, i, rule) for i, rule in enumerate(rules)]


def _rule(path: Path, index: int, rule: object) -> TriggerRule:
    where = f"auto-train settings {str(path)!r}, triggers[{index}]"
    if not isinstance(rule, dict):
        raise TriggerError(f"{where} must be an object, got {rule!r:.80}")
    unknown = set(rule) - {"stage", "min_new", "method", "name", "params"}
    if unknown:
        raise TriggerError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    stage, min_new = rule.get("stage"), rule.get("min_new")
    if stage not in TRIGGERED_STAGES:
        raise TriggerError(f"{where}.stage {stage!r} is not one of {', '.join(TRIGGERED_STAGES)}")
    if not isinstance(min_new, int) or isinstance(min_new, bool) or min_new < 1:
        raise TriggerError(f"{where}.min_new must be a whole number of at least 1, got {min_new!r}")
    method = rule.get("method", "lora")
    if method not in METHODS:
        raise TriggerError(f"{where}.method {method!r} is not one of {', '.join(METHODS)}")
    name = rule.get("name") or ""
    if name and (not isinstance(name, str) or not NAME.fullmatch(name)):
        raise TriggerError(f"{where}.name {name!r} is not a valid adapter name")
    try:
        params = check_params(stage, method, rule.get("params") or {})
    except JobError as e:
        raise TriggerError(f"{where}.{e.param}: {e.message}") from None
    return TriggerRule(stage=stage, min_new=min_new, method=method, name=name, params=params)


def new_rows(store, stage: str, after_vote: int) -> int:
    """Clean rows the stage's feedback export would give from votes after `after_vote` (no snapshot)."""
    from feedback.errors import Invalid
    from feedback.exports import export_dataset

    kind, mode = EXPORTS[stage]
    try:
        export = export_dataset(store, kind, None, mode=mode, snapshot=False, after_vote=after_vote)
    except Invalid:  # nothing to export
        return 0
    return len(export.train) + len(export.eval)


class AutoTrigger:
    def __init__(self, store, rules: list[TriggerRule], base_model: str, *, check_s: float = 30.0) -> None:
        self.store = store
        self.queue = JobQueue(store)
        self.rules = rules
        self.base_model = base_model
        self.check_s = check_s
        self._checked_at = float("-inf")

    def maybe_check(self) -> list:
        """`check`, at most every `check_s` seconds (it reads every vote)."""
        now = time.monotonic()
        if now - self._checked_at < self.check_s:
            return []
        self._checked_at = now
        return self.check()

    def check(self) -> list:
        """Queue each rule's stage whose count is reached and that has no job queued or running; returns
        the jobs queued."""
        from training.jobs.worker import last_vote_of_stage

        jobs = self.store.list_jobs(limit=10_000)  # newest first
        newest_vote = max((v.id for v in self.store.list_votes()), default=0)
        queued = []
        for rule in self.rules:
            of_stage = [job for job in jobs if job.stage == rule.stage]
            if any(job.status in ACTIVE for job in of_stage):
                continue
            baseline = last_vote_of_stage(self.store, rule.stage)
            triggered = next((job for job in of_stage if job_spec(job).trigger), None)
            if triggered is not None:
                baseline = max(baseline, int(job_spec(triggered).trigger.get("newest_vote", 0)))
            if newest_vote <= baseline:
                continue
            count = new_rows(self.store, rule.stage, baseline)
            if count < rule.min_new:
                continue
            spec = JobSpec(
                stage=rule.stage,
                method=rule.method,
                data=FEEDBACK,
                name=rule.adapter_name,
                base=self.base_model,
                params=dict(rule.params),
                only_new=True,
                trigger={"min_new": rule.min_new, "new_rows": count, "newest_vote": newest_vote},
            )
            job = self.queue.submit(spec)
            log.info(
                "auto-train: %d new %s rows (at least %d asked) since vote %d: queued job %s",
                count,
                rule.stage,
                rule.min_new,
                baseline,
                job.id,
            )
            queued.append(job)
        return queued
