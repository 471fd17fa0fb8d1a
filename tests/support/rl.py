"""Shared pieces of the RL stage tests (PPO, RLOO, GRPO): prompts, a toy reward and a small reward model.

The toy reward is 1 for an answer that opens with a digit, else 0. The quick demo model opens about half
its sampled answers to the checkable prompts with one (sums and conversions: "3 + 4 = 7."; capitals and
reversals: "Paris is ..."), and which kind it writes is mostly one token's choice, so a policy can learn
it in a few dozen steps on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.rows import write_jsonl
from training.demo.corpus import checkable_prompts


def opens_with_a_digit(prompts, completions, **_) -> list[float]:
    """The toy reward: 1.0 when the answer's first character is a digit."""
    return [1.0 if _text(completion)[:1].isdigit() else 0.0 for completion in completions]


def _text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def prompts_file(path: Path, n: int = 64, seed: int = 1) -> Path:
    """A prompt-only export (``{"prompt"}`` rows) of checkable training prompts."""
    return write_jsonl(path, [{"prompt": p.messages} for p in checkable_prompts(n, seed=seed, split="train")])


def digit_first_pairs(n: int, seed: int, split: str) -> list[dict]:
    """Pairs whose chosen answer opens with the answer itself, the rejected one with words."""
    rows = []
    for prompt in checkable_prompts(n, seed=seed, split=split):
        rows.append(
            {
                "prompt": prompt.messages,
                "chosen": [{"role": "assistant", "content": f"{prompt.answer} is the answer."}],
                "rejected": [{"role": "assistant", "content": f"The answer is {prompt.answer}."}],
            }
        )
    return rows


def train_reward_model(demo_model: Path, root: Path, steps: int = 24) -> Path:
    """A LoRA reward model of the demo model (`training.reward`) that prefers answers opening with the answer."""
    from training.reward import RewardConfig, main

    data = write_jsonl(root / "pairs.jsonl", digit_first_pairs(64, seed=1, split="train"))
    config = RewardConfig(
        model=str(demo_model),
        data=str(data),
        output_dir=str(root / "rm"),
        max_steps=steps,
        per_device_batch_size=8,
        learning_rate=1e-3,
        warmup_ratio=0.1,
        eval_fraction=0.0,
        logging_steps=4,
    )
    return main(config)
