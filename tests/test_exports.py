"""Tests of pair expansion and of the dataset exports: contents, dedupe, split, snapshots, loading, TRL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feedback.errors import Invalid
from feedback.exports import export_dataset
from feedback.pairs import expand_ranking
from feedback.store import Store

P1 = [{"role": "user", "content": "What is the capital of France?"}]
P2 = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "and 3+3?"},
]
P3 = [{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}]  # OpenAI content parts


# -- pair expansion -----------------------------------------------------------------------------------


def test_reward_mode_gives_every_pair_weighted_to_sum_to_one():
    pairs = expand_ranking([["a"], ["b"], ["c"]], "reward")
    assert [(p.chosen, p.rejected, p.gap) for p in pairs] == [("a", "b", 1), ("a", "c", 2), ("b", "c", 1)]
    assert sum(p.weight for p in pairs) == pytest.approx(1.0)


def test_dpo_mode_gives_the_best_against_each_other():
    pairs = expand_ranking([["a"], ["b"], ["c"], ["d"]], "dpo")
    assert [(p.chosen, p.rejected) for p in pairs] == [("a", "b"), ("a", "c"), ("a", "d")]
    assert sum(p.weight for p in pairs) == pytest.approx(1.0)


def test_ties_give_no_pair():
    assert expand_ranking([["a", "b"]], "reward") == []
    reward = expand_ranking([["a", "b"], ["c"]], "reward")
    assert {(p.chosen, p.rejected) for p in reward} == {("a", "c"), ("b", "c")}
    assert {(p.chosen, p.rejected) for p in expand_ranking([["a"], ["b", "c"]], "dpo")} == {
        ("a", "b"),
        ("a", "c"),
    }
    assert expand_ranking([["a"], []], "dpo") == []
    six = expand_ranking([[x] for x in "abcdef"], "reward")
    assert len(six) == 15 and sum(p.weight for p in six) == pytest.approx(1.0)
    with pytest.raises(Invalid, match="'best'"):
        expand_ranking([["a"], ["b"]], "best")


# -- a store with every kind of vote ------------------------------------------------------------------


@pytest.fixture
def voted(store: Store) -> dict[str, int]:
    """Generations in three conversations and one vote of every kind; returns the vote ids by name."""

    def answer(prompt, model, text, conversation):
        return store.add_generation(prompt=prompt, model=model, text=text, conversation_id=conversation).id

    g1, g2, g3 = (
        answer(P1, m, t, "conv-1") for m, t in [("base", "Paris."), ("a", "It is Paris."), ("b", "Lyon.")]
    )
    h1, h2 = (answer(P2, m, t, "conv-2") for m, t in [("base", "6"), ("a", "7")])
    k1, k2 = (answer(P3, m, t, "conv-3") for m, t in [("base", "hi"), ("a", "hello")])
    votes = {
        "up_alice": store.add_thumbs(g1, "up", rater="alice"),
        "up_bob": store.add_thumbs(g1, "up", rater="bob"),  # the same row again: deduplicated
        "down": store.add_thumbs(g3, "down", rater="alice", tags=["wrong"]),
        "pair_a": store.add_pairwise(g2, g3, "a", rater="alice"),
        "pair_b": store.add_pairwise(h2, h1, "b", rater="bob"),
        "tie": store.add_pairwise(k1, k2, "tie", rater="carol"),
        "both_bad": store.add_pairwise(g1, g3, "both_bad", rater="carol"),
        "ranking": store.add_ranking([[g1, g2], g3], rater="bob"),
        "edit": store.add_edit(h2, "3+3 is 6.", rater="alice"),
    }
    return {name: vote.id for name, vote in votes.items()}


def _all(export):
    return export.train + export.eval


def _last_text(messages):
    return messages[-1]["content"]


def test_sft_holds_thumbs_up_edits_and_winners(store: Store, voted):
    export = export_dataset(store, "sft", eval_fraction=0)
    answers = sorted((m["messages"][-2]["content"], _last_text(m["messages"])) for m in _all(export))
    assert answers == [
        ("What is the capital of France?", "It is Paris."),
        ("What is the capital of France?", "Paris."),
        ("and 3+3?", "3+3 is 6."),
        ("and 3+3?", "6"),
    ]
    used = {"up_alice", "up_bob", "pair_a", "pair_b", "ranking", "edit"}
    assert set(export.vote_ids) == {voted[name] for name in used}


def test_pairs_in_dpo_mode_with_margin_and_weight(store: Store, voted):
    export = export_dataset(store, "pairs", mode="dpo", margin=True, weight=True, eval_fraction=0)
    rows = _all(export)
    assert sorted((_last_text(r["chosen"]), _last_text(r["rejected"])) for r in rows) == [
        ("3+3 is 6.", "7"),
        ("6", "7"),
        ("It is Paris.", "Lyon."),
        ("Paris.", "Lyon."),
    ]
    assert all(r["prompt"][-1]["role"] == "user" and r["chosen"][0]["role"] == "assistant" for r in rows)
    assert all(r["margin"] == 1.0 and 0 < r["weight"] <= 1 for r in rows)
    assert voted["tie"] not in export.vote_ids and voted["both_bad"] not in export.vote_ids
    plain = export_dataset(store, "pairs", eval_fraction=0)
    assert "margin" not in plain.train[0] and "weight" not in plain.train[0]


def test_kto_labels(store: Store, voted):
    rows = _all(export_dataset(store, "kto", eval_fraction=0))
    labelled = sorted((_last_text(r["completion"]), r["label"]) for r in rows)
    assert labelled == [
        ("3+3 is 6.", True),
        ("6", True),
        ("7", False),
        ("It is Paris.", True),
        ("Lyon.", False),
        ("Paris.", False),  # both_bad: both answers become negatives
        ("Paris.", True),
    ]


def test_prompts_are_distinct_and_plain_text(store: Store, voted):
    rows = _all(export_dataset(store, "prompts", eval_fraction=0))
    assert len(rows) == 3
    assert {"role": "user", "content": "Say hi"} in [r["prompt"][0] for r in rows]  # content parts joined


def test_snapshot_records_hash_and_votes(store: Store, voted, tmp_path: Path):
    export = export_dataset(store, "sft", tmp_path / "sft", eval_fraction=0)
    snapshot = store.get_dataset(export.dataset_id)
    assert (snapshot.kind, snapshot.format, snapshot.source) == ("sft", "trl", "export")
    assert snapshot.vote_ids == export.vote_ids and snapshot.content_hash == export.content_hash
    assert snapshot.n_rows == 4 and snapshot.path == str(tmp_path / "sft")
    assert export.paths == {"train": str(tmp_path / "sft" / "train.jsonl")}
    again = export_dataset(store, "sft", eval_fraction=0)
    assert again.content_hash == export.content_hash and again.dataset_id != export.dataset_id
    store.add_thumbs(voted_generation(store, "hi"), "up", rater="dave")
    assert export_dataset(store, "sft", eval_fraction=0).content_hash != export.content_hash


def voted_generation(store: Store, text: str) -> str:
    return next(g.id for g in store.list_generations() if g.text == text)


def test_split_is_by_conversation_and_deterministic(store: Store, tmp_path: Path):
    for i in range(40):
        first = [{"role": "user", "content": f"question {i}"}]
        second = [*first, {"role": "assistant", "content": "ok"}, {"role": "user", "content": f"more {i}"}]
        for prompt in (first, second):  # two answers in one conversation: they must stay together
            g = store.add_generation(prompt=prompt, model="base", text="answer", conversation_id=f"conv-{i}")
            store.add_thumbs(g.id, "up", rater="alice")
    export = export_dataset(store, "sft", tmp_path / "sft.jsonl", eval_fraction=0.3)

    def conversations(rows):
        return [r["messages"][0]["content"] for r in rows]

    train, evaluation = conversations(export.train), conversations(export.eval)
    assert len(train) + len(evaluation) == 80 and train and evaluation
    assert not set(train) & set(evaluation)
    assert all(train.count(c) == 2 for c in train) and all(evaluation.count(c) == 2 for c in evaluation)
    assert export.paths == {"train": str(tmp_path / "sft.jsonl"), "eval": str(tmp_path / "sft.eval.jsonl")}
    assert export_dataset(store, "sft", eval_fraction=0.3).content_hash == export.content_hash


def test_bad_export_requests(store: Store, voted):
    with pytest.raises(Invalid, match="'alpaca'"):
        export_dataset(store, "pairs", format="alpaca")
    with pytest.raises(Invalid, match="'chat'"):
        export_dataset(store, "chat")
    with pytest.raises(Invalid, match="1.5"):
        export_dataset(store, "sft", eval_fraction=1.5)


def test_empty_store_has_nothing_to_export(store: Store):
    with pytest.raises(Invalid, match="nothing to export"):
        export_dataset(store, "pairs")


# -- the files load with `datasets` and pass TRL's data preparation -----------------------------------

EXPORTS = [
    ("sft", "trl"),
    ("sft", "alpaca"),
    ("sft", "sharegpt"),
    ("pairs", "trl"),
    ("kto", "trl"),
    ("prompts", "trl"),
]


@pytest.mark.parametrize(("kind", "format"), EXPORTS)
def test_every_export_loads_with_datasets(store: Store, voted, tmp_path: Path, kind, format):
    import datasets

    export = export_dataset(
        store, kind, tmp_path / kind, format=format, eval_fraction=0, margin=True, weight=True
    )
    loaded = datasets.load_dataset("json", data_files=export.paths, cache_dir=str(tmp_path / "cache"))
    assert loaded["train"].num_rows == len(export.train)
    assert loaded["train"].to_list() == export.train
    expected_columns = {
        "trl": {
            "sft": ["messages", "reasons"],
            "pairs": ["prompt", "chosen", "rejected", "margin", "weight", "reasons"],
            "kto": ["prompt", "completion", "label", "reasons"],
            "prompts": ["prompt"],
        }[kind],
        "alpaca": ["instruction", "input", "output", "system", "history", "reasons"],
        "sharegpt": ["conversations", "system", "reasons"],
    }[format]
    assert loaded["train"].column_names == expected_columns
    if format == "alpaca":
        with_history = next(r for r in export.train if r["history"])
        assert with_history == {
            "instruction": "and 3+3?",
            "input": "",
            "output": with_history["output"],
            "system": "Be brief.",
            "history": [["2+2?", "4"]],
            "reasons": [],
        }
    if format == "sharegpt":
        assert {t["from"] for r in export.train for t in r["conversations"]} == {"human", "gpt"}


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """A word-level tokenizer built in-process with a ChatML-like template: no downloads."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "<|im_start|>", "<|im_end|>", "user", "assistant", "system", "Paris", ".", "hi"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", chat_template=template)


