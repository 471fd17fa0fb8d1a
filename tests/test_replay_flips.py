"""The per-prompt flip report (issue 16, item 2) on hand-made replay reports: which checkable prompts flipped
against the promoted model and against the base, both answers, the mean answer lengths (a "win" that is only
length shows); an old report without the base's answers says to replay; `tunehub adapters show` prints it.
The replay itself is exercised on the demo model in tests/test_promotion.py, the Adapters tab in
tests/test_ui_promotion.py.

Run: .venv/bin/python -m pytest tests/test_replay_flips.py -q
"""

from __future__ import annotations

import json

import pytest

from feedback.store import Store
from tests.support.cli import tunehub_ok
from training.replay_flips import flip_lines, flip_report


def row(question, answer, candidate, incumbent, base=None, *, ok=(None, None, None)):
    made = {
        "messages": [{"role": "user", "content": question}],
        "answer": answer,
        "candidate": candidate,
        "incumbent": incumbent,
        "candidate_correct": ok[0],
        "incumbent_correct": ok[1],
    }
    if base is not None:
        made.update(base=base, base_correct=ok[2])
    return made


REPORT = {
    "adapter": "km@2",
    "against": "km@1",
    "candidate": {"name": "km@2", "accuracy": 0.5},
    "incumbent": {"name": "km@1", "accuracy": 0.5},
    "rows": [
        # fixed against the promoted model, already right in the base
        row(
            "What is 2 + 2?", "4", "It is 4, of course, as everyone knows.", "5", "4", ok=(True, False, True)
        ),
        # broken against both
        row(
            "Capital of France?",
            "Paris",
            "Lyon, surely, a lovely city.",
            "Paris",
            "Paris",
            ok=(False, True, True),
        ),
        # right everywhere: no flip, but its lengths count
        row("Reverse abc", "cba", "cba", "cba", "cba", ok=(True, True, True)),
        # not checkable
        row("Hello!", None, "Hi there, how are you today?", "Hi.", "Hey."),
    ],
}


def test_flips_against_the_promoted_model_and_the_base_with_lengths():
    flips = flip_report(REPORT)
    promoted, base = flips["against_promoted"], flips["against_base"]
    assert promoted["against"] == "km@1" and base["against"] == "base"
    assert [f["prompt"] for f in promoted["fail_to_pass"]] == ["What is 2 + 2?"]
    assert [f["prompt"] for f in promoted["pass_to_fail"]] == ["Capital of France?"]
    assert promoted["net"] == 0
    fixed = promoted["fail_to_pass"][0]
    assert (fixed["expected"], fixed["other"], fixed["other_length"]) == ("4", "5", 1)
    assert fixed["candidate_length"] == len("It is 4, of course, as everyone knows.")
    assert base["fail_to_pass"] == [] and [f["prompt"] for f in base["pass_to_fail"]] == [
        "Capital of France?"
    ]
    assert base["net"] == -1
    # the candidate's answers are much longer on every side: the ratio shows it
    candidate_mean = sum(len(r["candidate"]) for r in REPORT["rows"]) / 4
    assert promoted["mean_length"]["candidate"] == pytest.approx(candidate_mean)
    assert promoted["mean_length"]["other"] == pytest.approx((1 + 5 + 3 + 3) / 4)
    assert promoted["length_ratio"] > 5
    assert flips["notes"] == []
    text = "\n".join(flip_lines(flips))
    assert "Against the promoted model** (km@1): 1 fail → pass, 1 pass → fail" in text
    assert "Against the base** (base): 0 fail → pass, 1 pass → fail (net -1)" in text
    assert "“Lyon, surely, a lovely city\\.” (28 ch)" in text and "(× " in text


def test_answers_are_shown_as_written_not_rendered_as_markdown():
    report = dict(REPORT, rows=[row("Hi *there*", "4", "**4** <img src=x>", "5", ok=(True, False, None))])
    text = "\n".join(flip_lines(flip_report(report)))
    assert "\\*\\*4\\*\\* \\<img src=x\\>" in text and "*Hi \\*there\\**" in text


def test_against_the_base_only_and_an_old_report_without_base_answers():
    against_base = dict(
        REPORT,
        against="base",
        rows=[{k: v for k, v in r.items() if not k.startswith("base")} for r in REPORT["rows"]],
    )
    flips = flip_report(against_base)
    assert flips["against_promoted"] is None and flips["against_base"]["net"] == 0
    old = dict(against_base, against="km@1")  # replayed against a promoted model before the base was kept
    flips = flip_report(old)
    assert flips["against_base"] is None and flips["against_promoted"]["against"] == "km@1"
    assert "replay it again" in flips["notes"][0]


def test_tunehub_adapters_show_prints_the_stored_flips(tmp_path):
    with Store(tmp_path / "feedback.db") as store:
        store.add_adapter("km", base="base", method="lora", path="/x")
        store.add_adapter("km", base="base", method="lora", path="/y")
    (tmp_path / "replay").mkdir()
    (tmp_path / "replay" / "km-v2.json").write_text(json.dumps(REPORT))  # as PromotionService stores it
    out = tunehub_ok("adapters", "show", "km@2", "--data-dir", str(tmp_path))
    out += tunehub_ok("adapters", "show", "km@1", "--data-dir", str(tmp_path))
    first, second = out.split("\n}\n", 1)
    shown = json.loads(first + "\n}")
    assert shown["adapter"] == "km@2" and shown["replay"]["against"] == "km@1"
    flips = shown["replay"]["flips"]
    assert flips["against_promoted"]["pass_to_fail"][0]["candidate"] == "Lyon, surely, a lovely city."
    assert flips["against_base"]["net"] == -1
    assert json.loads(second)["replay"] is None  # never replayed
