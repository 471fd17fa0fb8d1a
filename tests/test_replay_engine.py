"""The regression replay through the serving engine (issue 13, item 4): the engine's `score` (teacher-forced
token log-probabilities, batched, adapters per row) against a plain float32 forward; the greedy per-token
KL estimate against the full-vocabulary KL the replay used before; the replay set chosen for the model
(the demo model's families it can do; a shipped general set with lenient matching and a held-out text for
any other model; TUNEHUB_REPLAY_PROMPTS still wins); perplexity in the report and in the guard.

Run: .venv/bin/python -m pytest tests/test_replay_engine.py -q -s     (-s prints the two KL figures)
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from feedback.promotion_rule import PromotionRule, guard_reasons
from hub.settings import Settings
from serving.engine import ScoreRequest
from tests.support.adapters import make_lora_adapter
from training.demo.corpus import conversations
from training.replay_data.make_general import general_rows
from training.replay_sets import (
    DEMO_FAMILIES,
    GENERAL_PROMPTS,
    check_reply,
    is_demo_model,
    lenient_match,
    replay_set,
)

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----- the replay set ----------------------------------------------------------------------------------


def test_the_demo_model_replays_its_own_families_and_a_real_model_the_general_set(demo_model, tmp_path):
    demo = replay_set(demo_model)
    assert is_demo_model(demo_model) and demo.kind == "demo" and demo.text is None
    assert len(demo.prompts) == 50 and {p.family for p in demo.prompts} == set(DEMO_FAMILIES)
    assert "arithmetic" not in DEMO_FAMILIES  # ~0.3 greedy accuracy: too weak to show a loss

    real = tmp_path / "real"  # any model without the demo build's marker
    real.mkdir()
    (real / "config.json").write_text("{}")
    general = replay_set(real)
    assert not is_demo_model(real) and general.kind == "general" and len(general.text) > 3000
    assert 100 <= len(general.prompts) <= 200
    families = {p.family for p in general.prompts}
    assert families == {"capital", "conversion", "arithmetic", "spelling", "calendar"}

    custom = tmp_path / "mine.jsonl"
    custom.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}], "answer": "hello"}) + "\n")
    assert replay_set(real, custom).prompts[0].answer == "hello" and replay_set(real, custom).text
    assert replay_set(demo_model, custom).kind == "custom"


def test_the_shipped_general_set_is_what_its_script_writes_and_ships_in_the_wheel():
    rows = [json.loads(line) for line in GENERAL_PROMPTS.read_text().splitlines()]
    assert rows == general_rows()
    assert '"*.jsonl"' in (ROOT / "pyproject.toml").read_text()  # package data: the wheel carries it
    for row in rows:  # an answer never repeats a number of its own question
        question = row["messages"][-1]["content"]
        if row["answer"].isdigit():
            assert row["answer"] not in question.split(), row


def test_general_answers_match_leniently():
    rows = {r["messages"][-1]["content"]: r for r in general_rows()}
    prompts = {p.messages[-1]["content"]: p for p in replay_set("/no/such/model").prompts}
    spell = next(q for q in prompts if q.startswith("How do you spell the number 45"))
    assert check_reply(prompts[spell], "It is spelled **Forty-Five**.")
    assert check_reply(prompts["How many days are there in a week?"], "A week has seven days.")
    assert check_reply(prompts["How many days are there in a week?"], "There are 7 days in a week.")
    assert not check_reply(prompts["How many days are there in a week?"], "A week has 5 working days.")
    france = next((q for q in prompts if "capital of France" in q), None)
    if france:
        assert check_reply(prompts[france], "The capital of France is Paris.")
    assert lenient_match(["Reykjavik"], "It's Reykjavík.")
    assert lenient_match(["3000"], "3 kilometres is 3,000 metres.", "How many metres are in 3 kilometres?")
    assert not lenient_match(["3"], "3 kilometres is 3,000 metres.", "How many metres are in 3 kilometres?")
    assert not lenient_match(["Rome"], "Romeo")
    assert rows  # the script's rows and the loaded prompts are the same questions
    assert set(rows) == set(prompts)


# ----- the engine's scoring ----------------------------------------------------------------------------


def test_the_local_engine_scores_tokens_like_a_plain_forward_pass(demo_model, adapters_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from serving.loader import load_local_engine

    messages = [{"role": "user", "content": "What is the capital of Spain?"}]

    async def scored():
        engine = load_local_engine(demo_model, model_name="base", dtype="float32")
        await engine.start()
        try:
            await engine.load_adapter("b", adapters_dir / "b")
            ids = engine.tokenizer.encode(" Madrid is the capital.", add_special_tokens=False)
            requests = [
                ScoreRequest(messages=messages, continuation_ids=ids),
                ScoreRequest(messages=messages, continuation_ids=ids, adapter="b"),
                ScoreRequest(prompt="The market opens early on Saturday mornings."),
            ]
            return await engine.score(requests)
        finally:
            await engine.close()

    base_scores, adapter_scores, text_scores = asyncio.run(scored())
    assert base_scores.token_ids == adapter_scores.token_ids and base_scores.logprobs[0] is None
    assert len(base_scores.continuation_logprobs) == len(base_scores.token_ids) - base_scores.prompt_tokens
    assert text_scores.prompt_tokens == len(text_scores.token_ids) and text_scores.continuation_logprobs == []

    model = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(model, str(adapters_dir / "b")).eval()

    def plain(ids: list[int], adapter: bool) -> list[float]:
        tensor = torch.tensor([ids])
        with torch.no_grad():
            if adapter:
                logits = model(input_ids=tensor).logits
            else:
                with model.disable_adapter():
                    logits = model(input_ids=tensor).logits
        return (
            torch.log_softmax(logits[0, :-1].float(), -1).gather(-1, tensor[0, 1:, None]).squeeze(-1).tolist()
        )

    assert base_scores.logprobs[1:] == pytest.approx(plain(base_scores.token_ids, False), abs=1e-4)
    assert adapter_scores.logprobs[1:] == pytest.approx(plain(adapter_scores.token_ids, True), abs=1e-4)
    assert adapter_scores.logprobs != base_scores.logprobs
    assert text_scores.logprobs[1:] == pytest.approx(plain(text_scores.token_ids, False), abs=1e-4)


@pytest.mark.slow
def test_the_greedy_kl_estimate_stays_close_to_the_full_vocabulary_kl(full_demo_model, tmp_path):
    """Prints both figures for adapters from harmless to far past the guard's bound (2 nats)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.replay import greedy_answers, load_prompts, mean_kl, run_replay

    tokenizer = AutoTokenizer.from_pretrained(full_demo_model)
    tokenizer.padding_side = "left"
    prompts = load_prompts()
    figures = []
    for scale in (0.0, 0.5, 1.0, 1.5, 3.0):
        path = make_lora_adapter(
            full_demo_model, tmp_path / f"s{scale}", rank=8, seed=1, scale=scale, targets=TARGETS
        )
        estimate = run_replay(full_demo_model, path)["candidate"]["kl"]
        model = AutoModelForCausalLM.from_pretrained(full_demo_model, dtype=torch.float32).eval()
        model = PeftModel.from_pretrained(model, str(path)).eval()
        full = mean_kl(model, tokenizer, prompts, greedy_answers(model, tokenizer, prompts, 32))
        figures.append((scale, estimate, full))
        print(
            f"adapter scale {scale}: greedy KL estimate {estimate:.4f}, full-vocabulary KL {full:.4f} nats/token"
        )
    for scale, estimate, full in figures:
        if scale == 0.0:
            assert estimate == pytest.approx(0.0, abs=1e-6) and full == pytest.approx(0.0, abs=1e-6)
        else:
            assert estimate > 0 and abs(estimate - full) <= 0.35 * full + 0.02, (scale, estimate, full)
    # both rank the adapters alike, so a bound set on one reads the same on the other
    assert [f[1] for f in figures] == sorted(f[1] for f in figures)


