"""Training rows the tests write: JSONL files, and preference pairs of a short answer over the same answer
with a rambling tail (a preference clear enough for a few steps on the demo model to learn).

    from tests.support.rows import preference_pairs, write_jsonl
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_pairs(32, seed=1, split="train"))
"""

from __future__ import annotations

import json
from pathlib import Path

TAIL = " I hope this helps, and let me know if you have any other questions about anything at all!"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def preference_pairs(n: int, seed: int, split: str) -> list[dict]:
    """Pairs whose chosen answer is short and whose rejected one is the same answer plus TAIL, on the demo
    corpus's checkable prompts of `split`."""
    from training.demo.corpus import checkable_prompts

    rows = []
    for prompt in checkable_prompts(n, seed=seed, split=split):
        short = f"The answer is {prompt.answer}."
        rows.append(
            {
                "prompt": prompt.messages,
                "chosen": [{"role": "assistant", "content": short}],
                "rejected": [{"role": "assistant", "content": short + TAIL}],
            }
        )
    return rows
