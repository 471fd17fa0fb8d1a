"""The per-prompt flip report of a regression replay: which checkable prompts the candidate gets right that the
promoted model (or the base) got wrong (fail -> pass), which it now gets wrong (pass -> fail), with both
answers, and the answers' mean lengths on each side, so a "win" that is only longer answers shows.

    flips = flip_report(report)            # report: training.replay.run_replay's (stored) report
    flips["against_base"]["pass_to_fail"][0]  # {"prompt", "expected", "candidate", "other", lengths}
    flips["against_promoted"]              # None when the replay ran against the base itself

Lengths are in characters of the answer text. A replay stored before the base's answers were kept beside a
promoted model's has no ``against_base`` (None, with the reason in ``notes``): replay it again.
"""

from __future__ import annotations

import re
from typing import Any


def _prompt(row: dict[str, Any]) -> str:
    messages = row.get("messages") or []
    return str(messages[-1].get("content", "")) if messages else ""


def _mean(values: list[int]) -> float | None:
    return sum(values) / len(values) if values else None


def compare(rows: list[dict[str, Any]], other: str, against: str) -> dict[str, Any]:
    """Candidate against the ``other`` side of ``rows`` ("incumbent" or "base"; ``against`` names it)."""
    pass_to_fail, fail_to_pass = [], []
    candidate_lengths, other_lengths = [], []
    for row in rows:
        candidate, answer = row.get("candidate") or "", row.get(other) or ""
        candidate_lengths.append(len(candidate))
        other_lengths.append(len(answer))
        now, before = row.get("candidate_correct"), row.get(f"{other}_correct")
        if now is None or before is None or now == before:
            continue  # not checkable, or no flip
        flip = {
            "prompt": _prompt(row),
            "expected": row.get("answer"),
            "candidate": candidate,
            "other": answer,
            "candidate_length": len(candidate),
            "other_length": len(answer),
        }
        (fail_to_pass if now else pass_to_fail).append(flip)
    mean_candidate, mean_other = _mean(candidate_lengths), _mean(other_lengths)
    return {
        "against": against,
        "pass_to_fail": pass_to_fail,
        "fail_to_pass": fail_to_pass,
        "net": len(fail_to_pass) - len(pass_to_fail),
        "mean_length": {"candidate": mean_candidate, "other": mean_other},
        "length_ratio": mean_candidate / mean_other if mean_candidate is not None and mean_other else None,
    }


def flip_report(report: dict[str, Any]) -> dict[str, Any]:
    """Flips of the candidate against the promoted model (when the replay ran against one) and against the
    base. Reads only the report: nothing is replayed."""
    rows = report.get("rows") or []
    against = report.get("against") or report.get("incumbent", {}).get("name") or "base"
    notes = []
    if against == "base":
        promoted, base = None, compare(rows, "incumbent", "base")
        notes.append("no promoted model: the replay ran against the base")
    else:
        promoted = compare(rows, "incumbent", against)
        if rows and all("base" in row for row in rows):
            base = compare(rows, "base", "base")
        else:
            base = None
            notes.append("this replay kept no base answers: replay it again for the flips against the base")
    return {"against_promoted": promoted, "against_base": base, "notes": notes}


MARKDOWN_SPECIAL = re.compile(r"[\\`*_{}\[\]()#+\-.!|<>~]")


def flip_lines(flips: dict[str, Any], limit: int = 20) -> list[str]:
    """The report as Markdown lines (the Adapters tab), at most ``limit`` flips per direction and side."""
    lines = []
    for key, title in (("against_promoted", "promoted model"), ("against_base", "base")):
        side = flips.get(key)
        if side is None:
            continue
        lengths = side["mean_length"]
        ratio = side.get("length_ratio")
        lines.append(
            f"**Against the {title}** ({side['against']}): {len(side['fail_to_pass'])} fail → pass, "
            f"{len(side['pass_to_fail'])} pass → fail (net {side['net']:+d}); mean answer length "
            f"{_chars(lengths['candidate'])} vs {_chars(lengths['other'])} characters"
            + (f" (× {ratio:.2f})" if ratio is not None else "")
        )
        for direction, label in (("fail_to_pass", "fail → pass"), ("pass_to_fail", "pass → fail")):
            for flip in side[direction][:limit]:
                lines.append(
                    f"- {label}: *{_one_line(flip['prompt'])}* (expected {_one_line(flip['expected'])}): candidate "
                    f"“{_one_line(flip['candidate'])}” ({flip['candidate_length']} ch) · {title} "
                    f"“{_one_line(flip['other'])}” ({flip['other_length']} ch)"
                )
            hidden = len(side[direction]) - limit
            if hidden > 0:
                lines.append(f"- … and {hidden} more {label}")
    lines += [f"*{note}*" for note in flips.get("notes") or []]
    return lines


def _chars(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _one_line(text: str, width: int = 120) -> str:
    """`text` on one line, cut at `width`, with Markdown's special characters escaped: an answer is shown as
    written, never rendered (a model's "**" or "<img>" stays text)."""
    text = " ".join(str(text).split())
    text = text if len(text) <= width else text[: width - 1] + "…"
    return MARKDOWN_SPECIAL.sub(r"\\\g<0>", text)
