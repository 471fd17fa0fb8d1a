"""The flywheel benchmark runs end to end in quick mode (issue 6, item 4): a real `tunehub serve`, votes
through /v1/feedback, a DPO job through /v1/jobs that goes live, and the blind judging, on the quick demo model.

Run: .venv/bin/python -m pytest tests/test_bench_loop.py -q
"""

from __future__ import annotations

import pytest

from bench.loop import TASTES, main


def test_tastes_prefer_correct_answers_then_break_ties_by_length():
    from training.demo.corpus import CheckablePrompt

    prompt = CheckablePrompt("arithmetic", [{"role": "user", "content": "What is 2 + 2?"}], "4")
    shorter, longer = TASTES["correct-shorter"], TASTES["correct-longer"]
    assert shorter.judge(prompt, "2 + 2 = 5.", "2 + 2 = 4, I think.") == "b"  # correct first
    assert shorter.judge(prompt, "2 + 2 = 4.", "It is 4, I think: 4.") == "a"
    assert longer.judge(prompt, "2 + 2 = 4.", "It is 4, I think: 4.") == "b"
    assert shorter.judge(prompt, "2 + 2 = 4.", "2 + 2 = 4.") == "tie"


@pytest.mark.slow
def test_quick_loop_votes_trains_and_judges_through_the_api(demo_model, tmp_path, capsys):
    code = main(["--quick", "--model", str(demo_model), "--votes", "16", "--judge", "8"])
    out = capsys.readouterr().out
    print(out)
    assert code == 0, out
    row = next(line for line in out.splitlines() if line.startswith("correct-shorter  dpo"))
    assert "failed" not in row
    assert "16" in row.split("|")[1]  # the votes cast
    assert "last vote -> live candidate" in out
