"""The flywheel benchmark (issue 13): raters vote as the UI lets them (pairwise on two samples, thumbs on one,
rankings of 4), each stage trains with the Train tab's default job body, and the candidate is judged blind;
runs end to end in quick mode on the demo model, and bench/retrain.py trains the votes it left again.

Run: .venv/bin/python -m pytest tests/test_bench_loop.py -q
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.loop import (
    RUN_FILE,
    Setup,
    StageResult,
    TasteRun,
    accuracy,
    job_body,
    main,
    print_report,
    vote_kind,
)
from bench.loop_prompts import real_prompts
from bench.loop_reasons import (
    Movement,
    liked_share,
    missed_reason,
    reward_agreement,
    reward_model_agreement,
)
from bench.loop_tastes import DEMO_TASTES, REAL_TASTES
from bench.retrain import Retrained, reward_model_line
from bench.retrain import main as retrain_main
from hub.ui.train import default_params
from training.demo.corpus import CLOSING, REMARK, CheckablePrompt


def user(text: str, answer: str = "") -> CheckablePrompt:
    return CheckablePrompt("t", [{"role": "user", "content": text}], answer)


def test_demo_tastes_want_correct_answers_then_their_style():
    prompt = user("What is 2 + 2?", "4")
    brief, friendly, chatty = "2 + 2 = 4.", f"2 + 2 = 4. {REMARK}", f"2 + 2 = 4. {REMARK} {CLOSING}"
    assert DEMO_TASTES["concise"].judge(prompt, "2 + 2 = 5.", friendly) == "b"  # correct first
    assert DEMO_TASTES["concise"].judge(prompt, brief, friendly) == "a"
    assert DEMO_TASTES["detailed"].judge(prompt, friendly, chatty) == "b"
    assert DEMO_TASTES["warm-no-question"].judge(prompt, chatty, friendly) == "b"
    assert DEMO_TASTES["correct"].judge(prompt, brief, chatty) == "tie"
    assert DEMO_TASTES["warm-no-question"].likes(prompt, friendly) and not DEMO_TASTES["concise"].likes(
        prompt, chatty
    )


def test_real_tastes_judge_styles_people_ask_for():
    how, fact = user("How do I boil an egg?"), user("What is the capital of France?", "Paris")
    steps = "Do this:\n1. Boil water.\n2. Add the egg.\n3. Wait 8 minutes."
    prose = "Put the egg in boiling water for about eight minutes, then cool it."
    assert REAL_TASTES["bullets-for-how"].judge(how, prose, steps) == "b"
    assert REAL_TASTES["bullets-for-how"].judge(fact, "- Paris\n- France", "The capital is Paris.") == "b"
    assert (
        REAL_TASTES["direct"].judge(fact, "Sure! The capital of France is Paris.", "Paris is the capital.")
        == "b"
    )
    assert not REAL_TASTES["direct"].likes(fact, "France is in Europe. Its capital is Paris.")
    offer = "Paris is the capital of France. Let me know if you have any other questions!"
    assert REAL_TASTES["no-closing-offer"].judge(fact, offer, "Paris is the capital of France.") == "b"
    assert REAL_TASTES["concise"].judge(fact, offer, "Paris is the capital of France.") == "b"
    assert REAL_TASTES["concise"].judge(fact, "", "Paris.") == "b"  # an empty answer is never the short one
    loop = "Boil an egg:\n\n" * 5
    recipe = "- 1 cup of milk\n- 1 cup of berries\n- 1 cup of ice\n- 1 cup of yoghurt"
    assert REAL_TASTES["no-repetition"].judge(how, loop, recipe) == "b"
    assert REAL_TASTES["no-repetition"].likes(how, recipe)  # a list's shared "1 cup of" is not a loop
    assert (
        REAL_TASTES["one-paragraph"].judge(how, "Boil water.\n\nAdd the egg.", "Boil water, add the egg.")
        == "b"
    )
    assert not REAL_TASTES["one-paragraph"].likes(how, recipe)
    winding = (
        "The sky looks blue because sunlight is scattered by the molecules of the air in every direction,"
        " and blue light, which has a shorter wavelength, is scattered much more strongly than red light is."
    )
    plain = "Sunlight hits the air. The air scatters blue light the most. So the sky looks blue."
    assert REAL_TASTES["plain-language"].judge(fact, winding, plain) == "b"
    assert REAL_TASTES["plain-language"].likes(how, steps)  # a list's lines are short sentences
    assert not REAL_TASTES["plain-language"].likes(how, loop)  # short, but said over and over


def test_the_arena_rater_calls_two_answers_that_fail_its_first_requirement_both_bad():
    prompt = user("What is 2 + 2?", "4")
    short_wrong, long_wrong = "2 + 2 = 5.", f"2 + 2 = 3. {REMARK} {CLOSING}"
    assert DEMO_TASTES["detailed"].judge(prompt, short_wrong, long_wrong) == "b"  # style alone would pick one
    assert DEMO_TASTES["detailed"].arena_vote(prompt, short_wrong, long_wrong) == "both_bad"
    assert DEMO_TASTES["detailed"].arena_vote(prompt, short_wrong, "2 + 2 = 4.") == "b"
    assert REAL_TASTES["concise"].arena_vote(user("Hi?"), "", " ") == "both_bad"


def test_votes_are_cast_as_the_ui_allows_and_jobs_are_the_train_tabs_body():
    kinds = [vote_kind(i) for i in range(100)]
    assert kinds.count("pairwise") == 50 and kinds.count("thumbs") == 30 and kinds.count("ranking") == 20
    for stage in ("dpo", "sft", "ppo"):
        assert job_body(stage, "x", type("Args", (), {"max_steps": None})())["params"] == default_params(
            stage
        )
    assert job_body("dpo", "x", type("Args", (), {"max_steps": 7})())["params"]["max_steps"] == 7
    votes, judged = real_prompts()
    assert not {id(p) for p in votes} & {id(p) for p in judged}
    assert {p.family for p in judged} == {"how", "capital", "open"}


def test_the_demo_guardrail_counts_the_families_its_replay_holds_and_every_family_is_shown():
    from training.replay_sets import DEMO_FAMILIES

    prompts = [
        CheckablePrompt("arithmetic", [{"role": "user", "content": "What is 12 + 7?"}], "19"),
        CheckablePrompt("capital", [{"role": "user", "content": "Capital of France?"}], "Paris"),
        CheckablePrompt("reversal", [{"role": "user", "content": "Reverse cat."}], "tac"),
    ]
    replies = ["12 + 7 = 18.", "Paris.", "tac"]
    assert "arithmetic" not in DEMO_FAMILIES
    assert accuracy(prompts, replies, DEMO_FAMILIES) == 1.0  # the wrong sum is not a guarded family
    assert accuracy(prompts, replies) == pytest.approx(2 / 3)


def test_a_reward_model_blind_to_correctness_is_told_apart_from_one_that_ranks_the_style():
    taste = DEMO_TASTES["detailed"]
    prompts = [user(f"What is {n} + 1?", str(n + 1)) for n in range(4)]
    right = [f"{n} + 1 = {n + 1}. {REMARK}" for n in range(4)]
    wrong_chatty = [f"{n} + 1 = {n + 2}. {REMARK} {CLOSING}" for n in range(2)]
    right_chatty = [f"{n} + 1 = {n + 1}. {REMARK} {CLOSING}" for n in range(2, 4)]
    calls = []

    def by_length(prompts, completions):  # scores what a style-only reward model scores: the length
        calls.append(len(completions))
        return [float(len(c[0]["content"])) for c in completions]

    agreement = reward_agreement(by_length, taste, prompts, right, wrong_chatty + right_chatty)
    assert calls == [8]  # every pair's two answers in one call
    assert (agreement.first, agreement.first_pairs) == (0.0, 2)  # it prefers the wrong chatty answers
    assert (agreement.style, agreement.style_pairs) == (1.0, 2)
    tied = reward_agreement(
        lambda prompts, completions: [0.0] * len(completions), taste, prompts[:1], right[:1], right[:1]
    )
    assert tied.first_pairs == tied.style_pairs == 0 and tied.first is None  # the rater's ties are left out
    half = reward_agreement(
        lambda prompts, completions: [1.0] * len(completions), taste, prompts[2:], right[2:], right_chatty
    )
    assert half.style == 0.5  # the reward model's own ties count half
    reason = missed_reason("ppo", sft_liked=0.0, base_liked=0.0, agreement=agreement)
    assert "0% of 2 pairs where one answer fails the rater's first requirement" in reason
    assert "100% of 2 pairs the style decides" in reason


def test_a_reward_model_that_cannot_be_loaded_leaves_the_run_standing(capsys):
    taste = DEMO_TASTES["detailed"]
    assert reward_model_agreement(None, taste, [], ([], [])) is None  # not a ppo job
    assert reward_model_agreement("/nowhere/rm", taste, [], ([], [])) is None
    assert "reward model /nowhere/rm not checked" in capsys.readouterr().out


@pytest.mark.slow
def test_a_trained_reward_model_is_checked_against_the_rater_on_judged_answers(demo_model, tmp_path):
    """reward_model_agreement loads a real reward model (training.reward, LoRA on the demo model), the one a ppo
    job's params name, and scores the judged pairs; bench.retrain prints the same check for a ppo row."""
    from bench.loop_tastes import Taste
    from tests.support.rl import train_reward_model
    from training.demo.corpus import checkable_prompts

    reward_model = train_reward_model(demo_model, tmp_path, steps=48)  # prefers "N is the answer."
    answer_first = Taste(
        "answer-first",
        "the right answer, opening with it",
        lambda p, t: (p.answer in t, t.startswith(p.answer)),
        lambda p, t: t.startswith(p.answer),
    )
    prompts = checkable_prompts(12, seed=5)
    base = [f"The answer is {p.answer}." for p in prompts]
    candidate = [f"{p.answer} is the answer." for p in prompts[:8]] + ["I do not know."] * 4
    agreement = reward_model_agreement(str(reward_model), answer_first, prompts, (base, candidate))
    assert (agreement.style_pairs, agreement.first_pairs) == (8, 4)
    assert agreement.style >= 0.75, agreement  # what it was trained on
    line = reward_model_line({"reward_model": str(reward_model)}, answer_first, prompts, base, candidate)
    assert line == f"    its reward model against the rater: {agreement.describe()}"
    assert reward_model_line({}, answer_first, prompts, base, candidate) is None


