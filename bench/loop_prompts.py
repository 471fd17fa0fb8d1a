"""The loop benchmark's prompts for a real chat model: how-to questions, questions with one checkable answer
and open questions, split into the prompts raters vote on and held-out prompts the candidate is judged on.
The demo model uses its own corpus's checkable prompts instead (training.demo.corpus)."""

from __future__ import annotations

import random

from training.demo.corpus import CheckablePrompt

HOW_TO = (
    "boil an egg",
    "make a cup of tea",
    "tie a tie",
    "change a flat tyre",
    "plant a tree",
    "start running",
    "learn to juggle",
    "write a cover letter",
    "clean a cast iron pan",
    "make bread at home",
    "fall asleep faster",
    "save money each month",
    "study for an exam",
    "prepare for a job interview",
    "make a paper airplane",
    "wash a wool sweater",
    "back up my phone",
    "learn a new language",
    "cook rice on the stove",
    "remove a coffee stain",
    "start a vegetable garden",
    "write a short story",
    "brew coffee with a French press",
    "organise my desk",
    "train a puppy to sit",
    "set up a budget",
    "make a smoothie",
    "improve my handwriting",
    "care for a houseplant",
    "pack a suitcase",
    "sharpen a kitchen knife",
    "make pancakes",
    "memorise a speech",
    "stretch before a run",
    "build a birdhouse",
    "make lemonade",
    "paint a room",
    "start meditating",
    "keep bread fresh",
    "make a good first impression",
)
CAPITALS = (
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Germany", "Berlin"),
    ("Canada", "Ottawa"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Norway", "Oslo"),
    ("Greece", "Athens"),
    ("Portugal", "Lisbon"),
    ("Russia", "Moscow"),
    ("China", "Beijing"),
    ("Austria", "Vienna"),
    ("Ireland", "Dublin"),
    ("Sweden", "Stockholm"),
    ("Poland", "Warsaw"),
    ("Thailand", "Bangkok"),
    ("Argentina", "Buenos Aires"),
)
OPEN = (
    "Why is the sky blue?",
    "What is photosynthesis?",
    "Why do we have seasons?",
    "What is a black hole?",
    "Why do cats purr?",
    "What causes rain?",
    "What is inflation?",
    "Why is sleep important?",
    "What does a computer's memory do?",
    "What is gravity?",
    "Why do leaves change colour in autumn?",
    "What is the internet?",
    "Why is exercise good for you?",
    "What is a volcano?",
    "What is democracy?",
    "Why do we dream?",
    "What is a vaccine?",
    "Why is the ocean salty?",
    "What is electricity?",
    "What makes a good friend?",
    "What is recycling?",
    "Why do birds migrate?",
    "What is a rainbow?",
    "What is an atom?",
    "Why do we need water?",
    "What is climate?",
    "What is a noun?",
    "Why do stars twinkle?",
    "What is a habit?",
    "What is the moon made of?",
)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def real_prompts(seed: int = 0) -> tuple[list[CheckablePrompt], list[CheckablePrompt]]:
    """(vote prompts, held-out prompts): every kind in both, about two thirds to vote on."""
    rows: list[CheckablePrompt] = []
    rows += [CheckablePrompt("how", _user(f"How do I {task}?"), "") for task in HOW_TO]
    rows += [CheckablePrompt("how", _user(f"How can I {task}?"), "") for task in HOW_TO[::3]]
    rows += [
        CheckablePrompt("capital", _user(f"What is the capital of {country}?"), city)
        for country, city in CAPITALS
    ]
    rows += [CheckablePrompt("open", _user(text), "") for text in OPEN]
    random.Random(seed).shuffle(rows)
    cut = len(rows) * 2 // 3
    return rows[:cut], rows[cut:]
