"""Tests of the demo model builder: corpus, tokenizer and chat template, tiny deterministic builds.

The fast tests build throwaway models of a few steps; the `slow` one builds the full recipe (about a
minute on two cores) and checks that it answers held-out prompts well above chance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.demo import build as demo_build
from training.demo.build import DEMO_MODEL_VERSION, build_demo_model, ensure_demo_model, evaluate_checkable
from training.demo.corpus import (
    CLOSING,
    FAMILIES,
    REMARK,
    REPLY_STYLES,
    SMALL_TALK,
    CheckablePrompt,
    checkable_prompts,
    conversations,
    is_correct,
    styled,
)
from training.demo.pretrain import encode_conversations
from training.demo.tokenizer import train_tokenizer

TINY_STEPS = 4


@pytest.fixture(scope="module")
def tokenizer():
    """A demo tokenizer trained in-process on a small corpus."""
    return train_tokenizer(conversations(1000, seed=0))


@pytest.fixture(scope="module")
def tiny_builds(tmp_path_factory) -> tuple[Path, Path, list[tuple[int, int]]]:
    """Two builds with the same seed and a few steps, and the progress calls of the first."""
    root = tmp_path_factory.mktemp("demo")
    calls: list[tuple[int, int]] = []
    first = build_demo_model(
        root / "a", steps=TINY_STEPS, seed=0, progress=lambda done, total: calls.append((done, total))
    )
    second = build_demo_model(root / "b", steps=TINY_STEPS, seed=0)
    return first, second, calls


# --- corpus -------------------------------------------------------------------------------------------------


def test_corpus_is_deterministic_and_seeded():
    assert conversations(50, seed=3) == conversations(50, seed=3)
    assert conversations(50, seed=3) != conversations(50, seed=4)


def test_corpus_has_system_prompts_multi_turn_and_small_talk():
    corpus = conversations(500, seed=0)
    assert any(c[0]["role"] == "system" for c in corpus)
    assert any(sum(m["role"] == "user" for m in c) >= 2 for c in corpus)
    replies = {m["content"] for c in corpus for m in c if m["role"] == "assistant"}
    assert "I am the tunehub demo assistant, a tiny model built on this machine." in replies
    for messages in corpus:  # roles alternate after the optional system prompt and end with the assistant
        roles = [m["role"] for m in messages if m["role"] != "system"]
        assert roles == ["user", "assistant"] * (len(roles) // 2)


def test_task_replies_come_in_three_styles_that_keep_the_formula_first():
    """Issue 6: the base's own samples differ in length for a rater to choose among; the checked part leads."""
    replies = [m["content"] for c in conversations(4_000, seed=0) for m in c if m["role"] == "assistant"]
    small_talk = {reply for _, reply in SMALL_TALK}
    tasks = [r for r in replies if r not in small_talk]
    chatty = [r for r in tasks if r.endswith(f"{REMARK} {CLOSING}")]
    friendly = [r for r in tasks if r.endswith(REMARK)]
    brief = [r for r in tasks if not r.endswith((REMARK, CLOSING))]
    assert len(brief) + len(friendly) + len(chatty) == len(tasks)
    for style, found in (("brief", brief), ("friendly", friendly), ("chatty", chatty)):
        assert abs(len(found) / len(tasks) - REPLY_STYLES[style]) < 0.03, (style, len(found) / len(tasks))
    assert styled("12 + 7 = 19.", "chatty") == f"12 + 7 = 19. {REMARK} {CLOSING}"
    assert is_correct(CheckablePrompt("arithmetic", [], "19"), styled("12 + 7 = 19.", "chatty"))
    with pytest.raises(ValueError, match="'terse'"):
        styled("12 + 7 = 19.", "terse")


def test_heldout_prompts_never_appear_in_the_training_corpus():
    trained = {m["content"] for c in conversations(20_000, seed=0) for m in c if m["role"] == "user"}
    heldout = checkable_prompts(800, seed=1234)
    assert not {p.messages[-1]["content"] for p in heldout} & trained
    # ... while the train split is what the corpus is made of.
    seen = [p.messages[-1]["content"] in trained for p in checkable_prompts(200, seed=1, split="train")]
    assert sum(seen) > 150


