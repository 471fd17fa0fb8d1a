"""Which prompts (and which held-out text) the regression replay uses, chosen for the model served.

- The demo model (its directory holds the demo build's marker, `tunehub_demo.json`): held-out checkable
  prompts of its own corpus, only in the families it can do. Its greedy accuracy per family, measured on
  the full demo model (DEMO_MODEL_VERSION 3) over 200 held-out prompts each, seeds 4321 and 99: conversion
  0.935 / 0.935, reversal 0.88 / 0.87, capital 0.84 / 0.80, arithmetic 0.335 / 0.27. Arithmetic is left
  out: at ~0.3 it is too weak for a loss to show (`DEMO_FAMILIES`). Matched as the demo corpus checks.
- Any other model (a real one): the general held-out set the project ships (`training/replay_data/
  general.jsonl`: capitals, unit conversions, small arithmetic, numbers spelt in words, calendar facts),
  matched leniently (`lenient_match`), plus perplexity on a held-out text (`training/replay_data/heldout.txt`).
- ``TUNEHUB_REPLAY_PROMPTS`` (a JSONL of ``{"messages", "answer"}`` rows) overrides the prompts either way;
  a real model keeps the perplexity text.

    replay = replay_set("/models/SmolLM2")        # ReplaySet(kind="general", prompts=[...], text="...")
    replay.correct(replay.prompts[0], "The capital of France is Paris.")
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from training.demo.corpus import CheckablePrompt, checkable_prompts, is_correct

DEMO_MARKER = "tunehub_demo.json"  # training.demo.build.METADATA_FILE (that module imports torch)
DEMO_FAMILIES: tuple[str, ...] = ("conversion", "capital", "reversal")
DEMO_PROMPTS = 50
DEMO_SEED = 4321  # not evaluate_checkable's, so the replay is not the set the demo build was tuned on
DATA = Path(__file__).with_name("replay_data")
GENERAL_PROMPTS = DATA / "general.jsonl"
HELDOUT_TEXT = DATA / "heldout.txt"
DEMO_MAX_NEW_TOKENS = 32
GENERAL_MAX_NEW_TOKENS = 48  # a real model's answer often opens with a clause before the fact


@dataclass
class ReplayPrompt(CheckablePrompt):
    """A checkable prompt with other spellings of its answer and how replies are matched."""

    accept: list[str] = field(default_factory=list)
    match: str = "demo"  # "demo": the demo corpus's check; "lenient": `lenient_match`


@dataclass
class ReplaySet:
    """The prompts a replay answers, the text its perplexity is measured on (None: none), and why."""

    kind: str  # "demo", "general" or "custom"
    prompts: list[CheckablePrompt]
    text: str | None = None
    max_new_tokens: int = DEMO_MAX_NEW_TOKENS
    source: str = ""

    @staticmethod
    def correct(prompt: CheckablePrompt, reply: str) -> bool:
        return check_reply(prompt, reply)


def is_demo_model(base: str | Path) -> bool:
    """Whether `base` is the demo model `tunehub demo-model` builds (its directory holds the build's marker)."""
    try:
        return (Path(base).expanduser() / DEMO_MARKER).is_file()
    except (OSError, TypeError, ValueError):
        return False


def demo_prompts(n: int = DEMO_PROMPTS, seed: int = DEMO_SEED) -> list[CheckablePrompt]:
    """`n` held-out checkable prompts of the demo corpus, in the families the demo model can do, in turn."""
    pool = checkable_prompts(n * 2, seed=seed)  # the corpus cycles through four families; keep three
    return [p for p in pool if p.family in DEMO_FAMILIES][:n]


def load_prompts_file(path: str | Path) -> list[CheckablePrompt]:
    """A JSONL replay set: ``{"messages": [...], "answer": "..."}`` rows (``answer`` optional: rows without
    one count for the KL and the side-by-side answers, not for accuracy), optionally ``family``,
    ``accept`` (other spellings) and ``match`` ("lenient" or the demo corpus's check, the default)."""
    prompts: list[CheckablePrompt] = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"{path} line {number}: a replay row needs a non-empty 'messages' list")
        match = row.get("match") or "demo"
        if match not in ("demo", "lenient"):
            raise ValueError(f"{path} line {number}: match {match!r} is not 'demo' or 'lenient'")
        prompts.append(
            ReplayPrompt(
                row.get("family", "custom"),
                messages,
                str(row.get("answer") or ""),
                accept=[str(a) for a in row.get("accept") or []],
                match=match,
            )
        )
    return prompts


def general_prompts() -> list[CheckablePrompt]:
    return load_prompts_file(GENERAL_PROMPTS)


def heldout_text() -> str:
    return HELDOUT_TEXT.read_text()


def replay_set(base: str | Path, prompts_file: str | Path | None = None) -> ReplaySet:
    """The replay set for the model `base`: the demo model's own families, or the general set and the
    held-out text for any other model; `prompts_file` replaces the prompts (not the text)."""
    demo = is_demo_model(base)
    text = None if demo else heldout_text()
    max_new = DEMO_MAX_NEW_TOKENS if demo else GENERAL_MAX_NEW_TOKENS
    if prompts_file:
        return ReplaySet("custom", load_prompts_file(prompts_file), text, max_new, str(prompts_file))
    if demo:
        return ReplaySet("demo", demo_prompts(), None, max_new, f"demo corpus: {', '.join(DEMO_FAMILIES)}")
    return ReplaySet("general", general_prompts(), text, max_new, str(GENERAL_PROMPTS.name))


# ----- matching ------------------------------------------------------------------------------------------


def check_reply(prompt: CheckablePrompt, reply: str) -> bool:
    """Whether `reply` gives the prompt's answer, by the prompt's own matching rule."""
    if not prompt.answer:
        return False
    if getattr(prompt, "match", "demo") == "lenient":
        question = next((m["content"] for m in reversed(prompt.messages) if m.get("role") == "user"), "")
        return lenient_match([prompt.answer, *getattr(prompt, "accept", [])], reply, question)
    return is_correct(prompt, reply)


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKD", str(text))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()  # "Reykjavík" -> "reykjavik"
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # "3,000" -> "3000"
    text = re.sub(r"[-_*`'\u2019]", " ", text)  # "twenty-one", **bold**, quotes
    return re.sub(r"\s+", " ", text).strip()


def _numbers(text: str) -> set[float]:
    return {float(n) for n in re.findall(r"\d+(?:\.\d+)?", text)}


def lenient_match(answers: list[str], reply: str, question: str = "") -> bool:
    """Whether any of `answers` is in `reply`: a number as any number of the reply that the question does
    not already hold (so echoing "12 plus 7" never counts), a word or phrase as whole words; case, accents,
    hyphens and thousands separators ignored."""
    text = _normalise(reply)
    numbers = _numbers(text) - _numbers(_normalise(question))
    for answer in answers:
        wanted = _normalise(answer)
        if not wanted:
            continue
        if re.fullmatch(r"\d+(?:\.\d+)?", wanted):
            if float(wanted) in numbers:
                return True
        elif re.search(rf"(?<!\w){re.escape(wanted)}(?!\w)", text):
            return True
    return False
