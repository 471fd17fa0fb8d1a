"""Regression replay: a fixed prompt set answered greedily by a candidate adapter and by the promoted model
(or the base), with accuracy on checkable prompts, the mean per-token KL divergence from the base and the
reward model's scores when one is given; the base's answers are kept too, for the per-prompt flip report
(training/replay_flips.py) against both. The promotion guard (feedback/promotion_rule.py) reads the result.

    report = run_replay(base, candidate="/adapters/km-v2", incumbent=None)   # blocking: seconds on CPU
    report["candidate"]["accuracy"], report["candidate"]["kl"], report["rows"][0]["candidate"]

The default prompt set is the demo corpus's held-out checkable prompts (never trained on). A custom set is
a JSONL file of ``{"messages": [...], "answer": "..."}`` rows (``answer`` optional: rows without one count
for the KL and the side-by-side answers, not for accuracy).

KL: each model's greedy answer is fed back (teacher forcing) with the adapter on and off; at every answer
position ``KL(p_adapter || p_base)`` over the vocabulary is taken, and the mean over all answer tokens of
all prompts is reported, in nats. A zero adapter gives 0. Runs in the calling thread with transformers and
peft: the hub calls it in a worker thread, never on the event loop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.demo.corpus import CheckablePrompt, checkable_prompts, is_correct
from training.replay_flips import flip_report

DEFAULT_PROMPTS = 50
DEFAULT_SEED = 4321  # not evaluate_checkable's, so the replay is not the set the demo build was tuned on
MAX_NEW_TOKENS = 32


def load_prompts(path: str | Path | None = None, n: int = DEFAULT_PROMPTS) -> list[CheckablePrompt]:
    """The replay set: ``path`` (JSONL) if given, else ``n`` held-out checkable prompts of the demo corpus."""
    if path is None:
        return checkable_prompts(n, seed=DEFAULT_SEED)
    prompts = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"{path} line {number}: a replay row needs a non-empty 'messages' list")
        prompts.append(CheckablePrompt(row.get("family", "custom"), messages, row.get("answer") or ""))
    return prompts


def greedy_answers(model, tokenizer, prompts: list[CheckablePrompt], max_new_tokens: int) -> list[str]:
    """Each prompt's greedy answer, in batches of 32 (``tokenizer`` pads on the left)."""
    import torch

    replies = []
    for start in range(0, len(prompts), 32):
        batch = prompts[start : start + 32]
        texts = tokenizer.apply_chat_template(
            [p.messages for p in batch], add_generation_prompt=True, tokenize=False
        )
        inputs = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt").to(
            model.device
        )
        with torch.no_grad():
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        replies += tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return replies


def mean_kl(model, tokenizer, prompts: list[CheckablePrompt], replies: list[str], reference=None) -> float:
    """Mean per-token KL(model || reference) over the answer positions of ``replies``; without a
    ``reference`` model it is the same model with its adapters disabled (the base)."""
    import torch
    import torch.nn.functional as F

    total, tokens = 0.0, 0
    for prompt, reply in zip(prompts, replies, strict=True):
        prefix = tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prefix, add_special_tokens=False, return_tensors="pt")["input_ids"]
        answer_ids = tokenizer(reply, add_special_tokens=False, return_tensors="pt")["input_ids"]
        if answer_ids.shape[1] == 0:
            continue
        ids = torch.cat([prompt_ids, answer_ids], dim=1).to(model.device)
        # logits at position t predict token t+1: the answer's tokens are predicted from prompt_len-1 on
        window = slice(prompt_ids.shape[1] - 1, ids.shape[1] - 1)
        with torch.no_grad():
            adapted = F.log_softmax(model(input_ids=ids).logits[0, window].float(), dim=-1)
            if reference is not None:
                base = F.log_softmax(reference(input_ids=ids).logits[0, window].float(), dim=-1)
            else:
                with model.disable_adapter():
                    base = F.log_softmax(model(input_ids=ids).logits[0, window].float(), dim=-1)
        total += float((adapted.exp() * (adapted - base)).sum())
        tokens += answer_ids.shape[1]
    return total / tokens if tokens else 0.0


def _summary(
    name: str, prompts: list[CheckablePrompt], replies: list[str], kl: float | None
) -> dict[str, Any]:
    checkable = [(p, r) for p, r in zip(prompts, replies, strict=True) if p.answer]
    accuracy = sum(is_correct(p, r) for p, r in checkable) / len(checkable) if checkable else None
    return {"name": name, "accuracy": accuracy, "kl": kl, "checkable": len(checkable)}


def run_replay(
    base: str | Path,
    candidate: str | Path,
    incumbent: str | Path | None = None,
    *,
    prompts: list[CheckablePrompt] | None = None,
    candidate_name: str = "candidate",
    incumbent_name: str = "base",
    reward_model: str | Path | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> dict[str, Any]:
    """Answer ``prompts`` greedily with the ``candidate`` adapter and with ``incumbent`` (an adapter
    directory, or None for the base itself); returns the report (JSON-ready): per-model ``accuracy``, ``kl``
    (from the base) and ``reward`` (mean score, when ``reward_model`` is given), and one row per prompt."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = load_prompts() if prompts is None else prompts
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    tokenizer.padding_side = "left"  # generation continues each row from its last real token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(model, str(candidate), adapter_name="candidate").eval()
    if incumbent is not None:
        model.load_adapter(str(incumbent), adapter_name="incumbent")

    model.set_adapter("candidate")
    candidate_replies = greedy_answers(model, tokenizer, prompts, max_new_tokens)
    candidate_kl = mean_kl(model, tokenizer, prompts, candidate_replies)
    if incumbent is None:
        with model.disable_adapter():
            incumbent_replies = greedy_answers(model, tokenizer, prompts, max_new_tokens)
        incumbent_kl = 0.0
        base_replies = incumbent_replies
    else:
        model.set_adapter("incumbent")
        incumbent_replies = greedy_answers(model, tokenizer, prompts, max_new_tokens)
        incumbent_kl = mean_kl(model, tokenizer, prompts, incumbent_replies)
        with model.disable_adapter():  # the base's answers too: the flip report compares against both
            base_replies = greedy_answers(model, tokenizer, prompts, max_new_tokens)
    report: dict[str, Any] = {
        "candidate": _summary(candidate_name, prompts, candidate_replies, candidate_kl),
        "incumbent": _summary(incumbent_name, prompts, incumbent_replies, incumbent_kl),
        "rows": [
            {
                "messages": p.messages,
                "answer": p.answer or None,
                "candidate": c,
                "incumbent": i,
                "candidate_correct": is_correct(p, c) if p.answer else None,
                "incumbent_correct": is_correct(p, i) if p.answer else None,
                "base": b,
                "base_correct": is_correct(p, b) if p.answer else None,
            }
            for p, c, i, b in zip(prompts, candidate_replies, incumbent_replies, base_replies, strict=True)
        ],
        "max_new_tokens": max_new_tokens,
    }
    if reward_model is not None:
        from training.rewards import RewardModelScorer

        scorer = RewardModelScorer.load(reward_model, str(base))
        messages = [p.messages for p in prompts]
        for side, replies in (("candidate", candidate_replies), ("incumbent", incumbent_replies)):
            scores = scorer(messages, [[{"role": "assistant", "content": r}] for r in replies])
            report[side]["reward"] = sum(scores) / len(scores) if scores else None
            for row, score in zip(report["rows"], scores, strict=True):
                row[f"{side}_reward"] = score
        report["reward_model"] = str(reward_model)
    report["against"] = incumbent_name if incumbent is not None else "base"
    report["flips"] = flip_report(report)
    return report
