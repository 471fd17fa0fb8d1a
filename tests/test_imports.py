"""Tests of dataset imports: every accepted format and file type, row-level errors, all-or-nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feedback.errors import Invalid
from feedback.exports import export_dataset
from feedback.imports import import_dataset
from feedback.store import Store

# The shapes of the rows in LLaMA-Factory's demo data (alpaca_en_demo.json and its sharegpt chats).
ALPACA = [
    {"instruction": "Translate to French", "input": "cat", "output": "chat"},
    {
        "instruction": "And dog?",
        "input": "",
        "output": "chien",
        "system": "You translate.",
        "history": [["Translate to French: cat", "chat"]],
    },
]
SHAREGPT = [
    {
        "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}],
        "system": "Be kind.",
    },
    {
        "conversations": [
            {"from": "system", "value": "Terse."},
            {"from": "human", "value": "2+2?"},
            {"from": "gpt", "value": "4"},
            {"from": "human", "value": "3+3?"},
            {"from": "gpt", "value": "6"},
        ]
    },
]
USER, BOT = "user", "assistant"


def _msg(role, content):
    return {"role": role, "content": content}


def _write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_alpaca_json_with_input_system_and_history(tmp_path: Path):
    result = import_dataset(_write_json(tmp_path / "alpaca_en_demo.json", ALPACA))
    assert (result.kind, result.format) == ("sft", "alpaca")
    assert result.rows[0] == {"messages": [_msg(USER, "Translate to French\ncat"), _msg(BOT, "chat")]}
    assert result.rows[1] == {
        "messages": [
            _msg("system", "You translate."),
            _msg(USER, "Translate to French: cat"),
            _msg(BOT, "chat"),
            _msg(USER, "And dog?"),
            _msg(BOT, "chien"),
        ]
    }
    assert result.dataset_id is None


def test_sharegpt_jsonl_with_system_field_and_system_turn(tmp_path: Path):
    result = import_dataset(_write_jsonl(tmp_path / "sharegpt.jsonl", SHAREGPT))
    assert (result.kind, result.format) == ("sft", "sharegpt")
    assert result.rows[0]["messages"] == [_msg("system", "Be kind."), _msg(USER, "Hi"), _msg(BOT, "Hello!")]
    assert [m["role"] for m in result.rows[1]["messages"]] == ["system", USER, BOT, USER, BOT]


@pytest.mark.parametrize(
    ("row", "kind", "expected"),
    [
        (
            {"messages": [_msg(USER, "hi"), _msg(BOT, "yo")]},
            "sft",
            {"messages": [_msg(USER, "hi"), _msg(BOT, "yo")]},
        ),
        ({"prompt": "hi", "completion": "yo"}, "sft", {"messages": [_msg(USER, "hi"), _msg(BOT, "yo")]}),
        (
            {"prompt": "hi", "chosen": "yo", "rejected": "go away"},
            "pairs",
            {"prompt": [_msg(USER, "hi")], "chosen": [_msg(BOT, "yo")], "rejected": [_msg(BOT, "go away")]},
        ),
        (
            {"prompt": [_msg(USER, "hi")], "chosen": [_msg(BOT, "yo")], "rejected": [_msg(BOT, "no")]},
            "pairs",
            {"prompt": [_msg(USER, "hi")], "chosen": [_msg(BOT, "yo")], "rejected": [_msg(BOT, "no")]},
        ),
        (
            {"chosen": [_msg(USER, "hi"), _msg(BOT, "yo")], "rejected": [_msg(USER, "hi"), _msg(BOT, "no")]},
            "pairs",
            {"prompt": [_msg(USER, "hi")], "chosen": [_msg(BOT, "yo")], "rejected": [_msg(BOT, "no")]},
        ),
        (
            {"prompt": "hi", "completion": "yo", "label": False},
            "kto",
            {"prompt": [_msg(USER, "hi")], "completion": [_msg(BOT, "yo")], "label": False},
        ),
        ({"prompt": [_msg(USER, "hi")]}, "prompts", {"prompt": [_msg(USER, "hi")]}),
        (
            {"instruction": "hi", "chosen": "yo", "rejected": "no"},
            "pairs",
            {"prompt": [_msg(USER, "hi")], "chosen": [_msg(BOT, "yo")], "rejected": [_msg(BOT, "no")]},
        ),
        (
            {"instruction": "hi", "output": "yo", "kto_tag": True},
            "kto",
            {"prompt": [_msg(USER, "hi")], "completion": [_msg(BOT, "yo")], "label": True},
        ),
        (
            {
                "conversations": [{"from": "human", "value": "hi"}],
                "chosen": {"from": "gpt", "value": "yo"},
                "rejected": {"from": "gpt", "value": "no"},
            },
            "pairs",
            {"prompt": [_msg(USER, "hi")], "chosen": [_msg(BOT, "yo")], "rejected": [_msg(BOT, "no")]},
        ),
    ],
)
def test_trl_alpaca_and_sharegpt_rows_normalise_to_trl(tmp_path: Path, row, kind, expected):
    result = import_dataset(_write_jsonl(tmp_path / "data.jsonl", [row, row]))
    assert result.kind == kind
    assert result.rows == [expected, expected]


def test_parquet_and_save_to_disk_directories(tmp_path: Path):
    import datasets

    rows = [
        {"prompt": [_msg(USER, f"q{i}")], "chosen": [_msg(BOT, "good")], "rejected": [_msg(BOT, "bad")]}
        for i in range(3)
    ]
    dataset = datasets.Dataset.from_list(rows)
    dataset.to_parquet(str(tmp_path / "pairs.parquet"))
    assert import_dataset(tmp_path / "pairs.parquet").rows == rows
    dataset.save_to_disk(str(tmp_path / "saved"))
    assert import_dataset(tmp_path / "saved").rows == rows
    datasets.DatasetDict({"train": dataset, "test": dataset.select([0])}).save_to_disk(str(tmp_path / "dict"))
    assert import_dataset(tmp_path / "dict").rows == rows
    assert import_dataset(tmp_path / "dict", split="test").rows == rows[:1]
    with pytest.raises(Invalid, match="'validation'"):
        import_dataset(tmp_path / "dict", split="validation")


def test_a_bad_row_names_row_and_field_and_imports_nothing(tmp_path: Path, store: Store):
    rows = [dict(ALPACA[0]) for _ in range(20)]
    del rows[16]["output"]  # row 17, counting from 1
    rows[18]["history"] = [["only a question"]]
    path = _write_json(tmp_path / "alpaca.json", rows)
    out = tmp_path / "normalised.jsonl"
    with pytest.raises(Invalid) as e:
        import_dataset(path, store=store, out=out)
    assert e.value.status == 422
    assert e.value.errors == [
        'row 17: field "output" is missing',
        'row 19: field "history" item 0 must be a [user, assistant] pair of strings, '
        "got ['only a question']",
    ]
    assert 'row 17: field "output" is missing' in str(e.value)
    assert store.list_datasets() == [] and not out.exists()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"messages": [_msg(USER, "hi")]}], 'row 1: field "messages" must end with a assistant message'),
        (
            [{"prompt": "q", "completion": "a", "label": "yes"}],
            "row 1: field \"label\" must be true or false, got 'yes'",
        ),
        (
            [{"prompt": "q", "completion": "a", "label": True}, {"prompt": "q", "completion": "a"}],
            'row 2: field "label" is missing',
        ),
        (
            [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a"}],
            'row 2: field "rejected" is missing',
        ),
        (
            [{"instruction": "q", "output": "a"}, {"conversations": [{"from": "human", "value": "q"}]}],
            'row 2: field "conversations" marks a sharegpt row, but the first row is alpaca',
        ),
        (
            [{"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]}],
            "row 1: field \"conversations[1].from\" is 'bot'",
        ),
        ([{"instruction": 3, "output": "a"}], 'row 1: field "instruction" must be a string, got int 3'),
        ([{"text": "plain"}], 'row 1: field "text" holds plain text'),
        ([{"question": "q"}], "row 1: field \"(row)\" has no known fields (it has 'question')"),
        (["just a string"], 'row 1: field "(row)" must be a JSON object, got str'),
    ],
)
def test_row_errors(tmp_path: Path, rows, message):
    with pytest.raises(Invalid) as e:
        import_dataset(_write_jsonl(tmp_path / "data.jsonl", rows))
    assert any(error.startswith(message) for error in e.value.errors), e.value.errors


def test_unreadable_files(tmp_path: Path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"messages": []}\n{not json\n', encoding="utf-8")
    with pytest.raises(Invalid, match="row 2: not valid JSON"):
        import_dataset(bad_json)
    with pytest.raises(Invalid, match="'.csv'"):
        import_dataset(_write_json(tmp_path / "data.csv", []))
    with pytest.raises(Invalid, match="does not exist"):
        import_dataset(tmp_path / "missing.json")
    with pytest.raises(Invalid, match="no rows"):
        import_dataset(_write_json(tmp_path / "empty.json", []))
    with pytest.raises(Invalid, match="'alpaca' was asked for"):
        import_dataset(_write_jsonl(tmp_path / "s.jsonl", SHAREGPT), format="alpaca")


def test_import_stores_a_snapshot_and_writes_normalised_rows(tmp_path: Path, store: Store):
    out = tmp_path / "normalised.jsonl"
    result = import_dataset(_write_jsonl(tmp_path / "sharegpt.jsonl", SHAREGPT), store=store, out=out)
    snapshot = store.get_dataset(result.dataset_id)
    assert (snapshot.kind, snapshot.format, snapshot.source, snapshot.n_rows) == (
        "sft",
        "sharegpt",
        "import",
        2,
    )
    assert snapshot.content_hash == result.content_hash and snapshot.vote_ids == ()
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == result.rows


@pytest.mark.parametrize("format", ["trl", "alpaca", "sharegpt"])
def test_exports_import_back_to_the_same_conversations(tmp_path: Path, store: Store, format):
    prompt = [_msg("system", "Be brief."), _msg(USER, "2+2?"), _msg(BOT, "4"), _msg(USER, "3+3?")]
    for text in ("6", "six"):
        g = store.add_generation(prompt=prompt, model="base", text=text)
        store.add_thumbs(g.id, "up", rater="alice")
    trl = export_dataset(store, "sft", eval_fraction=0)
    exported = export_dataset(store, "sft", tmp_path / format, format=format, eval_fraction=0)
    # the import normalises to the conversations; the export's reasons column is the store's, not TRL's
    assert import_dataset(exported.paths["train"]).rows == [{"messages": r["messages"]} for r in trl.train]
