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
stage's last successful run (`only_new`).

The prompt stages (ppo, rloo, grpo) learn from prompts, not votes: their new rows are distinct prompts the
hub first answered after the baseline, which is a time (when the stage's last successful job exported its
prompts, or when a later triggered job was queued). Their job trains on every prompt the hub answered
(online RL samples its own answers; old prompts are still the traffic's distribution), scored by the rule's
``params.reward_model`` or else the newest registered reward model (a `reward` job's adapter); with neither,
the rule waits, and so it does while that reward model's held-out accuracy is below 0.6 (`training.reward_check`)
unless the rule sets ``params.allow_weak_reward_model``.

    {"triggers": [{"stage": "reward", "min_new": 50}, {"stage": "ppo", "min_new": 30}]}
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.jobs.publish import newest_reward_model
from training.jobs.queue import JobQueue, job_spec
from training.jobs.spec import (
    EXPORTS,
    FEEDBACK,
    NAME,
    STAGES,
    JobError,
    JobSpec,
    check_params,
    with_guard_bounds,
)
from training.methods import METHODS
from training.reward_check import reward_model_quality

log = logging.getLogger("tunehub.jobs")

SETTINGS_FILE = "auto-train.json"
TRIGGERED_STAGES = tuple(STAGES)
PROMPT_STAGES = tuple(stage for stage, (_, _, rows) in STAGES.items() if rows == "prompts")  # ppo, rloo, grpo
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


def new_prompts(store, after: str) -> int:
    """Distinct prompts the hub first answered after the time `after` (ISO 8601 as the records write it;
    "" counts every prompt)."""
    from feedback.formats import normalise_messages
    from feedback.validation import canonical_json

    before, since = set(), set()
    for generation in store.list_generations():
        key = canonical_json(normalise_messages(generation.prompt))
        (since if generation.created_at > after else before).add(key)
    return len(since - before)


def last_prompts_of_stage(store, stage: str) -> str:
    """When the stage's last successful job exported the hub's prompts ("" if none did): its baseline."""
    for job in store.list_jobs(status="succeeded", limit=10_000):
        if job.stage == stage and job.dataset_id:
            dataset = store.get_dataset(job.dataset_id)
            if dataset.source == "export":
                return dataset.created_at
    return ""


class AutoTrigger:
    def __init__(
        self,
        store,
        rules: list[TriggerRule],
        base_model: str,
        *,
        check_s: float = 30.0,
        chat_template: str | None = None,
        guard_bounds: Mapping[str, float] | None = None,
    ) -> None:
        self.store = store
        self.queue = JobQueue(store)
        self.rules = rules
        self.base_model = base_model
        self.chat_template = chat_template  # the served one, when the hub was given --chat-template
        self.guard_bounds = dict(guard_bounds or {})  # the hub's promotion guard's: its jobs watch them
        self.check_s = check_s
        self._checked_at = float("-inf")
        self._waiting: set[str] = set()  # prompt-stage rules told once that they wait for a reward model

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
        jobs = self.store.list_jobs(limit=10_000)  # newest first
        queued = []
        for rule in self.rules:
            of_stage = [job for job in jobs if job.stage == rule.stage]
            if any(job.status in ACTIVE for job in of_stage):
                continue
            triggered = next((job_spec(job).trigger for job in of_stage if job_spec(job).trigger), None)
            if rule.stage in PROMPT_STAGES:
                spec = self._prompt_job(rule, triggered)
            else:
                spec = self._vote_job(rule, triggered)
            if spec is None:
                continue
            job = self.queue.submit(spec)
            log.info(
                "auto-train: %d new %s rows (at least %d asked): queued job %s",
                spec.trigger["new_rows"],
                rule.stage,
                rule.min_new,
                job.id,
            )
            queued.append(job)
        return queued

    def _vote_job(self, rule: TriggerRule, triggered: dict[str, Any] | None) -> JobSpec | None:
        """The job of a vote stage if `min_new` new clean rows arrived since its baseline vote."""
        from training.jobs.worker import last_vote_of_stage

        newest_vote = max((v.id for v in self.store.list_votes()), default=0)
        baseline = last_vote_of_stage(self.store, rule.stage)
        if triggered is not None:
            baseline = max(baseline, int(triggered.get("newest_vote", 0)))
        if newest_vote <= baseline:
            return None
        count = new_rows(self.store, rule.stage, baseline)
        if count < rule.min_new:
            return None
        trigger = {"min_new": rule.min_new, "new_rows": count, "newest_vote": newest_vote}
        return self._spec(rule, dict(rule.params), only_new=True, trigger=trigger)

    def _prompt_job(self, rule: TriggerRule, triggered: dict[str, Any] | None) -> JobSpec | None:
        """The job of a prompt stage if `min_new` new distinct prompts were answered since its baseline time
        and there is a reward model to score its answers."""
        generations = self.store.list_generations()
        newest = max((g.created_at for g in generations), default="")
        baseline = last_prompts_of_stage(self.store, rule.stage)
        if triggered is not None:
            baseline = max(baseline, str(triggered.get("newest_generation_at", "")))
        if newest <= baseline:
            return None
        count = new_prompts(self.store, baseline)
        if count < rule.min_new:
            return None
        params = dict(rule.params)
        if not params.get("reward_model"):
            reward = newest_reward_model(self.store)
            if reward is None:
                if rule.stage not in self._waiting:
                    self._waiting.add(rule.stage)
                    log.warning(
                        "auto-train: %d new prompts for %s, but no reward model to score its answers: train "
                        "one (stage reward) or set params.reward_model in the rule",
                        count,
                        rule.stage,
                    )
                return None
            params["reward_model"] = reward.path
        quality = reward_model_quality(params["reward_model"])
        if quality.weak and not params.get("allow_weak_reward_model"):
            if rule.stage not in self._waiting:
                self._waiting.add(rule.stage)
                log.warning(
                    "auto-train: %d new prompts for %s, but %s: train a better one (stage reward, more "
                    "votes) or set params.allow_weak_reward_model in the rule",
                    count,
                    rule.stage,
                    quality.summary(),
                )
            return None
        self._waiting.discard(rule.stage)
        trigger = {"min_new": rule.min_new, "new_rows": count, "newest_generation_at": newest}
        return self._spec(rule, params, only_new=False, trigger=trigger)

    def _spec(self, rule: TriggerRule, params: dict[str, Any], *, only_new: bool, trigger: dict) -> JobSpec:
        return JobSpec(
            stage=rule.stage,
            method=rule.method,
            data=FEEDBACK,
            name=rule.adapter_name,
            base=self.base_model,
            params=with_guard_bounds(rule.stage, params, self.guard_bounds),
            only_new=only_new,
            trigger=trigger,
            chat_template=self.chat_template,
        )
