"""The automatic trigger with a real store: below N new clean rows nothing is queued, at N one job is, not
twice while it is queued or running, a failed triggered job waits for N more; ties make no row; the prompt
stages (ppo, rloo, grpo) count new distinct prompts and take the newest reward model; the runner's loop runs
it; a bad settings file is refused naming the rule and field.

Run: .venv/bin/python -m pytest tests/test_training_trigger.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feedback.store import Store
from training.jobs.queue import job_spec
from training.jobs.runner import JobRunner
from training.jobs.trigger import (
    AutoTrigger,
    TriggerError,
    TriggerRule,
    last_prompts_of_stage,
    load_rules,
    new_prompts,
    new_rows,
)


def add_pair(store: Store, i: int, choice: str = "a") -> int:
    """A pairwise vote on two answers to prompt number `i` (its own conversation)."""
    prompt = [{"role": "user", "content": f"What is {i} + {i}?"}]
    good = store.add_generation(prompt=prompt, model="base", text=str(2 * i), conversation_id=f"c{i}")
    bad = store.add_generation(prompt=prompt, model="base", text="no idea", conversation_id=f"c{i}")
    return store.add_pairwise(good.id, bad.id, choice, rater="alice").id


def dpo_trigger(store: Store, min_new: int = 3) -> AutoTrigger:
    rule = TriggerRule(stage="dpo", min_new=min_new, params={"max_steps": 5})
    return AutoTrigger(store, [rule], "/models/base", check_s=0)


def test_below_n_nothing_at_n_one_job_and_not_twice(store):
    trigger = dpo_trigger(store)
    for i in range(2):
        add_pair(store, i)
    add_pair(store, 99, "tie")  # a tie gives no pair: not a clean row
    assert new_rows(store, "dpo", 0) == 2
    assert trigger.check() == [] and store.list_jobs() == []

    add_pair(store, 2)
    [job] = trigger.check()
    spec = job_spec(job)
    assert (job.stage, job.method, job.status) == ("dpo", "lora", "queued")
    assert (spec.name, spec.data, spec.only_new, spec.params) == (
        "auto-dpo",
        "feedback",
        True,
        {"max_steps": 5},
    )
    assert spec.trigger["new_rows"] == 3 and spec.trigger["min_new"] == 3

    add_pair(store, 3)
    assert trigger.check() == []  # queued: not twice
    store.update_job(job.id, status="running")
    assert trigger.check() == []  # running: not twice
    assert len(store.list_jobs()) == 1


def test_a_failed_triggered_job_waits_for_n_more_new_rows(store):
    trigger = dpo_trigger(store, min_new=2)
    for i in range(2):
        add_pair(store, i)
    [job] = trigger.check()
    store.update_job(job.id, status="running")
    store.update_job(job.id, status="failed", error="boom")
    assert trigger.check() == []  # the same votes do not queue it again, poll after poll
    add_pair(store, 2)
    assert trigger.check() == []
    add_pair(store, 3)
    [again] = trigger.check()
    assert again.id != job.id and job_spec(again).trigger["new_rows"] == 2


def ask(store: Store, text: str) -> None:
    """One answered prompt (no vote: the prompt stages learn from prompts alone)."""
    store.add_generation(prompt=[{"role": "user", "content": text}], model="base", text="...")


def add_reward_model(store: Store, path: Path, name: str = "rm") -> str:
    path.mkdir(parents=True, exist_ok=True)
    return store.add_adapter(name, base="b", method="lora", path=str(path), metrics={"stage": "reward"}).path


def test_a_prompt_stage_counts_new_prompts_and_takes_the_newest_reward_model(store, tmp_path):
    trigger = AutoTrigger(store, [TriggerRule(stage="ppo", min_new=2)], "/models/base", check_s=0)
    ask(store, "What is 1 + 1?")
    ask(store, "What is 1 + 1?")  # the same prompt twice is one row
    assert new_prompts(store, "") == 1 and trigger.check() == []
    ask(store, "What is 2 + 2?")
    assert trigger.check() == []  # two new prompts, but no reward model to score the answers: it waits
    assert store.list_jobs() == []

    add_reward_model(store, tmp_path / "rm-old")
    newest = add_reward_model(store, tmp_path / "rm-new", name="rm2")
    [job] = trigger.check()
    spec = job_spec(job)
    assert (job.stage, spec.data, spec.only_new, spec.name) == ("ppo", "feedback", False, "auto-ppo")
    assert spec.params == {"reward_model": newest} and spec.trigger["new_rows"] == 2
    assert trigger.check() == []  # queued: not twice

    # It succeeds on a prompt snapshot: only prompts first answered after that export count from then on.
    store.update_job(job.id, status="running")
    snapshot = store.add_dataset(kind="prompts", format="trl", content_hash="h", n_rows=2)
    store.update_job(job.id, status="succeeded", dataset_id=snapshot.id)
    ask(store, "What is 2 + 2?")
    ask(store, "What is 3 + 3?")
    assert new_prompts(store, last_prompts_of_stage(store, "ppo")) == 1 and trigger.check() == []
    ask(store, "What is 4 + 4?")
    [again] = trigger.check()
    assert again.id != job.id and job_spec(again).trigger["new_rows"] == 2


@pytest.mark.parametrize("stage", ["rloo", "grpo"])
def test_rloo_and_grpo_are_triggered_with_the_rules_own_reward_model(store, tmp_path, stage):
    rm = str(tmp_path / "my-rm")
    rule = TriggerRule(stage=stage, min_new=1, name=f"auto-{stage}-x", params={"reward_model": rm})
    trigger = AutoTrigger(store, [rule], "/models/base", check_s=0)
    add_reward_model(store, tmp_path / "registered")  # the rule's own comes first
    ask(store, "Convert 3 km to m.")
    [job] = trigger.check()
    spec = job_spec(job)
    assert (job.stage, spec.name, spec.params["reward_model"]) == (stage, f"auto-{stage}-x", rm)
    store.update_job(job.id, status="running")
    store.update_job(job.id, status="failed", error="boom")
    assert trigger.check() == []  # a failed triggered job waits for new prompts
    ask(store, "Convert 4 km to m.")
    assert len(trigger.check()) == 1


def test_a_prompt_stage_rule_is_read_from_the_settings_file(tmp_path):
    path = tmp_path / "auto-train.json"
    rules = [{"stage": "reward", "min_new": 20}, {"stage": "ppo", "min_new": 30, "params": {"kl_coef": 0.1}}]
    path.write_text(json.dumps({"triggers": rules}))
    assert [(r.stage, r.min_new, r.params) for r in load_rules(path)] == [
        ("reward", 20, {}),
        ("ppo", 30, {"kl_coef": 0.1}),
    ]
    path.write_text(json.dumps({"triggers": [{"stage": "grpo", "min_new": 3, "params": {"beta": -1}}]}))
    with pytest.raises(TriggerError, match=r"triggers\[0\]\.params\.beta"):
        load_rules(path)


def test_the_runner_loop_runs_the_trigger(store, tmp_path):
    runner = JobRunner(store, tmp_path, trigger=dpo_trigger(store, min_new=1), max_jobs_per_device=0)
    runner.step()
    assert store.list_jobs() == []
    add_pair(store, 0)
    runner.step()  # max_jobs_per_device=0: queued, not started
    assert [j.status for j in store.list_jobs()] == ["queued"]


def test_the_settings_file_is_checked_naming_rule_and_field(tmp_path):
    path = tmp_path / "auto-train.json"
    path.write_text(json.dumps({"triggers": [{"stage": "kto", "min_new": 5, "params": {"beta": 0.2}}]}))
    [rule] = load_rules(path)
    assert (rule.stage, rule.min_new, rule.method, rule.adapter_name) == ("kto", 5, "lora", "auto-kto")
    for bad, words in [
        (
            {"stage": "orpo", "min_new": 5},
            "triggers[0].stage 'orpo' is not one of sft, reward, dpo, kto, ppo",
        ),
        ({"stage": "dpo", "min_new": 0}, "triggers[0].min_new must be a whole number of at least 1, got 0"),
        ({"stage": "dpo", "min_new": 5, "params": {"beta": -1}}, "triggers[0].params.beta: beta must be"),
        ({"stage": "dpo", "min_new": 5, "every": 3}, "unknown field(s) every"),
    ]:
        path.write_text(json.dumps({"triggers": [bad]}))
        with pytest.raises(TriggerError) as error:
            load_rules(path)
        assert words in str(error.value) and str(path) in str(error.value)
    path.write_text("{nope")
    with pytest.raises(TriggerError, match="not valid JSON"):
        load_rules(path)


def test_the_hub_turns_it_on_only_with_a_settings_file(store, tmp_path):
    from types import SimpleNamespace

    from hub.jobs_service import auto_trigger
    from hub.settings import Settings

    service = SimpleNamespace(engine=SimpleNamespace(model_path="/models/base"))
    assert auto_trigger(service, store, tmp_path) is None  # off by default
    (tmp_path / "auto-train.json").write_text(json.dumps({"triggers": [{"stage": "dpo", "min_new": 4}]}))
    trigger = auto_trigger(service, store, tmp_path)
    assert [r.stage for r in trigger.rules] == ["dpo"] and trigger.base_model == "/models/base"
    elsewhere = tmp_path / "other.json"
    elsewhere.write_text(json.dumps({"triggers": [{"stage": "sft", "min_new": 0}]}))
    named = Settings.from_sources(env={"TUNEHUB_AUTO_TRAIN": str(elsewhere)}).auto_train  # or --auto-train
    with pytest.raises(TriggerError, match="min_new"):
        auto_trigger(service, store, tmp_path, settings_file=named)  # a bad file stops the hub from starting