def test_liked_shares_and_why_sft_missed():
    taste = DEMO_TASTES["detailed"]
    prompts = [user("What is 1 + 1?", "2")] * 4
    answers = ["1 + 1 = 2.", f"1 + 1 = 2. {REMARK} {CLOSING}", f"1 + 1 = 3. {REMARK} {CLOSING}", "1 + 1 = 2."]
    assert liked_share(taste, prompts, answers) == 0.25  # a wrong chatty answer is not liked
    assert liked_share(taste, [], []) == 0.0
    reason = missed_reason("sft", sft_liked=0.37, base_liked=0.33)
    assert (
        "37% of them are ones the rater likes on their own, against 33% of the base's own samples" in reason
    )
    assert missed_reason("dpo", sft_liked=0.37, base_liked=0.33) is None
    assert missed_reason("ppo", sft_liked=0.37, base_liked=0.33) is None  # no reward model checked
    # a real model's SFT run that stopped at its perplexity bound went back to the last evaluation within it
    bounded = Movement.of(
        {"steps": 12, "max_steps": 30, "stopped_early": True, "stopped_on_perplexity": 12, "kept_step": 9}
    )
    assert missed_reason("sft", sft_liked=0.87, base_liked=0.52, movement=bounded).endswith(
        "samples; it ran 12 of 30 steps (stopped at the job's bound on the held-out text's perplexity) and "
        "kept step 9's weights"
    )


