"""The leaderboard: Bradley-Terry ratings from pairwise votes, with bootstrap intervals.

    from feedback.leaderboard import fit_leaderboard
    board = fit_leaderboard(store.pairwise_comparisons(), anchor="base")
    for r in board.ratings: print(r.rank, r.model, round(r.rating), r.lower, r.upper, r.provisional)

How votes count: ``a``/``b`` is a win for one model; ``tie`` is half a win for each; ``both_bad`` says
nothing about which model is better, so it adds no Bradley-Terry comparison, but it is counted in the
models' vote totals (``votes``, ``both_bad``) and resampled by the bootstrap like any vote. A vote between
two answers of the same model is ignored entirely.

The fit maximises the Bradley-Terry log-likelihood plus a small L2 prior on the log-strengths
(``prior``, the precision of a Gaussian prior), which keeps an undefeated model's rating finite, with
Newton's method. Ratings are on the Elo-like scale ``1000 + 400 * log10(odds)``, so a 400-point gap means
10:1 odds, anchored so that the ``anchor`` model rates exactly 1000 (the mean model rates 1000 when the
anchor has no votes). 95% intervals are percentiles over ``rounds`` bootstrap resamples of the votes
(seeded, so the same votes give the same board). Every resample is fitted at once: the votes are grouped
into (model, model, outcome) cells, a resample is a multinomial draw over the cells, and Newton's method
runs on a stack of small matrices.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from feedback.errors import Invalid

_OUTCOMES = {"a": 0, "b": 1, "tie": 2, "both_bad": 3}
_SCALE = 400 / math.log(10)


@dataclass(frozen=True)
class Rating:
    """One model's row on the board. ``lower``/``upper`` bound the 95% interval (None without bootstrap)."""

    rank: int
    model: str
    rating: float
    lower: float | None
    upper: float | None
    votes: int
    wins: int
    losses: int
    ties: int
    both_bad: int
    provisional: bool


@dataclass(frozen=True)
class Leaderboard:
    """Ratings best first. ``win_rate[i][j]`` is how often ``models[i]`` beat ``models[j]`` (ties half;
    None where they never met); ``expected_win_rate`` is the same predicted from the ratings."""

    ratings: list[Rating]
    models: list[str]
    win_rate: list[list[float | None]]
    expected_win_rate: list[list[float]]
    anchor: str | None
    n_votes: int
    rounds: int
    n_uncounted: int = 0  # votes between two answers of the same model: no information about ratings


def fit_bradley_terry(
    wins: np.ndarray, prior: float = 0.1, *, max_iter: int = 100, tol: float = 1e-9
) -> np.ndarray:
    """Log-strengths (natural log scale) maximising the penalised Bradley-Terry likelihood.

    ``wins`` has shape ``(K, K)`` or ``(R, K, K)``: ``wins[..., i, j]`` is how often i beat j (ties as
    halves). Returns shape ``(K,)`` or ``(R, K)``; only differences between strengths matter.
    """
    if prior <= 0:
        raise Invalid(f"prior must be > 0 (it keeps undefeated models finite), got {prior!r}", param="prior")
    batched = wins.ndim == 3
    w = wins if batched else wins[None]
    games = w + w.transpose(0, 2, 1)
    won = w.sum(axis=2)
    k = w.shape[1]
    theta = np.zeros(w.shape[:2])
    diagonal = np.arange(k)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(theta[:, None, :] - theta[:, :, None]))  # p[r, i, j] = P(i beats j)
        gradient = won - (games * p).sum(axis=2) - prior * theta
        curvature = games * p * (1.0 - p)
        neg_hessian = -curvature
        neg_hessian[:, diagonal, diagonal] += curvature.sum(axis=2) + prior
        step = np.linalg.solve(neg_hessian, gradient[..., None])[..., 0]
        # Damp huge first steps (a near-undefeated model with a tiny prior); Newton is quadratic after.
        largest = np.abs(step).max(axis=1, keepdims=True)
        theta += step * np.minimum(1.0, 4.0 / np.maximum(largest, 1e-300))
        if largest.max() < tol:
            break
    return theta if batched else theta[0]


