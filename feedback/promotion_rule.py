"""When a candidate adapter may replace the promoted model: the evidence rule over the arena's votes and the
over-optimisation guard over its regression replay, each answering with a decision and its reasons.

    rule = PromotionRule(kind="bt_lower_above_upper")
    decision = decide(rule, board, comparisons, candidate="km@v2", incumbent="base")
    decision.verdict      # "promote", "not_yet" or "refuse"
    decision.reasons      # ["km@v2's lower 95% bound 1061 is above base's upper bound 1032", ...]

Rules (``kind``):

- ``bt_lower_above_upper``: the candidate's Bradley-Terry lower 95% bound is above the incumbent's upper
  bound (both from the seeded bootstrap of :func:`~feedback.leaderboard.fit_leaderboard`), with at least
  ``min_votes`` votes between them.
- ``win_rate``: over at least ``min_votes`` votes between the candidate and the incumbent, the candidate
  wins at least ``win_rate`` of them (ties half; ``both_bad`` counts as no decision and is left out).

The guard (:func:`guard_reasons`) refuses a candidate whose accuracy on checkable prompts is more than
``max_accuracy_drop`` below the incumbent's, whose mean per-token KL from the base exceeds ``max_kl``, or
whose perplexity on the replay's held-out text (real models) is more than ``max_perplexity_rise`` above the
incumbent's.
A refusal from the guard outweighs any amount of votes: preference training learns to please a rater while
losing skills (DESIGN.md, "Preference training over-optimises easily").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from feedback.errors import Invalid
from feedback.leaderboard import Leaderboard

RULES = ("bt_lower_above_upper", "win_rate")
VERDICTS = ("promote", "not_yet", "refuse")


@dataclass(frozen=True)
class PromotionRule:
    """How much evidence a candidate needs, and the guard's bounds."""

    kind: str = "bt_lower_above_upper"  # bt_lower_above_upper or win_rate
    win_rate: float = 0.55  # the win rate the `win_rate` rule asks for (ties half)
    min_votes: int = 30  # votes between the candidate and the incumbent before either rule decides
    max_accuracy_drop: float = 0.05  # the guard: checkable accuracy may fall at most this (0.05 = 5 points)
    max_kl: float = 2.0  # the guard: mean per-token KL(candidate || base) in nats on the replay prompts
    # the guard: perplexity on the replay's held-out text (real models) may rise at most this share over the
    # incumbent's (0.10 = 10%)
    max_perplexity_rise: float = 0.10
    auto: bool = False  # promote automatically when the rule says so (off: an admin promotes)

    def __post_init__(self) -> None:
        if self.kind not in RULES:
            raise Invalid(f"promotion rule {self.kind!r} is not one of {', '.join(RULES)}", param="rule")
        if not 0.5 <= self.win_rate <= 1:
            raise Invalid(f"win_rate must be from 0.5 to 1, got {self.win_rate!r}", param="win_rate")
        if self.min_votes < 1:
            raise Invalid(f"min_votes must be >= 1, got {self.min_votes!r}", param="min_votes")
        if not 0 <= self.max_accuracy_drop <= 1:
            raise Invalid(
                f"max_accuracy_drop must be from 0 to 1 (0.05 = 5 points), got {self.max_accuracy_drop!r}",
                param="max_accuracy_drop",
            )
        if not self.max_kl > 0:
            raise Invalid(f"max_kl must be > 0, got {self.max_kl!r}", param="max_kl")
        if not self.max_perplexity_rise >= 0:
            raise Invalid(
                f"max_perplexity_rise must be 0 or more (0.10 = 10%), got {self.max_perplexity_rise!r}",
                param="max_perplexity_rise",
            )


@dataclass(frozen=True)
class Decision:
    """What the rule says about one candidate, and why (each reason a sentence with the numbers)."""

    verdict: str  # promote, not_yet, refuse
    candidate: str
    incumbent: str
    reasons: list[str] = field(default_factory=list)

    @property
    def promote(self) -> bool:
        return self.verdict == "promote"

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "candidate": self.candidate,
            "incumbent": self.incumbent,
            "reasons": list(self.reasons),
        }