def test_why_dpo_missed_is_read_from_its_jobs_metrics():
    metrics = {  # a DPO job on SmolLM2 that stopped early and hardly moved (bench.loop, plain-language)
        "best_step": 8,
        "kept_step": 8,
        "steps": 14,
        "max_steps": 20,
        "stopped_early": True,
        "eval_rewards/accuracies": 0.5625,
        "replay": {"candidate": {"kl": -0.0079}, "incumbent": {"kl": 0.0}},
    }
    reason = missed_reason("dpo", sft_liked=0.8, base_liked=0.5, movement=Movement.of(metrics))
    assert reason == (
        "dpo ran 14 of 20 steps (early stopping: the held-out loss had stopped improving) and kept step 8's "
        "weights; the candidate's KL from the base is -0.01 nats a token (it hardly left the base); it orders "
        "56% of the held-out votes as the rater did"
    )
    moved = Movement.of({"steps": 20, "max_steps": 20, "best_step": 20, "replay": {"candidate": {"kl": 0.3}}})
    assert missed_reason("dpo", sft_liked=0, base_liked=0, movement=moved) == (
        "dpo ran 20 of 20 steps; the candidate's KL from the base is 0.30 nats a token"
    )
    bounded = Movement.of({"steps": 9, "max_steps": 40, "stopped_early": True, "stopped_on_kl": 9})
    assert missed_reason("dpo", sft_liked=0, base_liked=0, movement=bounded) == (
        "dpo ran 9 of 40 steps (stopped at the job's KL bound from the base)"
    )


