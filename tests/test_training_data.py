"""Training data: every import format reads into the rows a stage needs, eval rows come from the export's
eval file, a saved split or a seeded split by prompt, and bad rows fail with their row and field.

Run: .venv/bin/python -m pytest tests/test_training_data.py -q
"""

from __future__ import annotations

import json

import pytest

from feedback.errors import Invalid
from tests.support.rows import write_jsonl
from training.data import load_training_data, split_by_prompt


def sft_row(i: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"Question {i}?"},
            {"role": "assistant", "content": f"A{i}."},
        ]
    }


def pair_row(i: int, **extra) -> dict:
    return {
        "prompt": [{"role": "user", "content": f"Q{i}?"}],
        "chosen": f"Good {i}.",
        "rejected": f"Bad {i}.",
        **extra,
    }


def test_an_export_directory_gives_train_and_eval(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [pair_row(i) for i in range(5)])
    write_jsonl(tmp_path / "eval.jsonl", [pair_row(i) for i in range(5, 7)])
    data = load_training_data(tmp_path, "pairs")
    assert (len(data.train), len(data.eval), data.kind, data.format) == (5, 2, "pairs", "trl")
    assert data.eval_source == str(tmp_path / "eval.jsonl")
    assert data.train[0]["chosen"] == [{"role": "assistant", "content": "Good 0."}]  # normalised to messages


def test_an_export_file_finds_its_eval_file_beside_it(tmp_path):
    train = write_jsonl(tmp_path / "sft.jsonl", [sft_row(i) for i in range(4)])
    write_jsonl(tmp_path / "sft.eval.jsonl", [sft_row(9)])
    data = load_training_data(train, "sft")
    assert (len(data.train), len(data.eval)) == (4, 1)
    explicit = write_jsonl(tmp_path / "other.jsonl", [sft_row(7), sft_row(8)])
    assert len(load_training_data(train, "sft", eval_path=explicit).eval) == 2


def test_without_an_eval_file_the_split_is_by_prompt_and_seeded(tmp_path):
    rows = [sft_row(i % 50) for i in range(200)]  # every prompt four times
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    data = load_training_data(path, "sft", eval_fraction=0.2, seed=1)
    assert data.eval_source == "split 0.2" and 0 < len(data.eval) < 100
    train_prompts = {json.dumps(r["messages"][:-1]) for r in data.train}
    assert not train_prompts & {json.dumps(r["messages"][:-1]) for r in data.eval}
    assert load_training_data(path, "sft", eval_fraction=0.2, seed=1).content_hash == data.content_hash
    assert load_training_data(path, "sft", eval_fraction=0.2, seed=2).content_hash != data.content_hash
    assert load_training_data(path, "sft", eval_fraction=0.0).eval == []
    assert split_by_prompt(data.train, 0.0, 0) == (data.train, [])


def test_alpaca_sharegpt_and_saved_datasets_read_too(tmp_path):
    import datasets

    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(
        json.dumps([{"instruction": "Say hi", "input": "", "output": "Hi!", "system": "Be kind."}])
    )
    row = load_training_data(alpaca, "sft", eval_fraction=0).train[0]
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]

    sharegpt = write_jsonl(
        tmp_path / "sharegpt.jsonl",
        [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}],
    )
    assert load_training_data(sharegpt, "sft", eval_fraction=0).format == "sharegpt"

    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(
                [{"prompt": f"Q{i}", "completion": "A", "label": i % 2 == 0} for i in range(6)]
            ),
            "test": datasets.Dataset.from_list([{"prompt": "Q9", "completion": "A", "label": True}]),
        }
    ).save_to_disk(str(saved))
    data = load_training_data(saved, "kto")
    assert (len(data.train), len(data.eval), data.eval_source) == (6, 1, f"{saved} [test]")


def test_kto_reads_preference_pairs_as_thumbs(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [pair_row(i) for i in range(3)])
    data = load_training_data(path, "kto", eval_fraction=0)
    assert [row["label"] for row in data.train] == [True, False] * 3
    assert data.train[1]["completion"] == [{"role": "assistant", "content": "Bad 0."}]


def test_margin_and_weight_columns_are_kept_and_checked(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [pair_row(i, margin=i, weight=0.5) for i in range(3)])
    rows = load_training_data(path, "pairs", eval_fraction=0).train
    assert [(r["margin"], r["weight"]) for r in rows] == [(0.0, 0.5), (1.0, 0.5), (2.0, 0.5)]

    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [pair_row(0, weight=1), pair_row(1, weight=-1), pair_row(2, weight=True), pair_row(3)],
    )
    with pytest.raises(Invalid) as excinfo:
        load_training_data(bad, "pairs")
    assert excinfo.value.errors == [
        'row 2: field "weight" must not be negative, got -1',
        'row 3: field "weight" must be a finite number, got True',
        'row 4: field "weight" is missing; give it on every row or on none',
    ]


def test_bad_rows_and_wrong_kinds_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(pair_row(0)) + "\n" + "{not json\n")
    with pytest.raises(Invalid, match="row 2: not valid JSON"):
        load_training_data(bad, "pairs")
    missing = write_jsonl(tmp_path / "missing.jsonl", [pair_row(0), {"prompt": "Q", "chosen": "A"}])
    with pytest.raises(Invalid, match='row 2: field "rejected" is missing'):
        load_training_data(missing, "pairs")
    sft = write_jsonl(tmp_path / "sft.jsonl", [sft_row(0)])
    with pytest.raises(Invalid, match="holds sft rows \\(trl format; columns messages\\), not kto"):
        load_training_data(sft, "kto")
    with pytest.raises(Invalid, match="does not exist"):
        load_training_data(tmp_path / "nowhere.jsonl", "sft")


def test_a_small_held_out_share_still_holds_out_one_prompt():
    """Issue 13 / a flaky UI test: 10 prompts at eval_fraction 0.3 could all hash into train (0.7^10), leaving
    early stopping and the KL bound nothing to watch; the prompt with the smallest hash is held out then."""
    from training.data import split_by_prompt

    rows = [
        {"prompt": [{"role": "user", "content": f"q{i}"}], "completion": "a", "label": True} for i in range(3)
    ]
    train, held_out = split_by_prompt(rows, 0.001, seed=0)
    assert len(train) == 2 and len(held_out) == 1
    assert split_by_prompt(rows, 0.0, seed=0) == (rows, [])  # no share asked: none held out
    assert split_by_prompt(rows[:1], 0.001, seed=0) == (rows[:1], [])  # one prompt: it must train