# ----- perplexity ----------------------------------------------------------------------------------------


def test_the_guard_refuses_a_perplexity_rise_above_the_bound():
    rule = PromotionRule()
    incumbent = {"name": "base", "accuracy": 0.8, "kl": 0.0, "perplexity": 20.0}
    fine = {"name": "km@1", "accuracy": 0.8, "kl": 0.1, "perplexity": 21.9}
    worse = dict(fine, perplexity=23.0)
    assert guard_reasons(rule, fine, incumbent) == []
    [reason] = guard_reasons(rule, worse, incumbent)
    assert "perplexity on the held-out text rose from 20 (base) to 23 (km@1): 15% more" in reason
    assert guard_reasons(PromotionRule(max_perplexity_rise=0.2), worse, incumbent) == []
    given = Settings.from_sources(env={"TUNEHUB_PROMOTION_MAX_PERPLEXITY_RISE": "0.2"})
    assert PromotionRule(**given.promotion_rule_values()).max_perplexity_rise == 0.2
    assert guard_reasons(rule, {"name": "x", "accuracy": 0.8}, incumbent) == []  # not measured: no refusal


@pytest.fixture(scope="module")
def real_like_model(tmp_path_factory, demo_model) -> Path:
    """The quick demo model without the demo build's marker: replayed as a real model would be."""
    path = tmp_path_factory.mktemp("real-like") / "model"
    shutil.copytree(demo_model, path)
    (path / "tunehub_demo.json").unlink()
    return path


def test_a_real_model_replay_reports_perplexity_and_the_guard_reads_it(real_like_model, tmp_path):
    from training.replay import run_replay

    harmless = make_lora_adapter(
        real_like_model, tmp_path / "harmless", rank=4, seed=1, scale=0.0, targets=TARGETS
    )
    broken = make_lora_adapter(
        real_like_model, tmp_path / "broken", rank=8, seed=1, scale=30.0, targets=TARGETS
    )
    # The shipped prose is as foreign to the demo model as to a random one (perplexity ~1500): measure on
    # text in its own corpus's words, where a broken adapter shows.
    replay = replay_set(real_like_model)
    replay.text = "\n\n".join(
        " ".join(m["content"] for m in conversation if m["role"] == "assistant")
        for conversation in conversations(12, seed=7)
    )
    replay.max_new_tokens = 8
    quiet = run_replay(real_like_model, harmless, replay=replay)
    assert quiet["replay_set"]["kind"] == "general" and len(quiet["rows"]) == quiet["replay_set"]["prompts"]
    perplexity = quiet["perplexity"]
    assert perplexity["tokens"] > 200 and perplexity["base"] > 1
    assert perplexity["candidate"] == pytest.approx(perplexity["base"]) == quiet["candidate"]["perplexity"]
    assert quiet["incumbent"]["perplexity"] == perplexity["base"]

    loud = run_replay(real_like_model, broken, harmless, replay=replay)  # against a promoted adapter
    print(f"perplexity: base {loud['perplexity']['base']:.1f}, broken {loud['perplexity']['candidate']:.1f}")
    assert loud["incumbent"]["perplexity"] == pytest.approx(perplexity["base"])
    assert loud["candidate"]["perplexity"] > 1.1 * loud["incumbent"]["perplexity"]
    reasons = guard_reasons(PromotionRule(), loud["candidate"], loud["incumbent"])
    assert any("perplexity on the held-out text rose" in r for r in reasons)