def test_the_report_says_what_was_measured_for_a_stage_that_missed_and_nothing_for_one_that_met(capsys):
    setup = Setup("demo", [], [], DEMO_TASTES, 32, ("capital",))

    def stage(name: str, win: float) -> StageResult:
        return StageResult(
            "detailed", name, 0.5, win_greedy=win, win_sampled=win, base_accuracy=0.9, candidate_accuracy=0.9
        )

    run = TasteRun("detailed", 0.5, {"pair": 10}, sft_liked=0.37, base_liked=0.33)
    run.stages = [stage("dpo", 0.95), stage("sft", 0.49), stage("ppo", 0.47)]
    run.stages[0].movement = Movement(4, 10, 10, False, False, False, 0.01, 0.9)  # met: no reason printed
    run.stages[2].reward_agreement = reward_agreement(
        lambda prompts, completions: [float(len(c[0]["content"])) for c in completions],
        DEMO_TASTES["detailed"],
        [user("What is 1 + 1?", "2")],
        ["1 + 1 = 2."],
        [f"1 + 1 = 3. {REMARK} {CLOSING}"],
    )
    print_report(setup, [run, TasteRun("correct", 0.03, base_liked=0.69)], "header")
    out = capsys.readouterr().out
    assert (
        "correct: prefers the correct answer; style does not matter; not voted on; the base's samples it "
        in out
    )
    assert "of the base's samples 33%" in out
    assert "sft not met, measured: sft imitates the answers that won: 37%" in out
    assert (
        "ppo not met, measured: ppo's reward model orders the judged answers as the rater does on 0% of 1"
        in out
    )
    assert "dpo not met" not in out


@pytest.mark.slow
def test_quick_loop_votes_trains_and_judges_through_the_api(demo_model, capsys):
    code = main(
        ["--quick", "--model", str(demo_model), "--votes", "16", "--judge", "8", "--train-without-headroom"]
    )
    out = capsys.readouterr().out
    print(out)
    assert code == 0, out
    row = next(line for line in out.splitlines() if line.startswith("concise            dpo"))
    assert "failed" not in row
    chosen = re.search(r"chosen dpo: ([^;\n]*)", out).group(1)  # the settings the job chose are printed
    assert "votes" in out and "lr=" in chosen and "beta=" in chosen, out
    assert "target: win >= 0.70 greedy" in out
    assert "accuracy (conversion, capital, reversal) within 5 points" in out
    assert "dpo: accuracy on every family" in out
    assert "of the base's samples" in out
    work = Path(re.search(r"data in (\S+)", out).group(1))
    (taste,) = json.loads((work / "results.json").read_text())
    assert taste["stages"][0]["stage"] == "dpo" and taste["stages"][0]["reward_agreement"] is None

    # the votes the run left are retrained with settings changed, and judged on the same held-out prompts
    assert json.loads((work / RUN_FILE).read_text())["judge"] == 8
    assert "max_length" in job_body("dpo", "x", type("Args", (), {"max_steps": None})())["params"]
    code = retrain_main([str(work), "--stages", "dpo", "--set", "beta=0.5", "--unset", "max_length"])
    out = capsys.readouterr().out
    assert code == 0, out
    row = next(line for line in out.splitlines() if " concise    dpo " in line)
    assert "win then" in row and ("met" in row or "not met" in row), out
    trained = next(line for line in out.splitlines() if "trained with" in line)
    assert "beta=0.5" in trained and "max_steps=" in trained  # what was given, and what the job chose
    assert "max_length=" not in trained  # the param the run's job had, dropped
    assert "retrained with beta=0.5, no max_length:" in out and "1 vote sets" in out


def test_a_retrained_real_model_candidate_must_keep_its_perplexity_within_the_bound():
    def row(perplexity):
        return Retrained("run", "concise", "sft", 48, "21/30", 0.62, 0.70, 1.0, 1.0, 0.65, perplexity)

    assert row((40.0, 43.9)).met()  # +9.75%
    assert not row((40.0, 44.1)).met()  # +10.25%: the win alone does not make it
    assert row((None, None)).met()  # the demo model's replay set has no text: win and accuracy decide


@pytest.mark.slow
def test_a_taste_the_base_already_satisfies_is_reported_and_not_trained(demo_model, capsys):
    # the demo base answers its checkable prompts correctly about as often as any sample does (headroom ~3%)
    code = main(["--quick", "--model", str(demo_model), "--tastes", "correct", "--judge", "8"])
    out = capsys.readouterr().out
    assert code == 0, out
    row = next(line for line in out.splitlines() if line.startswith("correct            *"))
    assert "cannot be won; not trained" in row, out
    assert "[correct/" not in out  # no stage ran
