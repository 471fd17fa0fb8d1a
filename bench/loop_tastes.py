"""The loop benchmark's raters: tastes a person could hold, scripted so a run is repeatable.

A taste scores an answer (a tuple: higher is better, equal is a tie) and says whether it likes an answer
on its own (a thumb up). The score's first element is what the rater requires of any answer (correct on the
demo model, not empty on a real one); between two answers that both fail it the rater clicks "both are bad",
as the Arena lets a person do, instead of preferring one wrong answer for its style. The demo model's tastes
work on its checkable prompts (correctness first, then the reply style); a real model's tastes are styles
real users ask for, on any prompt.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from training.demo.corpus import CLOSING, REMARK, CheckablePrompt, is_correct


@dataclass(frozen=True)
class Taste:
    """A scripted rater: `score` is higher for a better answer (equal scores tie); `likes` is its thumb."""

    name: str
    description: str
    score: Callable[[CheckablePrompt, str], tuple]
    likes: Callable[[CheckablePrompt, str], bool]

    def judge(self, prompt: CheckablePrompt, a: str, b: str) -> str:
        """``"a"``, ``"b"`` or ``"tie"``."""
        sa, sb = self.score(prompt, a), self.score(prompt, b)
        return "a" if sa > sb else "b" if sb > sa else "tie"

    def arena_vote(self, prompt: CheckablePrompt, a: str, b: str) -> str:
        """What the rater clicks in the Arena: ``"both_bad"`` when neither answer meets the taste's first
        requirement, else :meth:`judge`'s verdict."""
        if not self.score(prompt, a)[0] and not self.score(prompt, b)[0]:
            return "both_bad"
        return self.judge(prompt, a, b)


def _correct(prompt: CheckablePrompt, text: str) -> bool:
    return bool(prompt.answer) and is_correct(prompt, text)


def _words(text: str) -> int:
    return len(text.split())


# -- the demo model: its checkable prompts, correct first ------------------------------------------------

DEMO_TASTES: dict[str, Taste] = {
    t.name: t
    for t in (
        Taste(
            "concise",
            "the correct answer, then the shorter one",
            lambda p, t: (_correct(p, t), -len(t.strip())),
            lambda p, t: _correct(p, t) and REMARK not in t,
        ),
        Taste(
            "detailed",
            "the correct answer, then the longer (more detailed) one",
            lambda p, t: (_correct(p, t), len(t.strip())),
            lambda p, t: _correct(p, t) and CLOSING in t,
        ),
        Taste(
            "warm-no-question",
            "the correct answer with a kind remark but no closing question",
            lambda p, t: (_correct(p, t), REMARK in t and CLOSING not in t),
            lambda p, t: _correct(p, t) and REMARK in t and CLOSING not in t,
        ),
        Taste(
            "correct",
            "the correct answer; style does not matter",
            lambda p, t: (_correct(p, t),),
            _correct,
        ),
    )
}


# -- real models: styles people ask for ------------------------------------------------------------------

FILLER = re.compile(
    r"^\s*(sure|certainly|of course|absolutely|great question|good question|what a|that's a great|"
    r"i'd be happy|i would be happy|i'm happy|happy to|hello|hi\b|well,|okay|ok,|as an ai)",
    re.IGNORECASE,
)
CLOSING_OFFER = re.compile(
    r"(let me know|feel free|hope (this|that) helps|any (other|more|further) questions|happy to help|"
    r"if you (need|have|want)|don't hesitate|do you want me|would you like me|want to know more)",
    re.IGNORECASE,
)
LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S", re.MULTILINE)
# a run of 4 words said 3 times is a loop, not a recipe's "1 cup of ..." lines
LOOP_WORDS = 4
LOOP_REPEATS = 3
# plain-language guides ask for sentences of 15 to 20 words on average; this rater likes the short end, and
# between two answers prefers the one whose sentences are shorter by a step a reader notices
PLAIN_SENTENCE_WORDS = 15
PLAIN_STEP_WORDS = 5
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def _first_sentence(text: str) -> str:
    return SENTENCE_END.split(text.strip(), maxsplit=1)[0]


def _direct(prompt: CheckablePrompt, text: str) -> bool:
    first = _first_sentence(text)
    if not first or FILLER.match(first):
        return False
    return is_correct(prompt, first) if prompt.answer else True


def _is_how(prompt: CheckablePrompt) -> bool:
    question = prompt.messages[-1]["content"].strip().lower()
    return question.startswith(("how ", "how's", "what are the steps", "what steps"))


def _listed(text: str) -> bool:
    return len(LIST_LINE.findall(text)) >= 2


def _format_fits(prompt: CheckablePrompt, text: str) -> bool:
    return _listed(text) == _is_how(prompt)


def _loops(text: str) -> bool:
    words = re.findall(r"\w+", text.lower())
    runs = Counter(tuple(words[i : i + LOOP_WORDS]) for i in range(len(words) - LOOP_WORDS + 1))
    return bool(runs) and max(runs.values()) >= LOOP_REPEATS


def _one_paragraph(text: str) -> bool:
    return "\n\n" not in text.strip() and not _listed(text)


def _sentence_words(text: str) -> float:
    """Mean words per sentence (a line of a list is a sentence)."""
    sentences = [s for s in SENTENCE_END.split(text) if s.strip()]
    return sum(_words(s) for s in sentences) / len(sentences) if sentences else 0.0


def _plainness(text: str) -> tuple:
    """Higher is plainer: no loop first, then shorter sentences in steps of PLAIN_STEP_WORDS words."""
    return (not _loops(text), -math.ceil(_sentence_words(text) / PLAIN_STEP_WORDS))


def _plain(text: str) -> bool:
    return _sentence_words(text) <= PLAIN_SENTENCE_WORDS and not _loops(text)


def _answered(text: str) -> bool:
    return bool(text.strip())


def _style(name: str, description: str, fits: Callable[[CheckablePrompt, str], bool]) -> Taste:
    """A taste for one style: any real answer first, then one that `fits`; its thumb goes up on both."""
    return Taste(
        name,
        description,
        lambda p, t: (_answered(t), fits(p, t)),
        lambda p, t: _answered(t) and fits(p, t),
    )


REAL_TASTES: dict[str, Taste] = {
    t.name: t
    for t in (
        Taste(
            "concise",
            "a real answer in as few words as possible",
            lambda p, t: (_answered(t), -_words(t) if _answered(t) else 0),
            lambda p, t: _answered(t) and _words(t) <= 40,
        ),
        _style("direct", "the answer itself in the first sentence, no preamble", _direct),
        _style(
            "bullets-for-how", "a list of steps for a how-to question, prose for anything else", _format_fits
        ),
        _style(
            "no-closing-offer",
            "no closing offer of more help ('let me know if...', 'hope this helps')",
            lambda p, t: not CLOSING_OFFER.search(t),
        ),
        _style(
            "no-repetition",
            "no phrase said over and over (a small model's greedy loops)",
            lambda p, t: not _loops(t),
        ),
        _style(
            "one-paragraph",
            "the whole answer in one paragraph: no sections, no list",
            lambda p, t: _one_paragraph(t),
        ),
        Taste(
            "plain-language",
            f"plain language: the answer with shorter sentences ({PLAIN_STEP_WORDS} words on average is a step"
            f" a reader notices), liked at {PLAIN_SENTENCE_WORDS} or fewer; never one that loops",
            lambda p, t: (_answered(t), *_plainness(t)),
            lambda p, t: _answered(t) and _plain(t),
        ),
    )
}
