"""Tests of the Bradley-Terry leaderboard: hand-computed fits, ties, anchoring, bootstrap, scale."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from feedback.errors import Invalid
from feedback.leaderboard import fit_bradley_terry, fit_leaderboard
from feedback.store import Store

TINY_PRIOR = 1e-9  # "prior -> 0": the plain maximum-likelihood fit


def _by_model(board):
    return {r.model: r for r in board.ratings}


def test_three_wins_to_one_gives_the_known_mle_gap():
    votes = [("A", "B", "a")] * 3 + [("A", "B", "b")]
    board = _by_model(fit_leaderboard(votes, anchor="B", prior=TINY_PRIOR, rounds=0))
    # MLE: P(A beats B) = 3/4, so the odds are 3 and the gap is 400 * log10(3) = 190.85 points.
    assert board["A"].rating - board["B"].rating == pytest.approx(400 * math.log10(3), abs=1e-3)
    assert board["B"].rating == 1000.0
    assert (board["A"].wins, board["A"].losses, board["B"].wins) == (3, 1, 1)


def test_ties_count_half_and_both_bad_counts_no_comparison():
    # A: 2 wins and 2 ties against B -> 3 wins to 1, the same gap as above.
    votes = [("A", "B", "a")] * 2 + [("B", "A", "tie")] * 2 + [("A", "B", "both_bad")] * 5
    board = _by_model(fit_leaderboard(votes, anchor="B", prior=TINY_PRIOR, rounds=0))
    assert board["A"].rating - board["B"].rating == pytest.approx(400 * math.log10(3), abs=1e-3)
    assert (board["A"].ties, board["A"].both_bad, board["A"].votes) == (2, 5, 9)


def test_batched_fit_matches_single_fits():
    wins = np.array([[[0, 3], [1, 0]], [[0, 1], [1, 0]]], dtype=float)
    batched = fit_bradley_terry(wins, prior=TINY_PRIOR)
    for r in range(2):
        single = fit_bradley_terry(wins[r], prior=TINY_PRIOR)
        assert single[0] - single[1] == pytest.approx(batched[r, 0] - batched[r, 1])
    assert batched[0, 0] - batched[0, 1] == pytest.approx(math.log(3))
    assert batched[1, 0] - batched[1, 1] == pytest.approx(0.0, abs=1e-9)


def test_prior_keeps_an_undefeated_model_finite():
    board = _by_model(fit_leaderboard([("A", "B", "a")] * 50, anchor="B", rounds=20))
    assert math.isfinite(board["A"].rating) and board["A"].rating > 1400
    assert math.isfinite(board["A"].upper)
    with pytest.raises(Invalid, match="prior"):
        fit_leaderboard([("A", "B", "a")], prior=0)


def test_anchor_rates_1000_and_a_missing_anchor_centres_on_the_mean():
    votes = [("base", "x", "a"), ("x", "y", "a"), ("y", "base", "b"), ("x", "base", "a")] * 10
    anchored = _by_model(fit_leaderboard(votes, anchor="base", rounds=0))
    assert anchored["base"].rating == 1000.0
    centred = fit_leaderboard(votes, anchor="not-there", rounds=0)
    assert centred.anchor is None
    assert np.mean([r.rating for r in centred.ratings]) == pytest.approx(1000.0)
    gaps = [anchored[m].rating - anchored["base"].rating for m in ("x", "y")]
    assert gaps == pytest.approx(
        [_by_model(centred)[m].rating - _by_model(centred)["base"].rating for m in ("x", "y")]
    )


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(3)
    votes = [("base", "tuned", "a" if rng.random() < 0.35 else "b") for _ in range(300)]
    first = fit_leaderboard(votes, anchor="base", rounds=100, seed=7)
    assert first == fit_leaderboard(votes, anchor="base", rounds=100, seed=7)
    tuned = _by_model(first)["tuned"]
    assert tuned.lower < tuned.rating < tuned.upper
    assert _by_model(first)["base"].lower == _by_model(first)["base"].upper == 1000.0  # the anchor is fixed
    assert first.ratings[0].model == "tuned" and first.ratings[0].rank == 1


def test_provisional_marks_and_win_rate_matrix():
    votes = [("base", "a", "b")] * 30 + [("base", "new", "a")] * 2 + [("new", "base", "tie")]
    board = fit_leaderboard(votes, anchor="base", rounds=0, min_votes=20)
    by_model = _by_model(board)
    assert by_model["new"].provisional and not by_model["base"].provisional and not by_model["a"].provisional
    i = {m: k for k, m in enumerate(board.models)}
    assert board.win_rate[i["base"]][i["new"]] == pytest.approx(2.5 / 3)
    assert board.win_rate[i["a"]][i["base"]] == 1.0
    assert board.win_rate[i["a"]][i["new"]] is None  # never met
    assert board.expected_win_rate[i["a"]][i["base"]] > 0.5
    assert board.expected_win_rate[i["a"]][i["new"]] + board.expected_win_rate[i["new"]][
        i["a"]
    ] == pytest.approx(1)


def test_self_comparisons_and_empty_input_and_bad_outcomes():
    assert fit_leaderboard([]).ratings == []
    board = _by_model(fit_leaderboard([("m", "m", "a"), ("m", "base", "a")], rounds=0))
    assert board["m"].votes == 1
    with pytest.raises(Invalid, match="'draw'"):
        fit_leaderboard([("m", "base", "draw")])


def test_leaderboard_from_the_store(tmp_path):
    prompt = [{"role": "user", "content": "hi"}]
    with Store(tmp_path / "feedback.db") as store:
        for i in range(6):
            base = store.add_generation(prompt=prompt, model="base", text=f"hello {i}")
            tuned = store.add_generation(prompt=prompt, model="tuned", text=f"hi there {i}")
            store.add_pairwise(tuned.id, base.id, "a" if i < 5 else "both_bad", rater=f"r{i}")
        board = _by_model(fit_leaderboard(store.pairwise_comparisons(), anchor="base", rounds=50))
    assert board["tuned"].rating > 1000 and board["tuned"].wins == 5 and board["tuned"].both_bad == 1


def test_a_hundred_thousand_votes_with_bootstrap():
    rng = np.random.default_rng(0)
    models = ["base"] + [f"adapter-{i}" for i in range(11)]
    strength = np.linspace(-1.0, 1.0, len(models))
    n = 100_000
    a, b = rng.integers(0, len(models), n), rng.integers(0, len(models), n)
    p_a = 1 / (1 + np.exp(strength[b] - strength[a]))
    outcome = np.where(rng.random(n) < 0.1, "tie", np.where(rng.random(n) < p_a, "a", "b"))
    votes = list(zip([models[i] for i in a], [models[i] for i in b], outcome.tolist(), strict=True))
    start = time.perf_counter()
    board = fit_leaderboard(votes, anchor="base", rounds=200)
    elapsed = time.perf_counter() - start
    print(f"\nleaderboard over {n:,} votes, {len(models)} models, 200 bootstrap rounds: {elapsed:.3f} s")
    assert board.models == models[::-1]  # strongest last in `models`, first on the board
    assert all(r.lower < r.upper for r in board.ratings if r.model != "base")


def test_votes_between_one_models_answers_are_said_not_counted_and_give_no_row():
    """Issue 14, finding 6: '6 pairwise votes over 1 models' beside a row with 0 votes."""
    board = fit_leaderboard([("base", "base", "a")] * 6, anchor="base", rounds=0)
    assert (board.ratings, board.n_votes, board.n_uncounted) == ([], 0, 6)
    board = fit_leaderboard([("base", "base", "a"), ("base", "x", "b"), ("x", "base", "tie")], rounds=0)
    assert (board.n_votes, board.n_uncounted, set(board.models)) == (2, 1, {"base", "x"})
    assert {r.model: r.votes for r in board.ratings} == {"base": 2, "x": 2}
