"""Reasons become signal (issue 16, item 5): a vote's reasons are a column of every export, votes that gave
a reason can be left out of an export, a job's data (feedback or a file) and `tunehub train`, and the
leaderboard's service lists the top reasons per model.

Run: .venv/bin/python -m pytest tests/test_reasons.py -q      (the `tunehub train` run is marked slow)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feedback.errors import Invalid
from feedback.exports import export_dataset
from feedback.reasons import parse_reasons, reason_key
from feedback.store import Store
from hub.feedback_service import FeedbackService
from tests.support.cli import tunehub_process
from training.data import load_training_data
from training.jobs.spec import JobError, JobSpec, check_spec


@pytest.fixture
def voted(store: Store) -> dict:
    """Thumbs on two models' answers to eight prompts: base's are too long half the time."""
    ids = {}
    for p in range(8):
        prompt = [{"role": "user", "content": f"question {p}"}]
        base = store.add_generation(prompt=prompt, model="base", text=f"a long answer {p}")
        tuned = store.add_generation(prompt=prompt, model="tuned", text=f"short {p}")
        ids[p] = (
            store.add_thumbs(base.id, "down", rater="r", tags=["too long"] if p % 2 else ["wrong"]),
            store.add_thumbs(tuned.id, "up", rater="r", tags=["concise"] if p < 3 else []),
            store.add_pairwise(tuned.id, base.id, "a", rater="r", tags=["Too-Long"] if p == 5 else []),
        )
    return ids


def test_reason_keys_match_any_spelling():
    assert {reason_key(t) for t in ("too long", "Too-Long", " too_long ", "TOO  LONG")} == {"too_long"}
    assert parse_reasons("too_long, wrong,too long") == ("too_long", "wrong")
    assert parse_reasons("") == () and parse_reasons(None) == ()
    with pytest.raises(Invalid, match="empty reason"):
        parse_reasons("too_long,,wrong")


@pytest.mark.parametrize("kind", ["sft", "pairs", "kto"])
def test_every_export_row_carries_its_votes_reasons(store, voted, kind):
    export = export_dataset(store, kind, eval_fraction=0, snapshot=False)
    assert all("reasons" in row for row in export.train)
    given = {r for row in export.train for r in row["reasons"]}
    assert given == {"kto": {"too long", "wrong", "concise", "Too-Long"}, "sft": {"concise", "Too-Long"},
                     "pairs": {"Too-Long"}}[kind]  # fmt: skip


def test_an_export_leaves_out_the_votes_that_gave_an_excluded_reason(store, voted, tmp_path):
    full = export_dataset(store, "kto", eval_fraction=0)
    kept = export_dataset(store, "kto", tmp_path / "kto", eval_fraction=0, exclude_reasons="too_long")
    dropped = {voted[p][0].id for p in (1, 3, 5, 7)} | {voted[5][2].id}  # thumbs and the pairwise vote
    assert set(full.vote_ids) - set(kept.vote_ids) == dropped
    assert not any({"too long", "Too-Long"} & set(row["reasons"]) for row in kept.train)
    assert store.get_dataset(kept.dataset_id).params["exclude_reasons"] == ["too_long"]


@pytest.mark.parametrize("kind", ["kto", "prompts"])
def test_file_data_with_a_reasons_column_is_filtered_when_loaded(store, voted, tmp_path, kind):
    export = export_dataset(store, "kto", tmp_path / "kto", eval_fraction=0)
    dropped = {"too long", "Too-Long", "concise"}
    clean = [r for r in export.train if not dropped & set(r["reasons"])]
    assert 0 < len(clean) < len(export.train)
    kept = load_training_data(tmp_path / "kto", kind, eval_fraction=0, exclude_reasons="too_long,concise")
    if kind == "kto":
        assert kept.train == [{k: v for k, v in r.items() if k != "reasons"} for r in clean]
    else:
        assert kept.train == list({json.dumps(r["prompt"]): {"prompt": r["prompt"]} for r in clean}.values())


def test_a_bad_reasons_column_is_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    row = {
        "prompt": [{"role": "user", "content": "q"}],
        "completion": [{"role": "assistant", "content": "a"}],
    }
    bad.write_text(json.dumps({**row, "label": True, "reasons": "too long"}) + "\n")
    with pytest.raises(Invalid, match='row 1: field "reasons" must be a list of strings'):
        load_training_data(bad, "kto", eval_fraction=0, exclude_reasons="too_long")


def test_a_job_checks_exclude_reasons_and_exports_without_those_votes(store, voted, tmp_path):
    from training.jobs.worker import prepare_data

    spec = check_spec(
        JobSpec(
            stage="kto",
            method="lora",
            data="feedback",
            name="x",
            base="b",
            params={"exclude_reasons": "Too Long"},
        )  # fmt: skip
    )
    assert spec.params["exclude_reasons"] == "Too Long"
    with pytest.raises(JobError) as bad:
        check_spec(JobSpec(stage="kto", method="lora", data="feedback", name="x", base="b",
                           params={"exclude_reasons": "too_long,,wrong"}))  # fmt: skip
    assert bad.value.param == "params.exclude_reasons" and "too_long,,wrong" in bad.value.message

    job_dir = tmp_path / "job"
    job_dir.mkdir()
    launch = {"store": str(store.path), "params": spec.params}
    data = prepare_data(spec, launch, job_dir, job_dir / "progress.jsonl")
    snapshot = max(store.list_datasets(), key=lambda d: d.created_at)
    assert voted[1][0].id not in snapshot.vote_ids and voted[0][0].id in snapshot.vote_ids
    rows = [json.loads(line) for line in (Path(data) / "train.jsonl").read_text().splitlines()]
    rows += [json.loads(line) for line in (Path(data) / "eval.jsonl").read_text().splitlines()] if (
        Path(data) / "eval.jsonl").exists() else []  # fmt: skip
    assert rows and not any({"too long", "Too-Long"} & set(r["reasons"]) for r in rows)


def test_the_service_lists_the_top_reasons_per_model(store, voted):
    table = FeedbackService(store).top_reasons(per_model=2)
    assert [row["model"] for row in table] == ["base", "tuned"]  # the most complained-of first
    assert table[0]["down"] == [("too_long", 4), ("wrong", 4)] and table[0]["up"] == []
    assert table[1]["up"] == [("concise", 3)] and table[1]["down_given"] == 0


def test_tunehub_export_takes_exclude_reasons(store, voted, tmp_path):
    store.close()
    out = tmp_path / "pairs.jsonl"
    done = tunehub_process(
        "export", "kto", "--out", str(out), "--data-dir", str(tmp_path), "--eval-fraction", "0",
        "--exclude-reasons", "too_long", timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and not any({"too long", "Too-Long"} & set(r["reasons"]) for r in rows)
    assert any("wrong" in r["reasons"] for r in rows)


@pytest.mark.slow
def test_tunehub_train_exclude_reasons_trains_without_those_votes(store, voted, tmp_path, demo_model):
    store.close()
    done = tunehub_process(
        "train", "kto", "--data", "feedback", "--name", "no-long", "--base", str(demo_model),
        "--data-dir", str(tmp_path), "--max-steps", "2", "--batch-size", "4", "--exclude-reasons", "too_long",
        "--set", "eval_fraction=0", "--set", "loss_check_steps=0", timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with Store(tmp_path / "feedback.db") as reopened:
        adapter = reopened.get_adapter("no-long")
        job = reopened.get_job(adapter.job_id)
        trained = set(reopened.adapter_vote_ids("no-long"))
    assert job.params["params"]["exclude_reasons"] == "too_long"
    assert trained and voted[1][0].id not in trained and voted[0][0].id in trained