@pytest.mark.parametrize("kind", ["sft", "pairs", "kto", "prompts"])
def test_exports_pass_trl_data_preparation(store: Store, voted, tmp_path: Path, tiny_tokenizer, kind):
    import datasets
    from trl.data_utils import apply_chat_template, is_conversational, maybe_apply_chat_template

    export = export_dataset(store, kind, tmp_path / kind, eval_fraction=0, margin=True, weight=True)
    dataset = datasets.load_dataset(
        "json", data_files=export.paths, split="train", cache_dir=str(tmp_path / "c")
    )
    assert all(is_conversational(row) for row in dataset)
    rendered = dataset.map(maybe_apply_chat_template, fn_kwargs={"processing_class": tiny_tokenizer})
    first = rendered[0]
    if kind == "sft":
        assert first["text"].startswith("<|im_start|>") and first["text"].endswith("<|im_end|>\n")
    else:
        assert first["prompt"].endswith("<|im_start|>assistant\n")
    if kind == "pairs":
        assert first["chosen"] == _last_text(export.train[0]["chosen"]) + "<|im_end|>\n"
    if kind == "kto":
        assert isinstance(first["label"], bool)
    # The same through the non-`maybe` entry point, row by row.
    for row in export.train:
        assert set(apply_chat_template(row, tiny_tokenizer)) <= {
            "text",
            "prompt",
            "chosen",
            "rejected",
            "completion",
            "label",
        }


def test_exported_sft_file_is_plain_jsonl(store: Store, voted, tmp_path: Path):
    export = export_dataset(store, "sft", tmp_path / "out.jsonl", eval_fraction=0)
    lines = Path(export.paths["train"]).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == export.train
