"""Every common preference layout reads in unchanged in meaning and trains through `tunehub train`.

The fixtures in tests/data/layouts/ copy the shapes of the public files: LLaMA-Factory's kto_en_demo.json
(messages + label) and dpo_en_demo.json (sharegpt conversations + chosen/rejected turns), TRL's unpaired
preference rows (prompt, completion, label; strings or message lists), openbmb/UltraFeedback (instruction +
scored completions), HuggingFaceH4/ultrafeedback_binarized (prompt repeated in chosen/rejected, plus
messages and scores) and the plain prompt + completions-with-score shape.

Run: .venv/bin/python -m pytest tests/test_layouts.py -q   (add -m "not slow" to skip the training runs)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feedback.errors import Invalid
from feedback.imports import import_dataset
from tests.support.cli import tunehub_process
from training.data import load_training_data
from training.result import METADATA_FILE

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = REPO / "tests" / "data" / "layouts"


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _source(name: str) -> list[dict]:
    path = LAYOUTS / name
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines()]


# ----- detection and conversion ------------------------------------------------------------------------


def test_llamafactory_kto_rows_split_at_the_last_assistant_message():
    # Was refused: "holds sft rows (trl format), not kto" (issue 16).
    result = import_dataset(LAYOUTS / "kto_llamafactory.json")
    source = _source("kto_llamafactory.json")
    assert (result.kind, result.format, len(result.rows)) == ("kto", "trl", len(source))
    for record, row in zip(source, result.rows):
        messages = [_msg(m["role"], m["content"]) for m in record["messages"]]
        assert row == {"prompt": messages[:-1], "completion": messages[-1:], "label": record["label"]}
    multi_turn = result.rows[2]
    assert [m["role"] for m in multi_turn["prompt"]] == ["user", "assistant", "user"]
    assert result.rows[5]["prompt"][0] == _msg("system", "You answer in one word.")
    data = load_training_data(LAYOUTS / "kto_llamafactory.json", "kto", eval_fraction=0)
    assert {row["label"] for row in data.train} == {True, False}


@pytest.mark.parametrize("name", ["kto_trl_standard.jsonl", "kto_trl_conversational.jsonl"])
def test_trl_unpaired_rows_as_strings_or_message_lists(name):
    result = import_dataset(LAYOUTS / name)
    assert (result.kind, result.format) == ("kto", "trl")
    for record, row in zip(_source(name), result.rows):
        prompt, completion = record["prompt"], record["completion"]
        if isinstance(prompt, str):
            prompt, completion = [_msg("user", prompt)], [_msg("assistant", completion)]
        assert row == {"prompt": prompt, "completion": completion, "label": record["label"]}


def test_sharegpt_pairs_keep_the_whole_conversation_as_the_prompt():
    result = import_dataset(LAYOUTS / "dpo_sharegpt.json")
    assert (result.kind, result.format) == ("pairs", "sharegpt")
    first, with_history = result.rows[0], result.rows[3]
    assert first == {
        "prompt": [_msg("user", "What is the capital of France?")],
        "chosen": [_msg("assistant", "Paris.")],
        "rejected": [_msg("assistant", "The capital of France is Berlin.")],
    }
    assert with_history["prompt"] == [
        _msg("user", "Hi"),
        _msg("assistant", "Hello!"),
        _msg("user", "How many grams are in 2 kilograms?"),
    ]


def test_ultrafeedback_binarized_keeps_the_prompt_once_and_reads_as_pairs_not_sft():
    result = import_dataset(LAYOUTS / "ultrafeedback_binarized.jsonl")
    assert (result.kind, result.format) == ("pairs", "trl")  # its messages column no longer makes it sft
    for record, row in zip(_source("ultrafeedback_binarized.jsonl"), result.rows):
        assert row == {
            "prompt": [_msg("user", record["prompt"])],
            "chosen": [_msg("assistant", record["chosen"][1]["content"])],
            "rejected": [_msg("assistant", record["rejected"][1]["content"])],
        }


def test_raw_ultrafeedback_pairs_the_best_fine_grained_score_against_each_lower_one():
    result = import_dataset(LAYOUTS / "ultrafeedback_raw.jsonl")
    source = _source("ultrafeedback_raw.jsonl")
    assert (result.kind, result.format) == ("pairs", "ultrafeedback")
    assert len(result.rows) == 3 * len(source)  # 4 completions: the best against each of the other 3
    first = [r for r in result.rows if r["prompt"] == [_msg("user", source[0]["instruction"])]]
    scores = {c["response"]: c["fine-grained_score"] for c in source[0]["completions"]}
    best = max(scores, key=scores.get)
    assert {r["chosen"][0]["content"] for r in first} == {best}
    assert sorted(r["rejected"][0]["content"] for r in first) == sorted(set(scores) - {best})
    # Rejected answers come best first (4.33 ... 1.25): the order of the scores, not of the file.
    assert [scores[r["rejected"][0]["content"]] for r in first] == sorted(
        (s for t, s in scores.items() if t != best), reverse=True
    )
    # The per-completion system prompt is not part of the shared prompt.
    assert all(m["role"] == "user" for r in result.rows for m in r["prompt"])


def test_scored_completions_drop_ties_and_a_fully_tied_row():
    result = import_dataset(LAYOUTS / "ultrafeedback_scored.jsonl")
    source = _source("ultrafeedback_scored.jsonl")
    # 8 rows of best (9) vs two tied at 2: two pairs each; the last row ties 5/5 and makes no pair.
    assert len(result.rows) == 16
    assert all(r["chosen"] != r["rejected"] for r in result.rows)
    assert _msg("user", source[-1]["prompt"]) not in [r["prompt"][0] for r in result.rows]


def test_tied_best_answers_each_beat_the_lower_ones(tmp_path: Path):
    row = {
        "prompt": [_msg("system", "Be brief."), _msg("user", "q")],
        "completions": [
            {"response": "a", "score": 8},
            {"response": "b", "score": 8},
            {"response": "c", "rating": "3"},  # UltraFeedback stores ratings as strings
        ],
    }
    result = import_dataset(_write_jsonl(tmp_path / "uf.jsonl", [row]))
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in result.rows] == [
        ("a", "c"),
        ("b", "c"),
    ]
    assert result.rows[0]["prompt"] == row["prompt"]


def test_distilabel_generations_and_ratings(tmp_path: Path):
    row = {
        "instruction": "q",
        "generations": ["x", "y", "z"],
        "ratings": [2, 5, None],
        "rationales": ["", "", ""],
    }
    result = import_dataset(_write_jsonl(tmp_path / "d.jsonl", [row]))
    assert (result.kind, result.format) == ("pairs", "ultrafeedback")
    assert result.rows == [
        {
            "prompt": [_msg("user", "q")],
            "chosen": [_msg("assistant", "y")],
            "rejected": [_msg("assistant", "x")],
        }
    ]


def test_ultrafeedback_can_be_named_with_the_format_option():
    assert import_dataset(LAYOUTS / "ultrafeedback_raw.jsonl", format="ultrafeedback").kind == "pairs"
    with pytest.raises(Invalid, match="marks a ultrafeedback row, but format 'trl' was asked for"):
        import_dataset(LAYOUTS / "ultrafeedback_raw.jsonl", format="trl")
    with pytest.raises(Invalid, match="not one of trl, alpaca, sharegpt, ultrafeedback"):
        import_dataset(LAYOUTS / "ultrafeedback_raw.jsonl", format="arena")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"prompt": "q", "completions": [{"response": "a", "score": 1}, {"response": "b"}]}],
            'row 1: field "completions[1].score" is missing: give one of score, rating, fine-grained_score, '
            "overall_score or annotations with a Rating (the completion has 'response')",
        ),
        (
            [{"prompt": "q", "completions": [{"response": "a", "score": 1}, {"text": "b", "score": "high"}]}],
            "row 1: field \"completions[1].score\" must be a number, got 'high'",
        ),
        (
            [{"prompt": "q", "completions": [{"response": "a", "score": 1}]}],
            'row 1: field "completions" must hold at least two scored completions, got 1',
        ),
        (
            [{"completions": [{"response": "a", "score": 1}, {"response": "b", "score": 2}]}],
            'row 1: field "prompt" is missing',
        ),
        (
            [{"messages": [_msg("user", "q"), _msg("assistant", "a")], "label": "good"}],
            "row 1: field \"label\" must be true or false, got 'good'",
        ),
        (
            [{"messages": [_msg("user", "q")], "label": True}],
            'row 1: field "messages" must end with a assistant message',
        ),
        (
            [{"question": "q", "answers": ["a"]}],
            "row 1: field \"(row)\" has no known fields (it has 'question', 'answers'); accepted layouts: "
            "messages (SFT); prompt + chosen + rejected (pairs); prompt + completion + label (KTO); "
            "messages + label (LLaMA-Factory KTO)",
        ),
    ],
)
def test_layout_errors_name_the_row_field_and_what_is_accepted(tmp_path: Path, rows, message):
    with pytest.raises(Invalid) as e:
        import_dataset(_write_jsonl(tmp_path / "data.jsonl", rows))
    assert any(error.startswith(message) for error in e.value.errors), e.value.errors


def test_a_file_of_ties_only_has_no_pairs(tmp_path: Path):
    row = {"prompt": "q", "completions": [{"response": "a", "score": 3}, {"response": "b", "score": 3}]}
    with pytest.raises(
        Invalid, match="no preference pairs: in every row the completions have the same score"
    ):
        import_dataset(_write_jsonl(tmp_path / "ties.jsonl", [row]))


def test_a_stage_given_the_wrong_layout_names_the_columns_and_the_layouts_it_takes(tmp_path: Path):
    sft = _write_jsonl(tmp_path / "sft.jsonl", [{"messages": [_msg("user", "q"), _msg("assistant", "a")]}])
    with pytest.raises(Invalid) as e:
        load_training_data(sft, "kto")
    assert "holds sft rows (trl format; columns messages), not kto" in e.value.message
    assert "messages + label (LLaMA-Factory)" in e.value.message
    assert "prompt + completion + label (TRL)" in e.value.message
    with pytest.raises(Invalid) as e:
        load_training_data(LAYOUTS / "kto_llamafactory.json", "pairs")
    assert "holds kto rows (trl format; columns messages, label), not pairs" in e.value.message
    assert "ultrafeedback prompt/instruction + completions with scores" in e.value.message


@pytest.mark.parametrize(
    ("name", "kind", "n_train"),
    [
        ("kto_llamafactory.json", "kto", 8),
        ("kto_trl_standard.jsonl", "kto", 16),
        ("dpo_sharegpt.json", "pairs", 8),
        ("dpo_sharegpt.json", "kto", 16),  # pairs unpaired for KTO, as before
        ("ultrafeedback_raw.jsonl", "pairs", 18),
        ("ultrafeedback_binarized.jsonl", "pairs", 8),
        ("ultrafeedback_scored.jsonl", "pairs", 16),
        ("ultrafeedback_scored.jsonl", "prompts", 8),
    ],
)
def test_each_layout_loads_for_the_stages_it_fits(name, kind, n_train):
    data = load_training_data(LAYOUTS / name, kind, eval_fraction=0)
    assert (data.kind, len(data.train)) == (kind, n_train)


def test_pairs_of_one_ultrafeedback_prompt_stay_on_one_side_of_the_split():
    data = load_training_data(LAYOUTS / "ultrafeedback_raw.jsonl", "pairs", eval_fraction=0.4, seed=1)
    train_prompts = {json.dumps(r["prompt"]) for r in data.train}
    assert data.eval and not train_prompts & {json.dumps(r["prompt"]) for r in data.eval}


# ----- training through `tunehub train` ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "name", "kind", "layout"),
    [
        ("kto", "kto_llamafactory.json", "kto", "trl"),
        ("kto", "kto_trl_standard.jsonl", "kto", "trl"),
        ("kto", "kto_trl_conversational.jsonl", "kto", "trl"),
        ("dpo", "dpo_sharegpt.json", "pairs", "sharegpt"),
        ("reward", "dpo_sharegpt.json", "pairs", "sharegpt"),
        ("dpo", "ultrafeedback_raw.jsonl", "pairs", "ultrafeedback"),
        ("reward", "ultrafeedback_raw.jsonl", "pairs", "ultrafeedback"),
        ("dpo", "ultrafeedback_binarized.jsonl", "pairs", "trl"),
        ("reward", "ultrafeedback_scored.jsonl", "pairs", "ultrafeedback"),
    ],
)
def test_each_layout_trains_through_tunehub_train(demo_model, tmp_path, stage, name, kind, layout):
    from safetensors.torch import load_file

    done = tunehub_process(
        "train", stage, "--data", str(LAYOUTS / name), "--name", "layout", "--base", str(demo_model),
        "--data-dir", str(tmp_path), "--max-steps", "2", "--batch-size", "4", "--learning-rate", "1e-3",
        "--set", "eval_fraction=0", "--set", "loss_check_steps=0", "--set", "logging_steps=1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    adapter_dir = Path(done.stdout.strip().splitlines()[-1])
    metadata = json.loads((adapter_dir / METADATA_FILE).read_text())
    assert metadata["stage"] == stage and metadata["metrics"]["steps"] == 2
    assert (metadata["dataset"]["kind"], metadata["dataset"]["format"]) == (kind, layout)
    # Learning, not just no crash: LoRA's B matrices start at zero and two steps move them.
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    lora_b = [t for key, t in weights.items() if "lora_B" in key]
    assert lora_b and any(t.abs().max() > 0 for t in lora_b)