def test_checkable_prompts_cycle_the_families_and_end_with_a_question():
    prompts = checkable_prompts(8, seed=0)
    assert [p.family for p in prompts] == list(FAMILIES) * 2
    assert all(p.messages[-1]["role"] == "user" and p.answer for p in prompts)
    assert checkable_prompts(8, seed=0) == prompts
    with pytest.raises(ValueError, match="'test'"):
        checkable_prompts(1, seed=0, split="test")


@pytest.mark.parametrize(
    ("answer", "reply", "expected"),
    [
        ("19", "12 + 7 = 19.", True),
        ("19", "19", True),
        ("5", "10 - 5 = 6.", False),  # an echoed operand is not the answer: the last number counts
        ("3000", "3 km = 3,000 m.", True),
        ("300", "3 km = 3000 m.", False),
        ("0", "0 * 7 = 0.", True),
        ("Paris", "Paris is the capital of France.", True),
        ("Paris", "the capital of france is PARIS", True),
        ("Paris", "Parisville is the capital of France.", False),
        ("Paris", "Berlin is the capital of France.", False),
        ("Buenos Aires", "Buenos Aires is the capital of Argentina.", True),
        ("elppa", "apple reversed is elppa.", True),
        ("elppa", "apple reversed is elpp.", False),
    ],
)
def test_is_correct(answer: str, reply: str, expected: bool):
    prompt = CheckablePrompt(family="any", messages=[{"role": "user", "content": "?"}], answer=answer)
    assert is_correct(prompt, reply) is expected


# --- tokenizer and chat template ---------------------------------------------------------------------------


def test_tokenizer_special_tokens(tokenizer):
    assert len(tokenizer) == 1024
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|pad|>"
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") not in (tokenizer.unk_token_id, None)
    assert tokenizer.encode("<|im_start|>user\n", add_special_tokens=False)[
        0
    ] == tokenizer.convert_tokens_to_ids("<|im_start|>")


@pytest.mark.parametrize(
    "text",
    ["What is 12 + 7?", "  two  spaces\n\nnewlines\ttab ", "Héllo wörld, Zürich — 東京 😀", "<|im_end|>\n"],
)
def test_decoding_round_trips(tokenizer, text: str):
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_chat_template_shape(tokenizer):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 12 + 7?"},
        {"role": "assistant", "content": "12 + 7 = 19."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You're welcome!"},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n"
        "<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n"
        "<|im_start|>assistant\n12 + 7 = 19.<|im_end|>\n"
        "<|im_start|>user\nThanks!<|im_end|>\n"
        "<|im_start|>assistant\nYou're welcome!<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n")
    # OpenAI-style content blocks render like plain strings.
    blocks = [{"role": "user", "content": [{"type": "text", "text": "What is 12 + 7?"}]}]
    assert (
        tokenizer.apply_chat_template(blocks, tokenize=False)
        == "<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n"
    )


