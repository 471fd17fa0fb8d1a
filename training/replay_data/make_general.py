"""Write ``general.jsonl``: the general held-out replay set for real models (not the demo model).

Each row is ``{"family", "messages": [{"role": "user", "content": question}], "answer", "accept", "match":
"lenient"}``: one checkable answer, plus other spellings of it (``accept``: "7" is also "seven"). Answers
are matched leniently (`training.replay_sets.lenient_match`): a number anywhere in the reply that is not
already in the question, or a word or phrase as whole words, case and hyphens ignored. Questions whose
answer repeats one of their own numbers are left out, so echoing the question never counts.

    python -m training.replay_data.make_general          # rewrites training/replay_data/general.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from training.demo.facts import CAPITALS

OUT = Path(__file__).with_name("general.jsonl")
ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def in_words(n: int) -> str:
    """0-999 in English words ("twenty-one", "one hundred five")."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("-" + ONES[n % 10] if n % 10 else "")
    rest = n % 100
    return ONES[n // 100] + " hundred" + (" " + in_words(rest) if rest else "")


def row(family: str, question: str, answer: object, accept: tuple[str, ...] = ()) -> dict:
    answer = str(answer)
    if answer.isdigit() and int(answer) < 100 and not accept:
        accept = (in_words(int(answer)),)
    return {
        "family": family,
        "messages": [{"role": "user", "content": question}],
        "answer": answer,
        "accept": list(accept),
        "match": "lenient",
    }


def capitals(rng: random.Random, n: int) -> list[dict]:
    def named(country: str) -> str:  # "the Netherlands", "the United States"
        return f"the {country}" if country.startswith(("United", "Netherlands", "Philippines")) else country

    return [
        row("capital", f"What is the capital of {named(c)}?", city) for c, city in rng.sample(CAPITALS, n)
    ]


def conversions(rng: random.Random, n: int) -> list[dict]:
    units = (  # (big unit, small unit, factor)
        ("kilometres", "metres", 1000),
        ("metres", "centimetres", 100),
        ("kilograms", "grams", 1000),
        ("litres", "millilitres", 1000),
        ("hours", "minutes", 60),
        ("minutes", "seconds", 60),
        ("days", "hours", 24),
        ("weeks", "days", 7),
    )
    rows, seen = [], set()
    while len(rows) < n:
        big, small, factor = rng.choice(units)
        amount = rng.randint(2, 9)
        if (big, amount) in seen:
            continue
        seen.add((big, amount))
        rows.append(row("conversion", f"How many {small} are in {amount} {big}?", amount * factor))
    return rows


def arithmetic(rng: random.Random, n: int) -> list[dict]:
    rows, seen = [], set()
    while len(rows) < n:
        op = rng.choice("+-*")
        a, b = (
            (rng.randint(11, 60), rng.randint(2, 39))
            if op != "*"
            else (rng.randint(3, 12), rng.randint(3, 9))
        )
        if op == "-" and b >= a:
            a, b = b + 10, a
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        sign = {"+": "plus", "-": "minus", "*": "times"}[op]
        if value in (a, b) or (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        rows.append(row("arithmetic", f"What is {a} {sign} {b}?", value))
    return rows


def spelling(rng: random.Random, n: int) -> list[dict]:
    numbers = rng.sample([*range(1, 21), 30, 40, 50, 60, 70, 80, 90, 21, 34, 45, 58, 67, 99], n)
    return [
        row(
            "spelling",
            f"How do you spell the number {k} in words?",
            in_words(k),
            (in_words(k).replace("-", " "),),
        )
        for k in numbers
    ]


def calendar() -> list[dict]:
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    months = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ]
    lengths = dict(zip(months, (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31), strict=True))
    rows = [
        row("calendar", "How many days are there in a week?", 7),
        row("calendar", "How many months are there in a year?", 12),
        row("calendar", "How many days are there in a leap year?", 366),
        row("calendar", "How many days are there in a year that is not a leap year?", 365),
        row("calendar", "How many hours are there in a day?", 24),
        row("calendar", "How many minutes are there in an hour?", 60),
        row("calendar", "How many weeks are there in a year, rounded down?", 52),
        row("calendar", "What is the first month of the year?", "January"),
        row("calendar", "What is the last month of the year?", "December"),
    ]
    for i, day in enumerate(days):
        rows.append(row("calendar", f"Which day of the week comes after {day}?", days[(i + 1) % 7]))
    for i, month in enumerate(months):
        rows.append(row("calendar", f"Which month comes after {month}?", months[(i + 1) % 12]))
    for month in ("January", "April", "June", "September", "November", "December"):
        rows.append(row("calendar", f"How many days are there in {month}?", lengths[month]))
    return rows


def general_rows(seed: int = 13) -> list[dict]:
    rng = random.Random(f"tunehub-general-replay-{seed}")
    return [
        *capitals(rng, 35),
        *conversions(rng, 30),
        *arithmetic(rng, 30),
        *spelling(rng, 25),
        *calendar(),
    ]


def main() -> None:
    rows = general_rows()
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main()
