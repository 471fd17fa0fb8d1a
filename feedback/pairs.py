"""Expanding a ranking into preference pairs: the one place that decides which pairs a vote teaches.

A pairwise vote ``a`` is the ranking ``[[a], [b]]``; a tie is ``[[a, b]]`` and gives no pair.

    >>> [(p.chosen, p.rejected) for p in expand_ranking([["g1"], ["g2", "g3"], ["g4"]], "dpo")]
    [('g1', 'g2'), ('g1', 'g3'), ('g1', 'g4')]
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from feedback.errors import Invalid

T = TypeVar("T", bound=Hashable)
PairMode = Literal["reward", "dpo"]


@dataclass(frozen=True)
class Pair(Generic[T]):
    """``chosen`` was ranked above ``rejected``; ``gap`` is how many tiers apart they were (1 = adjacent)."""

    chosen: T
    rejected: T
    weight: float
    gap: int


def expand_ranking(tiers: Sequence[Sequence[T]], mode: PairMode) -> list[Pair[T]]:
    """Expand tiers (best first; answers in one tier are tied) into preference pairs.

    - ``mode="reward"``: every pair of answers in different tiers, the better one chosen; this is what a
      reward model's ranking loss learns from.
    - ``mode="dpo"``: each answer of the best tier against every answer below it; DPO learns most from
      the clearest contrast, and pairs between two mediocre answers mostly add noise.

    Tied answers never form a pair. In both modes each pair has ``weight = 1 / number of pairs``, so the
    pairs of one prompt sum to 1 and a prompt ranked over 6 answers counts as much as a pairwise vote.
    """
    if mode not in ("reward", "dpo"):
        raise Invalid(f"mode {mode!r} is not one of reward, dpo", param="mode")
    tiers = [list(tier) for tier in tiers if len(tier) > 0]
    found: list[tuple[T, T, int]] = []
    upper_tiers = range(len(tiers)) if mode == "reward" else range(min(1, len(tiers)))
    for i in upper_tiers:
        for j in range(i + 1, len(tiers)):
            found.extend((chosen, rejected, j - i) for chosen in tiers[i] for rejected in tiers[j])
    return [Pair(chosen, rejected, 1.0 / len(found), gap) for chosen, rejected, gap in found]