def test_assistant_mask_covers_reply_im_end_and_trailing_newline(tokenizer):
    messages = [
        {"role": "user", "content": "What is 12 + 7?"},
        {"role": "assistant", "content": "12 + 7 = 19."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You're welcome!"},
    ]
    out = tokenizer.apply_chat_template(messages, return_assistant_tokens_mask=True, return_dict=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    masked = [tokenizer.decode(ids[i : i + 1]) for i in range(len(ids)) if mask[i]]
    assert "".join(masked) == "12 + 7 = 19.<|im_end|>\nYou're welcome!<|im_end|>\n"
    # The newline after each <|im_end|> is its own token and trained: the loss-mask pitfall of DESIGN.md.
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for i, token in enumerate(ids):
        if token == im_end and mask[i]:
            assert tokenizer.decode(ids[i + 1 : i + 2]) == "\n" and mask[i + 1] == 1


def test_encode_conversations_matches_rendering_each_conversation(tokenizer):
    corpus = conversations(300, seed=5)
    texts = tokenizer.apply_chat_template(corpus, tokenize=False)
    plain = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    assert encode_conversations(tokenizer, corpus) == plain


def test_trl_accepts_the_chat_template(tokenizer):
    chat_template_utils = pytest.importorskip("trl.chat_template_utils")
    assert chat_template_utils.get_training_chat_template(tokenizer) is None  # no patching needed
    assert chat_template_utils.is_chat_template_stop_token_trained(tokenizer)


# --- builds ------------------------------------------------------------------------------------------------


def test_two_builds_with_the_same_seed_are_identical(tiny_builds):
    first, second, _ = tiny_builds
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()


def test_build_reports_progress_and_metadata(tiny_builds):
    first, _, calls = tiny_builds
    assert calls == [(i, TINY_STEPS) for i in range(1, TINY_STEPS + 1)]
    metadata = json.loads((first / "tunehub_demo.json").read_text())
    assert metadata["version"] == DEMO_MODEL_VERSION
    assert metadata["steps"] == TINY_STEPS and metadata["seed"] == 0
    assert 0.5e6 < metadata["parameters"] < 1.5e6
    assert metadata["final_loss"] > 0 and metadata["train_seconds"] > 0
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no temporary directory left


def test_build_loads_with_auto_classes_and_generates(tiny_builds):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model_dir = tiny_builds[0]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    # The template travels in tokenizer_config.json, generation markers included.
    assert (
        json.loads((model_dir / "tokenizer_config.json").read_text())["chat_template"]
        == tokenizer.chat_template
    )
    assert "endgeneration" in tokenizer.chat_template
    generation_config = GenerationConfig.from_pretrained(model_dir)
    assert generation_config.eos_token_id == tokenizer.eos_token_id == model.config.eos_token_id
    assert generation_config.pad_token_id == tokenizer.pad_token_id == model.config.pad_token_id
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi!"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]


def test_build_replaces_an_earlier_demo_model_but_not_other_directories(tiny_builds, tmp_path):
    target = tmp_path / "model"
    build_demo_model(target, steps=1)
    build_demo_model(target, steps=2)
    assert json.loads((target / "tunehub_demo.json").read_text())["steps"] == 2
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="precious"):
        build_demo_model(precious, steps=1)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_ensure_demo_model_builds_once_then_uses_the_cache(tmp_path, monkeypatch):
    calls = []

    def quick_build(out_dir, *, progress=None):  # stands in for the full recipe (a minute)
        calls.append(out_dir)
        return build_demo_model(out_dir, steps=1, progress=progress)

    monkeypatch.setattr(demo_build, "build_demo_model", quick_build)
    model_dir = ensure_demo_model(tmp_path)
    assert model_dir == tmp_path / "models" / f"demo-{DEMO_MODEL_VERSION}"
    assert (model_dir / "tunehub_demo.json").is_file()
    assert ensure_demo_model(tmp_path) == model_dir
    assert len(calls) == 1
    assert [p.name for p in model_dir.parent.iterdir()] == [model_dir.name]  # no staging directory left


def test_ensure_demo_model_keeps_a_model_another_process_finished_first(tmp_path, monkeypatch):
    model_dir = tmp_path / "models" / f"demo-{DEMO_MODEL_VERSION}"

    def racing_build(out_dir, *, progress=None):
        build_demo_model(model_dir, steps=1)  # the other process wins the race...
        return build_demo_model(out_dir, steps=2)  # ...while ours is still building

    monkeypatch.setattr(demo_build, "build_demo_model", racing_build)
    assert ensure_demo_model(tmp_path) == model_dir
    assert json.loads((model_dir / "tunehub_demo.json").read_text())["steps"] == 1
    assert [p.name for p in model_dir.parent.iterdir()] == [model_dir.name]


def test_evaluate_checkable_scores_every_family(tiny_builds):
    scores = evaluate_checkable(tiny_builds[0], n_per_family=4)
    assert set(scores) == {*FAMILIES, "macro"}
    assert all(0.0 <= value <= 1.0 for value in scores.values())


@pytest.mark.slow
def test_full_build_answers_heldout_prompts(tmp_path):
    model_dir = build_demo_model(tmp_path / "demo")
    scores = evaluate_checkable(model_dir)
    print("held-out accuracy:", scores)
    assert scores["macro"] >= 0.5, scores
