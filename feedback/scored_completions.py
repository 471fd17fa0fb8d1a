"""UltraFeedback-style rows (one prompt, several scored completions) turned into preference pairs by score.

Accepted shapes, all detected by `is_scored_completions`:

- openbmb/UltraFeedback (raw): ``{"instruction", "completions": [{"response", "fine-grained_score",
  "overall_score", "annotations": {aspect: {"Rating": "4", ...}}, "custom_system_prompt", ...}]}``;
- the same with ``prompt`` (a string or messages) instead of ``instruction``, and a plain ``score`` or
  ``rating`` on each completion (``{"response"|"text", "score"|"rating"}``);
- distilabel's UltraFeedback task output: ``{"instruction", "generations": [str], "ratings": [number]}``.

A completion's score is the first of ``score``, ``rating``, ``fine-grained_score``, ``overall_score``, the mean of
its annotations' numeric ``Rating`` values. ``fine-grained_score`` (the mean of GPT-4's four aspect ratings) comes
before ``overall_score`` (the critique's single score) because UltraFeedback's authors found ``overall_score``
wrong for thousands of completions and corrected it from the fine-grained scores (their 2023-12-29 update).

Pairs: the best-scored completion against each lower-scored one, as the hub's own rankings expand for DPO
(`feedback.pairs.expand_ranking` mode ``dpo``). Against best-vs-worst only, this keeps every rating the data
has below the best; pairs between two mediocre answers are left out, as they mostly add noise. Completions
tied with the best make no pair with each other (each is paired with every lower one); a row whose
completions all tie gives no pair. A completion's own ``custom_system_prompt`` (the principle it was
sampled under) is not part of the shared prompt and is dropped, as HuggingFaceH4/ultrafeedback_binarized does.
"""

from __future__ import annotations

import math
from typing import Any

from feedback.formats import RowError, assistant, trl_messages
from feedback.pairs import expand_ranking

SCORE_FIELDS = ("score", "rating", "fine-grained_score", "overall_score")
TEXT_FIELDS = ("response", "text")


def is_scored_completions(row: dict[str, Any]) -> bool:
    """True for a row of several scored completions (``completions``, or ``generations`` with ``ratings``)."""
    completions = row.get("completions")
    if isinstance(completions, list) and (not completions or isinstance(completions[0], dict)):
        return True
    return row.get("generations") is not None and row.get("ratings") is not None


def scored_pairs(row: dict[str, Any]) -> list[dict[str, Any]]:
    """``{"prompt", "chosen", "rejected"}`` rows from one scored row: the best against each lower one."""
    prompt = _prompt(row)
    scored = _scored(row)
    if len(scored) < 2:
        field = "completions" if row.get("completions") is not None else "generations"
        raise RowError(field, f"must hold at least two scored completions, got {len(scored)}")
    tiers: dict[float, list[str]] = {}
    for text, score in scored:
        tiers.setdefault(score, []).append(text)
    ranking = [tiers[score] for score in sorted(tiers, reverse=True)]
    return [
        {"prompt": prompt, "chosen": assistant(pair.chosen), "rejected": assistant(pair.rejected)}
        for pair in expand_ranking(ranking, "dpo")
    ]


def _prompt(row: dict[str, Any]) -> list[dict[str, str]]:
    if row.get("prompt") is not None:
        return trl_messages(row["prompt"], "prompt", default_role="user")
    instruction = row.get("instruction")
    if instruction is None:
        raise RowError("prompt", "is missing (give prompt or instruction beside the scored completions)")
    if not isinstance(instruction, str):
        raise RowError(
            "instruction", f"must be a string, got {type(instruction).__name__} {instruction!r:.60}"
        )
    return [{"role": "user", "content": instruction}]


def _scored(row: dict[str, Any]) -> list[tuple[str, float]]:
    """(text, score) of every completion, in the row's order."""
    if row.get("completions") is not None:
        completions = row["completions"]
        if not isinstance(completions, list):
            raise RowError("completions", f"must be a list of scored completions, got {completions!r:.60}")
        return [_completion(c, f"completions[{i}]") for i, c in enumerate(completions)]
    generations, ratings = row.get("generations"), row.get("ratings")
    if not isinstance(generations, list) or not isinstance(ratings, list) or len(generations) != len(ratings):
        raise RowError(
            "ratings",
            f"must be a list as long as generations ({_length(generations)}), got {ratings!r:.60}",
        )
    scored = []
    for i, (text, rating) in enumerate(zip(generations, ratings)):
        if rating is None:  # distilabel leaves a rating the judge could not give empty: not scored
            continue
        if not isinstance(text, str):
            raise RowError(f"generations[{i}]", f"must be a string, got {type(text).__name__}")
        scored.append((text, _number(rating, f"ratings[{i}]")))
    return scored


def _completion(completion: Any, field: str) -> tuple[str, float]:
    if not isinstance(completion, dict):
        raise RowError(field, f"must be an object with a response and a score, got {completion!r:.60}")
    text_field = next((f for f in TEXT_FIELDS if completion.get(f) is not None), None)
    if text_field is None:
        raise RowError(f"{field}.response", f"is missing (the completion has {_keys(completion)})")
    text = completion[text_field]
    if not isinstance(text, str):
        raise RowError(f"{field}.{text_field}", f"must be a string, got {type(text).__name__}")
    for name in SCORE_FIELDS:
        if completion.get(name) is not None:
            return text, _number(completion[name], f"{field}.{name}")
    ratings = _annotation_ratings(completion.get("annotations"))
    if ratings:
        return text, sum(ratings) / len(ratings)
    raise RowError(
        f"{field}.score",
        f"is missing: give one of {', '.join(SCORE_FIELDS)} or annotations with a Rating "
        f"(the completion has {_keys(completion)})",
    )


def _annotation_ratings(annotations: Any) -> list[float]:
    """The numeric ``Rating`` of each UltraFeedback aspect (strings such as "4"; "N/A" is left out)."""
    if not isinstance(annotations, dict):
        return []
    ratings = []
    for aspect in annotations.values():
        rating = aspect.get("Rating") if isinstance(aspect, dict) else None
        try:
            value = float(rating)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            ratings.append(value)
    return ratings


def _number(value: Any, field: str) -> float:
    """A score: a finite number, or a string holding one (UltraFeedback stores ratings as "4")."""
    if isinstance(value, bool):
        raise RowError(field, f"must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RowError(field, f"must be a number, got {value!r:.60}") from None
    if not math.isfinite(number):
        raise RowError(field, f"must be a finite number, got {value!r}")
    return number


def _keys(value: dict[str, Any]) -> str:
    return ", ".join(map(repr, value)) or "no fields"


def _length(value: Any) -> str:
    return str(len(value)) if isinstance(value, list) else f"not a list: {value!r:.40}"
