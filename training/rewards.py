"""Scoring sampled answers for PPO, RLOO and GRPO with the reward model `training.reward` trained.

A reward directory holds either a LoRA adapter over the base (with the trained ``score`` head in it) or
a full sequence-classification model; `load_reward_model` returns a plain
`AutoModelForSequenceClassification` either way (an adapter is merged into its own copy of the base), so
TRL's RLOO/GRPO trainers take it as a reward model and PPO scores with `RewardModelScorer`. Both score
the chat template of prompt + answer at its last token, as TRL's RewardTrainer trained it.

    from training.rewards import RewardModelScorer
    scorer = RewardModelScorer.load("adapters/rm-1", base="./demo")
    scorer(prompts=[[{"role": "user", "content": "Hi"}]], completions=[[{"role": "assistant", "content": "Hello!"}]])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from feedback.errors import Invalid

Messages = list[dict[str, str]]


def load_reward_model(path: str | Path, base: str | None = None):
    """(model, tokenizer): the reward model in `path`, merged and in eval mode; `base` is the model a
    reward adapter was trained on (default: the base its adapter_config.json names)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    adapter_config = path / "adapter_config.json"
    if adapter_config.is_file():
        from peft import PeftModel

        base = base or json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        if not base:
            raise Invalid(
                f"reward_model {str(path)!r} is an adapter that names no base; give --model",
                param="reward_model",
            )
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=1, pad_token_id=_pad_id(tokenizer), dtype=torch.float32
        )
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    elif (path / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, pad_token_id=_pad_id(tokenizer), dtype=torch.float32
        )
    else:
        raise Invalid(
            f"reward_model {str(path)!r} is neither a reward adapter nor a model directory; "
            "train one with `tunehub train reward`",
            param="reward_model",
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.requires_grad_(False)
    return model.eval(), tokenizer


def _pad_id(tokenizer) -> int | None:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


class RewardModelScorer:
    """A reward function with TRL's signature: ``scorer(prompts=..., completions=...) -> list[float]``.

    Prompts and completions are message lists (conversational) or plain strings.
    """

    __name__ = "reward_model"  # TRL logs a callable reward under its name

    def __init__(self, model, tokenizer, batch_size: int = 32) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    @classmethod
    def load(cls, path: str | Path, base: str | None = None) -> RewardModelScorer:
        return cls(*load_reward_model(path, base))

    def texts(self, prompts: list[Any], completions: list[Any]) -> list[str]:
        texts = []
        for prompt, completion in zip(prompts, completions, strict=True):
            if isinstance(prompt, str):
                texts.append(prompt + completion)
            else:
                texts.append(self.tokenizer.apply_chat_template(prompt + completion, tokenize=False))
        return texts

    def __call__(self, prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        import torch

        texts = self.texts(prompts, completions)
        scores: list[float] = []
        device = next(self.model.parameters()).device
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                padding_side="right",
                add_special_tokens=False,
            ).to(device)
            with torch.inference_mode():
                scores.extend(self.model(**batch).logits[:, 0].float().tolist())
        return scores