def head_to_head(
    comparisons: Iterable[tuple[str, str, str]], candidate: str, incumbent: str
) -> tuple[float, int]:
    """(candidate's wins with ties half, decided votes) over the votes between the two; both_bad left out."""
    wins, votes = 0.0, 0
    for a, b, outcome in comparisons:
        if {a, b} != {candidate, incumbent} or a == b or outcome == "both_bad":
            continue
        votes += 1
        if outcome == "tie":
            wins += 0.5
        elif (outcome == "a") == (a == candidate):
            wins += 1
    return wins, votes


def guard_reasons(
    rule: PromotionRule, candidate: Mapping[str, Any] | None, incumbent: Mapping[str, Any] | None
) -> list[str]:
    """Why the replay refuses the candidate (empty: it passes). ``candidate``/``incumbent`` are the replay
    report's model summaries: ``{"name", "accuracy", "kl", "perplexity"}`` (accuracy 0-1 on checkable
    prompts; kl the mean per-token KL from the base; perplexity on the held-out text; None or absent when
    not measured)."""
    if candidate is None:
        return []
    reasons = []
    accuracy, before = candidate.get("accuracy"), (incumbent or {}).get("accuracy")
    if accuracy is not None and before is not None and before - accuracy > rule.max_accuracy_drop + 1e-9:
        reasons.append(
            f"checkable accuracy fell from {before:.0%} ({incumbent.get('name')}) to {accuracy:.0%} "
            f"({candidate.get('name')}): a drop of {100 * (before - accuracy):.0f} points, more than the "
            f"allowed {100 * rule.max_accuracy_drop:.0f}"
        )
    kl = candidate.get("kl")
    if kl is not None and kl > rule.max_kl:
        reasons.append(
            f"KL divergence from the base is {kl:.3g} nats per token, above the bound of {rule.max_kl:g}"
        )
    perplexity, was = candidate.get("perplexity"), (incumbent or {}).get("perplexity")
    if perplexity is not None and was and perplexity > was * (1 + rule.max_perplexity_rise) + 1e-9:
        reasons.append(
            f"perplexity on the held-out text rose from {was:.3g} ({incumbent.get('name')}) to "
            f"{perplexity:.3g} ({candidate.get('name')}): {100 * (perplexity / was - 1):.0f}% more, above the "
            f"allowed {100 * rule.max_perplexity_rise:.0f}%"
        )
    return reasons


def decide(
    rule: PromotionRule,
    board: Leaderboard,
    comparisons: Iterable[tuple[str, str, str]],
    *,
    candidate: str,
    incumbent: str,
    replay: Mapping[str, Any] | None = None,
) -> Decision:
    """The decision for ``candidate`` (its name on the leaderboard) against ``incumbent`` (the promoted
    adapter's or the base's name there). ``replay`` is the candidate's replay report (``{"candidate": {...},
    "incumbent": {...}}``), whose guard can refuse whatever the votes say."""
    refused = guard_reasons(rule, (replay or {}).get("candidate"), (replay or {}).get("incumbent"))
    if refused:
        return Decision("refuse", candidate, incumbent, refused)
    wins, votes = head_to_head(comparisons, candidate, incumbent)
    if votes < rule.min_votes:
        return Decision(
            "not_yet",
            candidate,
            incumbent,
            [f"{votes} decided votes between {candidate} and {incumbent}; the rule needs {rule.min_votes}"],
        )
    if rule.kind == "win_rate":
        rate = wins / votes
        ok = rate >= rule.win_rate
        reason = (
            f"{candidate} won {rate:.0%} of {votes} votes against {incumbent} (ties half); "
            f"the rule asks for {rule.win_rate:.0%}"
        )
        return Decision("promote" if ok else "not_yet", candidate, incumbent, [reason])
    ratings = {r.model: r for r in board.ratings}
    mine, theirs = ratings.get(candidate), ratings.get(incumbent)
    if mine is None or theirs is None or mine.lower is None or theirs.upper is None:
        return Decision(
            "not_yet", candidate, incumbent, ["no bootstrap intervals yet: the leaderboard has too few votes"]
        )
    ok = mine.lower > theirs.upper
    relation = "above" if ok else "not above"
    reason = (
        f"{candidate}'s lower 95% bound {mine.lower:.0f} is {relation} {incumbent}'s upper bound "
        f"{theirs.upper:.0f} (ratings {mine.rating:.0f} and {theirs.rating:.0f}, {votes} votes between them)"
    )
    return Decision("promote" if ok else "not_yet", candidate, incumbent, [reason])
