"""Synthetic chat corpus for the demo model, seeded and deterministic, with checkable held-out prompts.

Four task families have answers a program can check (arithmetic, unit conversion, capitals, word reversal);
small talk (greetings, thanks, "who are you") makes the model read as an assistant. Replies are short and
formulaic ("12 + 7 = 19.", "Paris is the capital of France.") so that a 0.6M-parameter model can learn them.
Each task reply comes in one of three styles that share the formula and differ after it: brief
("12 + 7 = 19."), friendly ("12 + 7 = 19. Happy to help!", the most common, so the base answers that way)
and chatty (friendly, then "Anything else?"). A rater who likes shorter or longer answers then has something
to choose among in the base's own samples, and retraining on those votes moves the style without touching
the part that is checked.

The split between training and held-out prompts is by the question text: a question whose normalised text
hashes into the held-out bucket never appears in the training corpus. The facts themselves are shared
(a model cannot guess the capital of a country it never saw); what is held out is the exact prompt.

    from training.demo.corpus import conversations, checkable_prompts, is_correct
    convs = conversations(1000, seed=0)                # list of OpenAI-style message lists
    prompts = checkable_prompts(400, seed=1234)        # held-out, the four families in turn
    is_correct(prompts[0], "12 + 7 = 19.")
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from dataclasses import dataclass

from training.demo.facts import CAPITALS, UNITS, WORDS

# Shares of small talk among exchanges and of conversations with a system prompt. Both are learned quickly;
# the training budget is better spent on the checkable families.
SMALL_TALK_SHARE = 0.1
SYSTEM_PROMPT_SHARE = 0.2

# One question in HELDOUT_BUCKETS out of this many is held out of training.
HASH_BUCKETS = 10
HELDOUT_BUCKETS = 1

FAMILIES: tuple[str, ...] = ("arithmetic", "conversion", "capital", "reversal")

# Reply styles of the task families and their shares. Every style opens with the formula, at the same place
# as a reply without styles: an opening before it ("Sure! 12 + 7 = 19.") took macro accuracy from 0.61 to 0.51
# at 700 steps, as the model has to copy from the question later. The friendly style is the most common, so
# greedy decoding adds its remark and stops there (the closing follows the remark a quarter of the time).
REMARK = "Happy to help!"
CLOSING = "Anything else?"
REPLY_STYLES: dict[str, float] = {"brief": 0.25, "friendly": 0.55, "chatty": 0.20}

SYSTEM_PROMPTS: tuple[str, ...] = (
    "You are a helpful assistant.",
    "You are the tunehub demo assistant.",
    "You are a concise assistant. Answer in one sentence.",
    "Answer briefly.",
    "You are a friendly helper.",
)

# Small talk: a few phrasings per intent, one fixed reply each (one reply is easier to learn than several).
SMALL_TALK: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("Hello!", "Hi!", "Hi there.", "Hey!", "Good morning!", "Good evening!", "Hello, assistant."),
        "Hello! How can I help you today?",
    ),
    (
        ("Thanks!", "Thank you.", "Thanks a lot!", "Great, thank you!", "Thank you very much."),
        "You're welcome!",
    ),
    (
        ("Who are you?", "What is your name?", "What are you?", "Introduce yourself.", "Are you a bot?"),
        "I am the tunehub demo assistant, a tiny model built on this machine.",
    ),
    (
        ("What can you do?", "How can you help me?", "What do you know?", "What are you good at?"),
        "I can do small sums, convert units, name capitals and reverse words.",
    ),
    (
        ("How are you?", "How are you doing?", "How is it going?"),
        "I am fine, thank you. How can I help?",
    ),
    (
        ("Bye!", "Goodbye.", "See you later!", "That is all, bye."),
        "Goodbye! Have a nice day.",
    ),
)


@dataclass
class Task:
    """One question with its formulaic reply and the short answer a checker looks for."""

    family: str
    question: str
    reply: str
    answer: str


@dataclass
class CheckablePrompt:
    """A prompt whose reply can be checked: the messages end with a user question; `answer` is the key."""

    family: str
    messages: list[dict]
    answer: str


# --- task families -------------------------------------------------------------------------------------


def _arithmetic(rng: random.Random) -> Task:
    op = rng.choice(("+", "-", "*"))
    # Small operands: a model this size memorises the table (a few hundred facts); it cannot learn carries.
    if op == "+":
        a, b = rng.randint(0, 10), rng.randint(0, 10)
        result, word = a + b, "plus"
    elif op == "-":
        a = rng.randint(0, 10)
        b = rng.randint(0, a)  # never negative
        result, word = a - b, "minus"
    else:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        result, word = a * b, "times"
    question = rng.choice(
        (
            f"What is {a} {op} {b}?",
            f"What is {a} {word} {b}?",
            f"Compute {a} {op} {b}.",
            f"Calculate {a} {word} {b}.",
            f"{a} {op} {b} = ?",
            f"How much is {a} {word} {b}?",
        )
    )
    return Task("arithmetic", question, f"{a} {op} {b} = {result}.", str(result))


def _conversion(rng: random.Random) -> Task:
    long_from, short_from, long_to, short_to, factor = rng.choice(UNITS)
    # Powers of ten just append zeros, a pattern; 60/24/7 stay on a few small values that can be memorised.
    value = rng.randint(1, 50) if factor in (10, 100, 1000) else rng.randint(1, 6)
    result = value * factor
    question = rng.choice(
        (
            f"How many {long_to} are in {value} {long_from}?",
            f"Convert {value} {short_from} to {short_to}.",
            f"What is {value} {short_from} in {long_to}?",
            f"{value} {long_from} is how many {long_to}?",
            f"Convert {value} {long_from} to {long_to}.",
        )
    )
    return Task("conversion", question, f"{value} {short_from} = {result} {short_to}.", str(result))


def _capital(rng: random.Random) -> Task:
    country, capital = rng.choice(CAPITALS)
    question = rng.choice(
        (
            f"What is the capital of {country}?",
            f"Which city is the capital of {country}?",
            f"Name the capital of {country}.",
            f"What's the capital city of {country}?",
            f"Tell me the capital of {country}.",
            f"{country}: what is its capital?",
        )
    )
    # The capital comes first: recalling it straight from the question is learned sooner than first copying
    # a (multi-token) country name into the reply, which a model this small gets wrong for many seeds.
    return Task("capital", question, f"{capital} is the capital of {country}.", capital)


def _reversal(rng: random.Random) -> Task:
    word = rng.choice(WORDS)
    question = rng.choice(
        (
            f"Reverse the word {word}.",
            f"What is {word} spelled backwards?",
            f"Write {word} backwards.",
            f"Spell {word} in reverse.",
            f'Can you reverse "{word}"?',
        )
    )
    reversed_word = word[::-1]
    return Task("reversal", question, f"{word} reversed is {reversed_word}.", reversed_word)


_MAKERS = {"arithmetic": _arithmetic, "conversion": _conversion, "capital": _capital, "reversal": _reversal}


def styled(reply: str, style: str) -> str:
    """A task reply in one of REPLY_STYLES."""
    if style == "brief":
        return reply
    if style == "friendly":
        return f"{reply} {REMARK}"
    if style == "chatty":
        return f"{reply} {REMARK} {CLOSING}"
    raise ValueError(f"unknown reply style {style!r}; expected one of {', '.join(REPLY_STYLES)}")


def _style(rng: random.Random) -> str:
    return rng.choices(tuple(REPLY_STYLES), weights=tuple(REPLY_STYLES.values()))[0]


def _small_talk(rng: random.Random) -> tuple[str, str]:
    phrasings, reply = rng.choice(SMALL_TALK)
    return rng.choice(phrasings), reply


# --- the split -------------------------------------------------------------------------------------------


def is_heldout(question: str) -> bool:
    """Whether a question belongs to the held-out split (a stable hash of its normalised text)."""
    key = " ".join(question.lower().split())
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % HASH_BUCKETS < HELDOUT_BUCKETS


def _task(rng: random.Random, family: str, heldout: bool) -> Task:
    # Rejection sampling: draw until the question lands on the wanted side of the split.
    while True:
        task = _MAKERS[family](rng)
        if is_heldout(task.question) == heldout:
            return task


def _turn(rng: random.Random) -> tuple[str, str]:
    """One training exchange (question, reply): mostly checkable tasks, some small talk."""
    if rng.random() < SMALL_TALK_SHARE:
        return _small_talk(rng)
    task = _task(rng, rng.choice(FAMILIES), heldout=False)
    return task.question, styled(task.reply, _style(rng))


def _opening(rng: random.Random) -> list[dict]:
    """An optional system prompt, as some conversations have."""
    if rng.random() < SYSTEM_PROMPT_SHARE:
        return [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}]
    return []


# --- public API ------------------------------------------------------------------------------------------


def conversations(n: int, seed: int) -> list[list[dict]]:
    """`n` training conversations (OpenAI-style messages); the same `n` and `seed` give the same corpus."""
    rng = random.Random(f"tunehub-demo-corpus-{seed}")
    corpus = []
    for _ in range(n):
        messages = _opening(rng)
        n_turns = rng.choices((1, 2, 3), weights=(6, 3, 1))[0]
        for _ in range(n_turns):
            question, reply = _turn(rng)
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
        corpus.append(messages)
    return corpus


def checkable_prompts(n: int, seed: int, split: str = "heldout") -> list[CheckablePrompt]:
    """`n` prompts, the families in turn, from the "heldout" split (never trained on) or the "train" split."""
    if split not in ("heldout", "train"):
        raise ValueError(f"split must be 'heldout' or 'train', got {split!r}")
    rng = random.Random(f"tunehub-demo-checkable-{seed}-{split}")
    prompts = []
    for i in range(n):
        family = FAMILIES[i % len(FAMILIES)]
        messages = _opening(rng)
        if rng.random() < 0.25:  # some prompts follow an earlier exchange, as in multi-turn chats
            question, reply = _turn(rng)
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
        task = _task(rng, family, heldout=split == "heldout")
        messages.append({"role": "user", "content": task.question})
        prompts.append(CheckablePrompt(family=family, messages=messages, answer=task.answer))
    return prompts


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # "3,000" -> "3000"


def is_correct(prompt: CheckablePrompt, reply: str) -> bool:
    """Whether `reply` gives the prompt's answer.

    A numeric answer must be the last number in the reply, so echoing the question's operands
    ("10 - 5 = 6.") does not count; a word answer must appear as a whole word, case-insensitive.
    """
    text, answer = _normalise(reply), _normalise(prompt.answer)
    if answer.isdigit():
        numbers = re.findall(r"\d+", text)
        return bool(numbers) and numbers[-1].lstrip("0") == answer.lstrip("0")
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", text) is not None