def fit_leaderboard(
    comparisons: Iterable[tuple[str, str, str] | tuple[str, str, str, int]],
    *,
    anchor: str | None = "base",
    prior: float = 0.1,
    rounds: int = 200,
    seed: int = 0,
    min_votes: int = 20,
) -> Leaderboard:
    """Rate models from ``(model_a, model_b, outcome)`` votes (``Store.pairwise_comparisons()``), or from
    ``(model_a, model_b, outcome, count)`` rows of counted votes (``Store.pairwise_counts()``: a million votes
    come as a few hundred rows, and the board is the same).

    ``anchor`` rates 1000; ``prior`` is the L2 penalty on log-strengths; ``rounds`` bootstrap resamples
    (0 for none) seeded by ``seed`` give the 95% intervals; models with fewer than ``min_votes`` votes are
    marked ``provisional``.
    """
    names_a, names_b, outcomes, weights = _columns(comparisons)
    counted = [i for i, (a, b) in enumerate(zip(names_a, names_b)) if a != b]
    uncounted = sum(weights) - sum(weights[i] for i in counted)
    if len(counted) < len(
        outcomes
    ):  # a model only ever voted against itself gets no row (it would show 0 votes)
        names_a = [names_a[i] for i in counted]
        names_b = [names_b[i] for i in counted]
        outcomes = [outcomes[i] for i in counted]
        weights = [weights[i] for i in counted]
    models = sorted(set(names_a) | set(names_b))
    if not models:
        return Leaderboard([], [], [], [], None, 0, rounds, uncounted)
    index = {model: i for i, model in enumerate(models)}
    k, n = len(models), len(outcomes)
    ia = np.fromiter((index[m] for m in names_a), dtype=np.int64, count=n)
    ib = np.fromiter((index[m] for m in names_b), dtype=np.int64, count=n)
    try:
        code = np.fromiter((_OUTCOMES[o] for o in outcomes), dtype=np.int64, count=n)
    except KeyError as e:
        raise Invalid(f"outcome {e.args[0]!r} is not one of a, b, tie, both_bad", param="outcome") from None
    weight = np.fromiter(weights, dtype=np.int64, count=n)
    keep = ia != ib
    ia, ib, code, weight = ia[keep], ib[keep], code[keep], weight[keep]
    n = int(weight.sum())

    cells = np.bincount((ia * k + ib) * 4 + code, weights=weight, minlength=k * k * 4).astype(np.int64)
    present = np.flatnonzero(cells)
    cell_pair, cell_outcome = np.divmod(present, 4)
    cell_i, cell_j = np.divmod(cell_pair, k)
    counts = cells[present].astype(np.float64)

    def win_matrix(cell_counts: np.ndarray) -> np.ndarray:
        """(R, C) counts per cell -> (R, K, K) wins. Within one outcome the cells' (i, j) are distinct,
        so plain fancy-index addition does not lose repeated indices."""
        flat = np.zeros((cell_counts.shape[0], k * k))
        for outcome, winner, loser, share in (
            (0, cell_i, cell_j, 1.0),
            (1, cell_j, cell_i, 1.0),
            (2, cell_i, cell_j, 0.5),
            (2, cell_j, cell_i, 0.5),
        ):
            mask = cell_outcome == outcome
            flat[:, winner[mask] * k + loser[mask]] += share * cell_counts[:, mask]
        return flat.reshape(-1, k, k)

    wins = win_matrix(counts[None])[0]
    theta = fit_bradley_terry(wins, prior)
    ratings = _to_scale(theta[None], models, anchor)[0]
    lower = upper = None
    if rounds > 0 and counts.sum() > 0:
        rng = np.random.default_rng(seed)
        resampled = rng.multinomial(int(counts.sum()), counts / counts.sum(), size=rounds).astype(np.float64)
        boot = _to_scale(fit_bradley_terry(win_matrix(resampled), prior), models, anchor)
        lower, upper = np.percentile(boot, [2.5, 97.5], axis=0)

    tally = np.zeros((k, 4), dtype=np.int64)  # wins, losses, ties, both_bad per model
    for outcome, column_a, column_b in ((0, 0, 1), (1, 1, 0), (2, 2, 2), (3, 3, 3)):
        mask = code == outcome
        np.add.at(tally, (ia[mask], column_a), weight[mask])
        np.add.at(tally, (ib[mask], column_b), weight[mask])
    order = np.argsort(-ratings, kind="stable")
    games = wins + wins.T
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = np.where(games > 0, wins / games, np.nan)
    expected = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))
    board = [
        Rating(
            rank=rank,
            model=models[i],
            rating=float(ratings[i]),
            lower=float(lower[i]) if lower is not None else None,
            upper=float(upper[i]) if upper is not None else None,
            votes=int(tally[i].sum()),
            wins=int(tally[i, 0]),
            losses=int(tally[i, 1]),
            ties=int(tally[i, 2]),
            both_bad=int(tally[i, 3]),
            provisional=bool(tally[i].sum() < min_votes),
        )
        for rank, i in enumerate(order, start=1)
    ]
    return Leaderboard(
        ratings=board,
        models=[models[i] for i in order],
        win_rate=[[None if math.isnan(x) else float(x) for x in observed[i, order]] for i in order],
        expected_win_rate=[[float(x) for x in expected[i, order]] for i in order],
        anchor=anchor if anchor in index else None,
        n_votes=n,
        rounds=rounds,
        n_uncounted=uncounted,
    )


def _columns(
    comparisons: Iterable[tuple[str, str, str] | tuple[str, str, str, int]],
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], list[int]]:
    """Model a, model b, outcome and count columns; a row without a count is one vote."""
    rows = list(comparisons)
    if not rows:
        return (), (), (), []
    a, b, outcomes = (tuple(row[i] for row in rows) for i in range(3))
    weights = [row[3] if len(row) > 3 else 1 for row in rows]
    for row, count in zip(rows, weights):
        if len(row) not in (3, 4) or isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise Invalid(f"comparison {row!r:.80} is not (model_a, model_b, outcome[, count >= 0])")
    return a, b, outcomes, weights


def _to_scale(theta: np.ndarray, models: list[str], anchor: str | None) -> np.ndarray:
    """(R, K) log-strengths -> Elo-like ratings, the anchor (or the mean) at 1000."""
    zero = theta[:, [models.index(anchor)]] if anchor in models else theta.mean(axis=1, keepdims=True)
    return 1000.0 + _SCALE * (theta - zero)
